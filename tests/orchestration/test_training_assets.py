from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dagster import AssetKey, Failure, materialize

from assets_defs.training import plan_stage, stdit2_stage0, training_assets
from opensora_core.config import read_stage_data
from opensora_core.models import build_stdit2
from opensora_core.models.checkpoint_io import save_model
from orchestration.resources import (
    CacheSettings,
    CurationStorage,
    MlflowTracking,
    TorchXLauncher,
    TrainingSettings,
)
from tests.stills import write_stills

TINY = [f"tiny/stage{i}" for i in range(4)]


@pytest.fixture
def curated(tmp_path):
    """A curated folder whose training table holds four 64x64 stills (stage 0 trains on images)."""
    folder = tmp_path / "curated"
    return write_stills(folder, ["red", "green", "blue", "yellow"])


@pytest.fixture
def profile(test_profile):
    return test_profile


def _settings(tmp_path, profile, stages=TINY):
    return TrainingSettings(profile=str(profile), stages=stages, out_root=str(tmp_path / "train"), max_steps=2)


def _tracking(tmp_path):
    return MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")


def _table(tmp_path, rows):
    for row in rows:
        (tmp_path / row[0]).touch()  # the files the rows name exist, beside the table
    path = tmp_path / "table.parquet"
    pd.DataFrame(rows, columns=["path", "text", "num_frames", "height", "width"]).to_parquet(path)
    return path


def test_definitions_wire_stage0_to_stage3_after_the_caches():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    caches = {AssetKey("text_embeddings"), AssetKey("video_latents")}
    assert graph.get(AssetKey("stdit2_stage0")).parent_keys == caches
    for i in range(1, 4):
        assert graph.get(AssetKey(f"stdit2_stage{i}")).parent_keys == caches | {AssetKey(f"stdit2_stage{i - 1}")}
    assert {graph.get(a.key).group_name for a in training_assets} == {"training"}
    assert {"training_settings", "torchx_launcher"} <= set(defs.resources)


def test_bad_tables_fail_before_launch(tmp_path, profile, curated):
    settings = _settings(tmp_path, profile)
    with pytest.raises(Failure, match="stdit2_stage0: --data .* the training table is empty"):
        plan_stage(0, settings, _table(tmp_path, []))
    small = _table(tmp_path, [("a.png", "x", 1, 8, 8)])
    with pytest.raises(Failure, match=r"no sample of the 1 fits any bucket of the stage \(8x8 is below"):
        plan_stage(0, settings, small)
    plan = plan_stage(0, settings, curated / "meta.parquet")
    assert plan.init is None and plan.out == tmp_path / "train" / "stage0"


def test_bad_stage_configs_fail_before_launch(tmp_path, profile, curated):
    data = read_stage_data("tiny/stage0")
    data["lr"] = -1
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(Failure, match=r"does not validate:\n.*broken.yaml: lr"):
        plan_stage(0, _settings(tmp_path, profile, [str(broken), *TINY[1:]]), curated / "meta.parquet")
    with pytest.raises(Failure, match="tiny/stage1 is for stage 1, not 0"):
        plan_stage(0, _settings(tmp_path, profile, TINY[1:]), curated / "meta.parquet")


def test_missing_or_mismatched_init_fails_before_launch(tmp_path, profile, curated):
    settings = _settings(tmp_path, profile)
    with pytest.raises(Failure, match="export .*stage0/export/model.safetensors, which does not exist; "
                                      "materialize stdit2_stage0 first"):
        plan_stage(1, settings, curated / "meta.parquet")
    save_model(build_stdit2("stdit2-tiny", depth=2), settings.export_path(0))
    with pytest.raises(Failure, match="does not fit the stage's model: missing: blocks.2"):
        plan_stage(1, settings, curated / "meta.parquet")
    save_model(build_stdit2("stdit2-tiny"), settings.export_path(0))
    assert plan_stage(1, settings, curated / "meta.parquet").init == settings.export_path(0)


class _NoLaunch(TorchXLauncher):
    def launch(self, app, follow=True, stream=None):
        raise AssertionError("launched despite bad input")


def test_stage_asset_validates_before_launching(tmp_path, profile):
    empty = tmp_path / "curated"
    empty.mkdir()
    pd.DataFrame(columns=["path", "text", "num_frames", "height", "width"]).to_parquet(empty / "meta.parquet")
    resources = {"curation_storage": CurationStorage(raw_root=str(tmp_path), curated_root=str(empty)),
                 "cache_settings": CacheSettings(root=str(tmp_path / "caches"), stages=TINY),
                 "training_settings": _settings(tmp_path, profile),
                 "torchx_launcher": _NoLaunch(log_dir=str(tmp_path / "logs")), "mlflow_tracking": _tracking(tmp_path)}
    with pytest.raises(Failure, match="--data .*meta.parquet: the training table is empty"):
        materialize([stdit2_stage0], resources=resources)


