"""`compare_runs` and the `runs compare` command over a temporary SQLite MLflow store."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from opensora_core.tracking import COLUMNS, EXPERIMENT, StageTracker, compare_runs
from opensora_core.tracking.runs_cli import runs_compare

RUNS = [  # stage, lr, seed, max_steps, snapshot, metrics per step
    (1, 1e-3, 11, 100, "aaaa1111", [{"loss": 0.9, "tokens_per_s": 100.0, "grad_norm": 2.0},
                                    {"loss": 0.7, "tokens_per_s": 120.0, "grad_norm": 1.5}]),
    (1, 2e-4, 12, 200, "bbbb2222", [{"loss": 0.8, "tokens_per_s": 90.0, "grad_norm": 1.0},
                                    {"loss": 0.5, "tokens_per_s": 95.0, "grad_norm": 0.5}]),
    (2, 5e-5, 13, 300, "cccc3333", [{"loss": 0.4, "tokens_per_s": 50.0, "grad_norm": 0.3}]),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    ids = []
    for i, (stage, lr, seed, max_steps, snapshot, steps) in enumerate(RUNS):
        params = {"stage": {"stage": stage, "lr": lr, "seed": 0, "max_steps": 1}, "seed": seed, "max_steps": max_steps}
        tags = {"stage": str(stage), "data_snapshot": snapshot, "code_version": f"v{i}"}
        tracker = StageTracker.start(uri, EXPERIMENT, f"stage{stage}", params, tags, None, folder / f"run{i}")
        for step, metrics in enumerate(steps, 1):
            tracker.log_metrics(metrics, step)
        tracker.finish()
        assert tracker.online
        ids.append(tracker.run_id)
        time.sleep(0.02)  # distinct start times
    return uri, ids


def test_compare_runs_of_one_stage_newest_first(store):
    uri, ids = store
    frame = compare_runs(uri, stage=1)
    assert list(frame.columns) == COLUMNS
    assert list(frame["run_id"]) == [ids[1], ids[0]]
    assert frame["start_time"].is_monotonic_decreasing
    newest = frame.iloc[0]
    assert newest["stage"] == 1 and newest["data_snapshot"] == "bbbb2222" and newest["code_version"] == "v1"
    assert newest["max_steps"] == 200 and newest["seed"] == 12 and newest["lr"] == pytest.approx(2e-4)
    # The latest value of each metric, not the first.
    assert newest["loss"] == pytest.approx(0.5)
    assert newest["tokens_per_s"] == pytest.approx(95.0)
    assert newest["grad_norm"] == pytest.approx(0.5)
    assert frame.iloc[1]["loss"] == pytest.approx(0.7) and frame.iloc[1]["lr"] == pytest.approx(1e-3)


def test_compare_runs_all_stages_and_last(store):
    uri, ids = store
    assert list(compare_runs(uri)["run_id"]) == ids[::-1]
    assert list(compare_runs(uri, last=1)["run_id"]) == [ids[2]]
    assert list(compare_runs(uri, stage=2)["stage"]) == [2]
    assert compare_runs(uri, stage=3).empty


def test_compare_runs_without_experiment(tmp_path):
    frame = compare_runs(f"sqlite:///{tmp_path / 'empty.db'}")
    assert frame.empty and list(frame.columns) == COLUMNS


def test_compare_runs_missing_values_are_empty(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = StageTracker.start(uri, EXPERIMENT, "stage0", {"seed": 1}, {"stage": "0"}, None, tmp_path / "run")
    tracker.finish()
    row = compare_runs(uri).iloc[0]
    assert row["code_version"] is None and row["data_snapshot"] is None and row["lr"] is None
    assert math.isnan(row["loss"])
    assert isinstance(compare_runs(uri), pd.DataFrame)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("compare")(runs_compare)

    @app.command("noop")
    def noop() -> None:  # a second command keeps `compare` a named subcommand
        pass

    return app


def test_runs_compare_command_prints_the_table(store):
    uri, ids = store
    result = CliRunner().invoke(_app(), ["compare", "--stage", "1", "--last", "5", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert ids[0] in result.output and ids[1] in result.output and ids[2] not in result.output
    assert result.output.index(ids[1]) < result.output.index(ids[0])  # newest first
    for text in ("bbbb2222", "aaaa1111", "0.0002", "0.001", "200", "95", "0.7"):
        assert text in result.output


def test_runs_compare_command_with_no_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # an existing store with no runs
    result = CliRunner().invoke(_app(), ["compare", "--stage", "1", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "no stage 1 runs" in result.output


def test_runs_compare_refuses_a_store_that_is_not_there(tmp_path):
    from opensora_core import cli

    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(cli.app, ["runs", "compare", "--tracking-uri", f"sqlite:///{missing}"])
    assert result.exit_code == 2 and "no MLflow database at" in result.output and not missing.exists()
    result = CliRunner().invoke(cli.app, ["runs", "compare", "--tracking-uri", "http://127.0.0.1:9/"])
    assert result.exit_code == 2 and "http://127.0.0.1:9/ is unreachable" in " ".join(result.output.split())
