"""The whole asset graph on a tiny dataset, in-process, in a persistent local instance:
raw files -> partitions -> training table -> caches -> four TorchX training stages ->
evaluation and promotion; then a second run that reuses everything, and retraining
after new raw files arrive.

The module fixture runs the first two materializations and records what the tests read
of the stores (registry, stage results) right after them, so each test stands alone, in
any order: the retraining test, the only one that changes the stores, cannot change what
the others see."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, build_sensor_context
from mlflow.tracking import MlflowClient

from opensora_core.config import find_config
from opensora_core.data.synthetic import synth
from orchestration.local_run import (
    PipelineFolders,
    configure_environment,
    curate_partitions,
    local_instance,
    materialize_downstream,
    metadata_of,
    register_new_partitions,
    unprocessed_partitions,
)

STAGES = [f"stdit2_stage{i}" for i in range(4)]
TINY_STAGES = ",".join(f"tiny/stage{i}" for i in range(4))  # whatever the caller's environment says


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    profile = yaml.safe_load(find_config("profiles", "embedded").read_text())
    profile["mlflow_tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
    (root / "profile.yaml").write_text(yaml.safe_dump(profile))
    folders = PipelineFolders(root)
    synth(folders.raw, videos=8, images=4, seed=0)
    with pytest.MonkeyPatch.context() as env:
        configure_environment(folders, str(root / "profile.yaml"), environ=_Setter(env), OPENSORA_MAX_STEPS=2,
                              OPENSORA_EVAL_SEEDS=1, OPENSORA_EVAL_STEPS=2,
                              OPENSORA_DATA_CONFIG="synthetic",
                              OPENSORA_EVAL_PROMOTION_FLOOR="none",  # two steps of training score near chance
                              OPENSORA_TRAIN_STAGES=TINY_STAGES, OPENSORA_STAGES=TINY_STAGES)
        from orchestration.definitions import build_definitions

        defs = build_definitions()
        instance = local_instance(folders)
        keys = register_new_partitions(instance, defs)
        curated = curate_partitions(instance, defs, keys, workers=2)  # worker processes, as the demo
        first = materialize_downstream(instance, defs)
        uri = profile["mlflow_tracking_uri"]
        after_first = _stores(folders, uri) if first.success else {}
        # The second run, with nothing new: everything up to date.
        new_partitions, unprocessed = register_new_partitions(instance, defs), unprocessed_partitions(instance)
        again = materialize_downstream(instance, defs)
        yield {"root": root, "folders": folders, "defs": defs, "instance": instance, "keys": keys,
               "curated": curated, "first": first, "after_first": after_first, "again": again,
               "again_new_partitions": new_partitions, "again_unprocessed": unprocessed, "env": env, "uri": uri}


def _stores(folders: PipelineFolders, uri: str) -> dict:
    """What the registry and stage 3's folder say right after the first run."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("stdit2", "champion")
    return {"champion_version": int(champion.version), "champion_run_id": champion.run_id,
            "champion_tags": dict(champion.tags),
            "stage3_run_id": json.loads((folders.train / "stage3" / "result.json").read_text())["mlflow_run_id"]}


class _Setter(dict):
    """configure_environment's `environ`, routed through a MonkeyPatch so it is undone."""

    def __init__(self, patch):
        super().__init__()
        self.patch = patch

    def update(self, values):
        for k, v in values.items():
            self.patch.setenv(k, v)


