"""`dvc repro` reproduces the embedded pipeline.

A dry run checks the stage graph and the documented commands; the slow test runs the
whole pipeline for real on a copy of the project with tiny parameters, then checks that
a second `dvc repro` does nothing and that changing one stage's lr re-runs that stage
and the stages downstream of it only. DVC lives in `.venv-dvc` (never in `.venv`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = REPO / ".venv-dvc" / "bin" / "dvc"
VENV = REPO / ".venv"
NO_DVC = "dvc lives in .venv-dvc, which is absent (make setup creates it)"

ORDER = ["synth", "training_dataset", "text_embeddings", "video_latents", "stdit2_stage0", "stdit2_stage1",
         "stdit2_stage2", "stdit2_stage3", "eval_samples"]
# Never copied into the project copy: virtualenvs, pipeline outputs, local stores.
NOT_COPIED = {".venv", ".venv-dvc", "data", "runs", "artifacts", "outputs", "mlruns", "mlartifacts", ".dagster",
              ".git"}


def _dvc(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPENSORA_PROJECT_ROOT"}
    env.update(DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([str(DVC), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.mark.skipif(not DVC.exists(), reason=NO_DVC)
def test_dvc_pipeline_dry_run_lists_every_stage_in_order():
    done = _dvc(["repro", "--dry", "--force"], REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _ran(done.stdout) == ORDER, done.stdout
    assert "--init runs/stage2/export/model.safetensors" in done.stdout
    assert done.stdout.count(" --lr ") == 4, done.stdout  # each train stage, from params.yaml
    assert "opensora eval-samples --checkpoint runs/stage3/export/model.safetensors --out runs/eval" in done.stdout


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf])
def test_train_lr_override_is_checked_before_any_work(tmp_path, lr):
    from opensora_core.train.loop import TrainArgs, TrainingError, prepare_stage

    with pytest.raises(TrainingError, match="--lr must be a finite number > 0"):
        prepare_stage(TrainArgs(stage="tiny/stage2", data=str(tmp_path / "missing.csv"), out=str(tmp_path / "o"),
                                lr=lr))


def _logged_lr(stage_dir: Path) -> float:
    """The `lr` param the stage logged (its local MLflow record, written with or without a store)."""
    for line in (stage_dir / "mlflow_offline" / "record.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "params":
            return float(event["params"]["lr"])
    raise AssertionError(f"{stage_dir}: no params in the MLflow record")


def _copy_project(dest: Path) -> None:
    """The working tree's tracked and new (not ignored) files, uncommitted edits included."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if Path(name).parts[0] in NOT_COPIED or not source.is_file():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (dest / ".venv").symlink_to(VENV, target_is_directory=True)
    (dest / ".dvc" / "config.local").write_text("[core]\n    check_update = false\n    analytics = false\n")


def _git(dest: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    subprocess.run(["git", *args], cwd=dest, env=env, capture_output=True, check=True)


def _set_params(path: Path, update) -> None:
    params = yaml.safe_load(path.read_text())
    update(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _versions(store: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    return sorted(int(v.version) for v in client.search_model_versions("name='stdit2'"))


def _tiny(params: dict) -> None:
    params["synth"] = {"videos": 8, "images": 8}
    params["train"]["max_steps"] = 2
    params["eval"] = {"seeds": 1, "steps": 2, "promotion_floor": "none"}  # two steps of training: near chance


@pytest.mark.slow
@pytest.mark.skipif(not DVC.exists(), reason=NO_DVC)
@pytest.mark.skipif(not (VENV / "bin" / "opensora").exists(), reason=".venv (with the opensora CLI) is absent")
def test_dvc_repro_runs_once_then_reruns_only_downstream_of_a_changed_lr(tmp_path):
    project = tmp_path / "project"
    _copy_project(project)
    _set_params(project / "params.yaml", _tiny)
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "project copy with tiny params")

    first = _dvc(["repro"], project)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert _ran(first.stdout) == ORDER, first.stdout
    metrics_file = project / "runs" / "eval" / "metrics.json"
    assert metrics_file.is_file()
    shown = _dvc(["metrics", "show"], project, timeout=120)
    assert shown.returncode == 0 and "metrics.color_accuracy" in shown.stdout, shown.stdout + shown.stderr
    # eval_samples registers and promotes as the Dagster asset does, into the project's store.
    from opensora_core.tracking.registry import champion

    store = f"sqlite:///{project / 'mlruns.db'}"
    assert int(champion(store).version) == 1 and (project / "runs" / "eval" / "preview.gif").is_file()

    second = _dvc(["repro"], project)
    assert second.returncode == 0, second.stderr
    assert _ran(second.stdout) == [], second.stdout
    assert "Data and pipelines are up to date" in second.stdout, second.stdout

    _set_params(project / "params.yaml", lambda p: p["train"]["stage2"].update(lr=5.0e-4))
    third = _dvc(["repro"], project)
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-4000:]
    assert _ran(third.stdout) == ["stdit2_stage2", "stdit2_stage3", "eval_samples"], third.stdout
    assert "--lr 0.0005" in third.stdout
    assert _logged_lr(project / "runs" / "stage2") == 5.0e-4
    assert _logged_lr(project / "runs" / "stage1") == 1.0e-3  # not re-run
    assert _versions(store) == [1, 2]  # the retrained model registered too, promoted or kept
    status = _dvc(["status"], project, timeout=120)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    shutil.rmtree(project)  # ~0.5 GB of checkpoints and their DVC cache; kept when a check fails