def test_stage0_trains_through_torchx_and_reports_through_pipes(tmp_path, profile, curated):
    resources = {"curation_storage": CurationStorage(raw_root=str(tmp_path), curated_root=str(curated)),
                 "cache_settings": CacheSettings(root=str(tmp_path / "caches"), stages=TINY),
                 "training_settings": _settings(tmp_path, profile),
                 "torchx_launcher": TorchXLauncher(log_dir=str(tmp_path / "logs"), wait_interval_s=0.5),
                 "mlflow_tracking": _tracking(tmp_path)}
    result = materialize([stdit2_stage0], resources=resources)
    metadata = result.asset_materializations_for_node("stdit2_stage0")[0].metadata
    assert metadata["steps"].value == 2 and math.isfinite(metadata["final_loss"].value)
    assert metadata["tokens_per_second"].value > 0 and metadata["wall_seconds"].value > 0
    assert Path(metadata["checkpoint"].value) == tmp_path / "train" / "stage0" / "export" / "model.safetensors"
    assert Path(metadata["checkpoint"].value).is_file() and Path(metadata["dcp_dir"].value).is_dir()
    assert "/#/experiments/" in metadata["mlflow_run"].value
    assert metadata["loss_curve"].value.startswith("![loss curve](data:image/png;base64,")
    assert (tmp_path / "train" / "stage0" / "loss_curve.png").is_file()
    assert metadata["torchx_app"].value.startswith("local_cwd://")
    # The job's own check computes the inputs the asset recorded (a job computing others
    # would have rewritten inputs.json and cleared the folder).
    recorded = json.loads((tmp_path / "train" / "stage0" / "inputs.json").read_text())
    settings = _settings(tmp_path, profile)
    assert recorded == plan_stage(0, settings, tmp_path / "train" / "stage0" / "meta.parquet",
                                  cache=str(tmp_path / "caches")).inputs


def test_loss_checks_read_each_stage_metrics(tmp_path):
    import json as _json

    from assets_defs.training import training_checks
    from orchestration.resources import TrainingSettings

    settings = TrainingSettings(out_root=str(tmp_path), stages=["tiny/stage0", "tiny/stage1", "tiny/stage2", "tiny/stage3"])
    stage_dir = settings.stage_dir(1)
    stage_dir.mkdir(parents=True)
    (stage_dir / "metrics.jsonl").write_text(
        "".join(_json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 9)))
    assert training_checks[1](training_settings=settings).passed
    assert not training_checks[2](training_settings=settings).passed  # never trained: no metrics


def test_changed_inputs_restart_the_stage_and_equal_inputs_reuse_it(tmp_path, profile, curated):
    from opensora_core.train.stage_folder import StageFolder

    settings = _settings(tmp_path, profile)
    plan = plan_stage(0, settings, curated / "meta.parquet")
    folder = StageFolder(plan.out)
    assert plan.inputs["max_steps"] == 2 and plan.inputs["profile"] == settings.profile
    assert folder.reuse_or_reset(plan.inputs) is None  # nothing trained yet
    step = plan.out / "checkpoints" / "step-00000002"
    step.mkdir(parents=True)
    (plan.out / "export").mkdir()
    (plan.out / "export" / "model.safetensors").write_bytes(b"weights")
    (plan.out / "result.json").write_text('{"steps": 2}')
    assert folder.reuse_or_reset(plan.inputs) == {"steps": 2}  # same inputs: the finished result
    (plan.out / "result.json").unlink()
    assert folder.reuse_or_reset(plan.inputs) is None and step.is_dir()  # same inputs, unfinished: resume

    other = dict(plan.inputs, stage_config=dict(plan.inputs["stage_config"], lr=1e-5))
    assert folder.reuse_or_reset(other) is None
    assert not (plan.out / "checkpoints").exists() and not (plan.out / "export").exists()


def test_champion_init_without_a_champion_fails_before_launch(tmp_path, profile, curated):
    from dagster import RunConfig

    resources = {"curation_storage": CurationStorage(raw_root=str(tmp_path), curated_root=str(curated)),
                 "cache_settings": CacheSettings(root=str(tmp_path / "caches"), stages=TINY),
                 "training_settings": _settings(tmp_path, profile),
                 "torchx_launcher": _NoLaunch(log_dir=str(tmp_path / "logs")), "mlflow_tracking": _tracking(tmp_path)}
    with pytest.raises(Failure, match="init 'champion': model 'stdit2' has no 'champion' alias"):
        materialize([stdit2_stage0], resources=resources,
                    run_config=RunConfig(ops={"stdit2_stage0": {"config": {"init": "champion"}}}))