def test_whole_graph_materializes_with_lineage_and_promotes(pipeline):
    assert len(pipeline["keys"]) == 12 and all(pipeline["curated"].values())
    first = pipeline["first"]
    assert first.success
    dataset = metadata_of(first, "training_dataset")
    assert dataset["kept"] >= 12
    for name in STAGES:
        md = metadata_of(first, name)
        assert md["steps"] == 2 and "up_to_date" not in md, name
        assert Path(md["checkpoint"]).is_file()
    assert metadata_of(first, "stdit2_stage1")["init_source"] == "stage config"
    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert {f"{s}_loss" for s in STAGES} <= set(checks) and checks["training_dataset_not_empty"]

    md = metadata_of(first, "eval_samples")
    assert md["decision"] == "promoted" and md["model_version"] == 1
    assert md["champion_version_before"] == "none"
    assert md["preview"].startswith("![samples (seed 0)](data:image/gif;base64,")
    assert md["frame_strip"].startswith("![first, middle, last frame](data:image/png;base64,")
    folder = Path(md["folder"])
    report = json.loads((folder / "metrics.json").read_text())
    assert len(report["samples"]) == 28 and all(Path(s["file"]).is_file() for s in report["samples"])
    # Each held-out prompt also gets an image-to-video and an extension sample, scored.
    assert [r["kind"] for r in report["conditioned"]] == ["i2v"] * 28 + ["extend"] * 28
    assert all(Path(r["file"]).is_file() and Path(r["reference"]).is_file() for r in report["conditioned"])
    assert md["metric"] == "prompt_following" and 0.0 <= md["prompt_following"] <= 1.0
    assert not list(folder.parent.glob(".*.partial"))

    client = MlflowClient(tracking_uri=pipeline["uri"], registry_uri=pipeline["uri"])
    stores = pipeline["after_first"]
    assert stores["champion_version"] == 1
    assert float(stores["champion_tags"]["eval.prompt_following"]) == md["prompt_following"]
    # The version points at the stage 3 run's export/ folder: weights and the trained text encoder.
    stage3_run = stores["stage3_run_id"]
    assert stores["champion_run_id"] == stage3_run
    files = {a.path for a in client.list_artifacts(stage3_run, "export")}
    assert {"export/model.safetensors", "export/text_encoder.safetensors"} <= files
    eval_run = client.get_run(md["mlflow_eval_run"].rsplit("/", 1)[-1])
    assert eval_run.data.tags["evaluated_run_id"] == stage3_run
    assert eval_run.data.metrics["color_accuracy"] == md["color_accuracy"]

    # Lineage in the persistent instance: every asset has a materialization.
    instance = pipeline["instance"]
    for name in ["raw_videos", "scene_clips", "scored_clips", "training_dataset", "text_embeddings",
                 "video_latents", *STAGES, "eval_samples"]:
        assert instance.get_latest_materialization_event(AssetKey(name)) is not None, name


def test_second_run_reuses_every_up_to_date_result(pipeline):
    assert pipeline["again_new_partitions"] == [] and pipeline["again_unprocessed"] == []
    again = pipeline["again"]
    assert again.success
    for name in [*STAGES, "eval_samples"]:
        assert "up_to_date" in metadata_of(again, name), name
    assert metadata_of(again, "text_embeddings")["encoded"] == 0
    assert metadata_of(again, "eval_samples")["model_version"] == 1  # nothing registered twice


def test_new_raw_files_retrain_from_the_champion(pipeline):
    from orchestration.sensors import retrain_on_new_data_sensor

    instance, defs, folders = pipeline["instance"], pipeline["defs"], pipeline["folders"]
    sensor = retrain_on_new_data_sensor(build_sensor_context(instance=instance))
    assert "since the last training" in sensor.skip_message  # everything curated was trained on

    extra = pipeline["root"] / "extra"
    synth(extra, videos=2, images=0, seed=7)
    for clip in sorted(extra.glob("*.mp4")):
        shutil.copy(clip, folders.raw / f"new_{clip.name}")
        shutil.copy(clip.with_suffix(".txt"), folders.raw / f"new_{clip.stem}.txt")
    cut_before = len(instance.fetch_materializations(AssetKey("scene_clips"), limit=1000).records)

    new = register_new_partitions(instance, defs)
    assert len(new) == 2 and all(k.startswith("new_") for k in new)
    assert curate_partitions(instance, defs, new) == {k: True for k in new}
    cut = instance.fetch_materializations(AssetKey("scene_clips"), limit=1000).records
    assert len(cut) - cut_before == 2 and {r.partition_key for r in cut[:2]} == set(new)  # only the new files

    request = retrain_on_new_data_sensor(build_sensor_context(instance=instance))
    assert request.run_requests[0].tags["opensora/new_partitions"] == "2"
    result = defs.resolve_job_def("retrain_job").execute_in_process(instance=instance, tags=request.run_requests[0].tags)
    assert result.success
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {
        "training_dataset", "text_embeddings", "video_latents", "stdit2_stage3", "eval_samples"}
    # Caches encode the new rows only (synthetic captions repeat, so new text may be cached already).
    video, first_video = metadata_of(result, "video_latents"), metadata_of(pipeline["first"], "video_latents")
    assert 0 < video["encoded"] < first_video["encoded"]
    assert video["entries"] == first_video["entries"] + video["encoded"]
    assert metadata_of(result, "text_embeddings")["encoded"] <= 2
    stage3 = metadata_of(result, "stdit2_stage3")
    assert stage3["init_source"] == "stdit2 v1 (champion)" and "up_to_date" not in stage3
    assert Path(stage3["init"]).parent == folders.train / "stage3" / "init_champion"
    evaluation = metadata_of(result, "eval_samples")
    assert evaluation["model_version"] == 2 and evaluation["champion_version_before"] == 1
    assert evaluation["decision"] == ("promoted" if evaluation["score"] > evaluation["champion_score_before"]
                                      else "kept")
    after = retrain_on_new_data_sensor(build_sensor_context(instance=instance, cursor=request.cursor))
    assert "since the last training" in after.skip_message