def test_pipes_messages_are_read_only_as_whole_lines(tmp_path):
    # A reader that parsed a half-written line killed the stage's Pipes session.
    import json
    import threading
    import time

    from orchestration.launch.pipes import whole_lines

    path = tmp_path / "messages.jsonl"
    path.write_text("")
    stop = threading.Event()

    def writer():
        with open(path, "a", encoding="utf-8") as f:
            f.write('{"method": "log", "par')
            f.flush()
            time.sleep(0.2)  # the reader polls the half line meanwhile
            f.write('ams": {}}\n{"method": "closed"}')  # the last line lacks its newline
            f.flush()
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    lines = list(whole_lines(path, stop.is_set, poll_seconds=0.001))
    thread.join()
    assert [json.loads(line) for line in lines] == [{"method": "log", "params": {}}, {"method": "closed"}]


def test_a_stage_folder_held_by_a_running_job_is_not_reset(tmp_path, profile, curated):
    from opensora_core.utils.folder_lock import FolderLock

    settings = _settings(tmp_path, profile)
    resources = {"curation_storage": CurationStorage(raw_root=str(tmp_path), curated_root=str(curated)),
                 "cache_settings": CacheSettings(root=str(tmp_path / "caches"), stages=TINY),
                 "training_settings": settings, "torchx_launcher": _NoLaunch(log_dir=str(tmp_path / "logs")),
                 "mlflow_tracking": _tracking(tmp_path)}
    keep = settings.stage_dir(0) / "checkpoints" / "step-00000004"
    keep.mkdir(parents=True)
    busy = r"stdit2_stage0: .* is in use by another run \(training stage0, pid "
    with FolderLock(settings.stage_dir(0), "training stage0"), pytest.raises(Failure, match=busy):
        materialize([stdit2_stage0], resources=resources)
    assert keep.is_dir()  # the running job's checkpoints are untouched


def _finished_stage(settings: TrainingSettings, index: int, curated: Path, losses: list[float]) -> None:
    """A stage folder as a finished job leaves it, for the stage asset to reuse."""
    from opensora_core.train.stage_folder import TABLE

    out = settings.stage_dir(index)
    out.mkdir(parents=True)
    (out / TABLE).write_bytes((curated / "meta.parquet").read_bytes())
    plan = plan_stage(index, settings, out / TABLE)
    (out / "inputs.json").write_text(json.dumps(plan.inputs))
    export = out / "export" / "model.safetensors"
    save_model(build_stdit2(plan.config.model_preset), export)
    (out / "result.json").write_text(json.dumps({"steps": len(losses), "final_loss": losses[-1],
                                                 "wall_seconds": 1.0, "export_path": str(export)}))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": v}) + "\n"
                                               for i, v in enumerate(losses)))


@pytest.mark.parametrize("losses, problem", [
    ([1.0, 0.9, math.nan, 0.8, 0.7, 0.6, 0.5, 0.4], "a NaN"),
    ([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1], "rising"),
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], None),
    ([1.0, 1.05, 0.98, 1.02, 1.03, 0.99, 1.04, 1.01], None),  # flat, as a fine-tune of a converged model
])
def test_a_diverged_stage_blocks_the_next_stage(tmp_path, profile, curated, losses, problem):
    """The loss check is blocking: stage 1 (here reused, so nothing trains) materializes
    only after stage 0's loss check passed."""
    from assets_defs.training import stdit2_stage1, training_checks

    settings = _settings(tmp_path, profile)
    _finished_stage(settings, 0, curated, losses)
    _finished_stage(settings, 1, curated, [1.0, 0.5])  # two points: too few to judge, finite
    resources = {"curation_storage": CurationStorage(raw_root=str(tmp_path), curated_root=str(curated)),
                 "cache_settings": CacheSettings(root=str(tmp_path / "caches"), stages=TINY),
                 "training_settings": settings,
                 "torchx_launcher": _NoLaunch(log_dir=str(tmp_path / "logs")), "mlflow_tracking": _tracking(tmp_path)}
    result = materialize([stdit2_stage0, stdit2_stage1, *training_checks[:2]], resources=resources,
                         raise_on_error=False)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "stdit2_stage0" in materialized  # reused: the folder holds a finished run
    if problem is None:
        assert result.success and checks["stdit2_stage0_loss"].passed and checks["stdit2_stage1_loss"].passed
        assert "stdit2_stage1" in materialized
        assert checks["stdit2_stage1_loss"].metadata["trend"].value.startswith("not judged")
        assert checks["stdit2_stage0_loss"].metadata["trend"].value in ("decreasing", "flat")
    else:
        assert not checks["stdit2_stage0_loss"].passed, problem
        assert "stdit2_stage1" not in materialized and not result.success, problem


def test_stage_and_cache_checks_block_what_is_downstream():
    from assets_defs.caches import cache_checks
    from assets_defs.training import training_checks

    for check in [*training_checks, *cache_checks]:
        assert all(spec.blocking for spec in check.check_specs), check
