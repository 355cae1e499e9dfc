from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import (
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)

from assets_defs.curation import (
    curation_checks,
    raw_partitions,
    raw_videos,
    scene_clips,
    scored_clips,
    training_dataset,
)
from opensora_core.curation import raw_videos as raw_step
from opensora_core.curation import scene_clips as clips_step
from opensora_core.curation import scored_clips as scores_step
from opensora_core.curation.storage import Storage
from opensora_core.data.synthetic import moving_shape_clip
from opensora_core.data.video_io import write_video
from orchestration.local_run import apply_partition_requests
from orchestration.resources import CurationStorage
from orchestration.sensors import raw_videos_sensor
from tests.data.corpus import EXPECTED, corpus_config, make_corpus

KEEP = ["red left.mp4", "two_scenes.mp4", "still.png", "empty.mp4"]
STEP_MODULES = {"raw_videos": raw_step, "scene_clips": clips_step}  # where the assets look each step up


@pytest.fixture
def setup(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in set(EXPECTED) - set(KEEP):
        (raw / name).unlink()
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump(corpus_config().model_dump(mode="json")))
    storage = CurationStorage(raw_root=str(raw), curated_root=str(tmp_path / "curated"), data_config=str(config))
    return DagsterInstance.ephemeral(), storage, raw, tmp_path / "curated"


def _tick(instance, storage):
    """One evaluation of the sensor, with the cursor the last one left (kept on the
    instance, as the daemon keeps it)."""
    context = build_sensor_context(instance=instance, resources={"curation_storage": storage},
                                   cursor=getattr(instance, "_test_sensor_cursor", None))
    result = raw_videos_sensor(context)
    if isinstance(result, SensorResult):
        apply_partition_requests(instance, result)
        if result.cursor is not None:
            instance._test_sensor_cursor = result.cursor
        if result.skip_reason is not None and not result.run_requests and not result.dynamic_partitions_requests:
            return result.skip_reason
    return result


def test_sensor_skips_a_missing_or_empty_raw_folder_naming_it(tmp_path):
    raw = tmp_path / "raw"
    storage = CurationStorage(raw_root=str(raw), curated_root=str(tmp_path / "curated"))
    instance = DagsterInstance.ephemeral()
    missing = _tick(instance, storage)
    assert isinstance(missing, SkipReason) and f"raw folder {raw} does not exist" in missing.skip_message
    raw.mkdir()
    (raw / "notes.txt").write_text("not a video")
    empty = _tick(instance, storage)
    assert isinstance(empty, SkipReason) and f"raw folder {raw} has no video or image files" in empty.skip_message
    assert not instance.get_dynamic_partitions(raw_partitions.name)


def test_a_list_of_files_as_the_raw_root(setup):
    """The sensor reads a list of files like a folder; a listed file that is missing is
    a partition whose raw_videos records it as rejected (not a failed run)."""
    instance, storage, raw, curated = setup
    import fsspec

    listing = raw.parent / "inputs.txt"
    fsspec.filesystem("memory").pipe("/assets-list/still.png", (raw / "still.png").read_bytes())
    listing.write_text(f"{raw / 'red left.mp4'}\nmissing.mp4\nmemory://assets-list/still.png\n")
    storage = CurationStorage(raw_root=str(listing), curated_root=str(curated), data_config=storage.data_config)
    _tick(instance, storage)
    keys = instance.get_dynamic_partitions(raw_partitions.name)
    assert len(keys) == 3
    paths = {}
    for key in keys:
        result = _curate_partition(instance, storage, key)
        assert result.success
        paths[key] = result.asset_materializations_for_node("raw_videos")[0].metadata["path"]
    # The listed URL is a link in the UI, local files are paths.
    assert sorted(type(p).__name__ for p in paths.values()) == ["PathMetadataValue", "PathMetadataValue",
                                                                  "UrlMetadataValue"]
    merged = materialize([training_dataset], instance=instance, resources={"curation_storage": storage})
    assert merged.success
    fsspec.filesystem("memory").rm("/assets-list", recursive=True)
    meta, rejected = pd.read_csv(curated / "meta.csv"), pd.read_csv(curated / "rejected.csv")
    assert set(meta["source"]) == {str(raw / "red left.mp4"), "memory://assets-list/still.png"}
    assert rejected[["path", "step", "reason"]].values.tolist() == [
        [str(raw.parent / "missing.mp4"), "raw_videos", "not found"]]
    (raw.parent / "absent.txt").unlink(missing_ok=True)
    gone = CurationStorage(raw_root=str(raw.parent / "absent.txt"), curated_root=str(curated))
    skipped = _tick(instance, gone)
    assert isinstance(skipped, SkipReason) and "absent.txt: no such list of raw files" in skipped.skip_message


def _curate_partition(instance, storage, key):
    return materialize([raw_videos, scene_clips, scored_clips], partition_key=key, instance=instance,
                       resources={"curation_storage": storage})


def test_sensor_partitions_assets_and_checks(setup):
    instance, storage, raw, curated = setup
    result = _tick(instance, storage)
    keys = sorted(r.partition_key for r in result.run_requests)
    assert len(keys) == 4 and sorted(instance.get_dynamic_partitions(raw_partitions.name)) == keys
    assert isinstance(_tick(instance, storage), SkipReason)  # nothing new

    for key in keys:
        assert _curate_partition(instance, storage, key).success
    two = next(k for k in keys if k.startswith("two_scenes"))
    events = instance.get_latest_materialization_event(scene_clips.key)
    assert events is not None
    result = _curate_partition(instance, storage, two)
    clip_md = result.asset_materializations_for_node("scene_clips")[0].metadata
    assert clip_md["clips"].value == 2 and clip_md["thumbnail"].value.startswith("![two_scenes")
    assert 1 <= clip_md["stream_copied"].value <= 2  # the first scene starts on the first keyframe
    # Scored while cutting, and taken as they are by the separate scored_clips step.
    assert "flow" in clip_md["scored_while_cutting"].value
    assert "flow" in result.asset_materializations_for_node("scored_clips")[0].metadata[
        "reused_from_scene_clips"].value
    empty = next(k for k in keys if k.startswith("empty"))
    empty_md = _curate_partition(instance, storage, empty).asset_materializations_for_node("raw_videos")[0].metadata
    assert "empty file" in empty_md["rejected"].value

    merged = materialize([training_dataset, *curation_checks], instance=instance,
                         resources={"curation_storage": storage})
    assert merged.success
    md = merged.asset_materializations_for_node("training_dataset")[0].metadata
    assert md["kept"].value == 4 and md["rejected"].value == 1
    assert "flow" in md["histograms"].value
    checks = {e.check_name: e for e in merged.get_asset_check_evaluations()}
    assert set(checks) == {c.check_key.name for c in curation_checks}
    assert all(e.passed for e in checks.values())
    assert checks["training_dataset_rejected"].metadata["rejected"].value == 1
    meta = pd.read_csv(curated / "meta.csv")
    assert len(meta) == 4 and set(meta["partition"]) == set(keys) - {empty}

    # A new file: one new partition; re-materializing it touches no other partition's files.
    others = {p: p.stat().st_mtime_ns for p in (curated / "partitions").rglob("*") if p.is_file()}
    write_video(raw / "again.mp4", moving_shape_clip(24, 64, 64, "cyan", "up", speed=1.5), fps=12)
    new = [r.partition_key for r in _tick(instance, storage).run_requests]
    assert len(new) == 1 and new[0].startswith("again-")
    assert _curate_partition(instance, storage, new[0]).success
    assert {p: p.stat().st_mtime_ns for p in others} == others
    merged = materialize([training_dataset], instance=instance, resources={"curation_storage": storage})
    assert merged.asset_materializations_for_node("training_dataset")[0].metadata["kept"].value == 5

    # A caption written beside a curated file: its partition runs again, under its key.
    (raw / "two_scenes.txt").write_text("two shots, captioned later")
    assert materialize([training_dataset], instance=instance, resources={"curation_storage": storage}).success
    rerun = _tick(instance, storage).run_requests  # the merge in between does not hide the edit
    assert [r.partition_key for r in rerun] == [two] and rerun[0].tags["opensora/reason"] == "caption"
    assert isinstance(_tick(instance, storage), SkipReason)  # once
    cut = clips_step.scene_clips  # the run reads the caption again and scores; it neither probes nor cuts
    with pytest.MonkeyPatch.context() as patch:
        for step in ("raw_videos", "scene_clips"):
            patch.setattr(STEP_MODULES[step], step, lambda *a, _s=step, **k: pytest.fail(f"{_s} ran again"))
        result = materialize([raw_videos, scene_clips, scored_clips], partition_key=two, instance=instance,
                             resources={"curation_storage": storage}, tags=rerun[0].tags)
    assert result.success and clips_step.scene_clips is cut
    assert result.asset_materializations_for_node("scene_clips")[0].metadata["clips"].value == 2
    assert set(scores_step.read_scores(storage.out(), two)["text"]) == {"two shots, captioned later"}

    # One file deleted and one replaced under its name (new content, new key): the sensor
    # removes both old partitions, and the merge takes only the files there now.
    (raw / "again.mp4").unlink()
    red = next(k for k in keys if k.startswith("red_left"))
    write_video(raw / "red left.mp4", np.concatenate([  # two scenes, content no other file has
        moving_shape_clip(24, 64, 64, "blue", "up", speed=1.5, background=(30, 30, 30)),
        moving_shape_clip(24, 64, 64, "red", "down", speed=1.5, shape="circle", background=(210, 210, 210))]),
        fps=12)
    replaced = [r.partition_key for r in _tick(instance, storage).run_requests]
    assert len(replaced) == 1 and replaced[0].startswith("red_left") and replaced[0] != red
    assert set(instance.get_dynamic_partitions(raw_partitions.name)) == (set(keys) - {red}) | set(replaced)
    merged = materialize([training_dataset], instance=instance, resources={"curation_storage": storage})
    md = merged.asset_materializations_for_node("training_dataset")[0].metadata
    assert md["kept"].value == 3 and md["not_scored_yet"].value == 1  # the new red left.mp4
    meta, rejected = pd.read_csv(curated / "meta.csv"), pd.read_csv(curated / "rejected.csv")
    assert not {red, new[0]} & set(meta["partition"]) and red not in set(rejected["partition"])
    assert _curate_partition(instance, storage, replaced[0]).success
    merged = materialize([training_dataset], instance=instance, resources={"curation_storage": storage})
    meta = pd.read_csv(curated / "meta.csv")
    assert len(meta) == 5 and (meta["partition"] == replaced[0]).sum() == 2  # two scenes: two clips


def test_a_file_that_cannot_be_read_for_a_moment_keeps_the_partitions(setup, monkeypatch):
    """A store's hiccup gives a file a key from its path alone; its real partition (and
    any other's that seems gone) stays until the folder reads cleanly."""
    instance, storage, raw, _ = setup
    _tick(instance, storage)
    keys = set(instance.get_dynamic_partitions(raw_partitions.name))
    (raw / "empty.mp4").unlink()
    original = Storage.info
    monkeypatch.setattr(Storage, "info", lambda self, rel: (_ for _ in ()).throw(OSError("timeout"))
                        if rel == "still.png" else original(self, rel))
    _tick(instance, storage)
    assert keys <= set(instance.get_dynamic_partitions(raw_partitions.name))
    monkeypatch.undo()
    _tick(instance, storage)
    assert set(instance.get_dynamic_partitions(raw_partitions.name)) == {k for k in keys if not k.startswith("empty")}
    # A problem that lasts (a permission; a name that is not UTF-8) does not hold removals back.
    (raw / "two_scenes.mp4").unlink()
    monkeypatch.setattr(Storage, "info", lambda self, rel: (_ for _ in ()).throw(PermissionError("denied"))
                        if rel == "still.png" else original(self, rel))
    _tick(instance, storage)
    assert not any(k.startswith("two_scenes") for k in instance.get_dynamic_partitions(raw_partitions.name))


def test_vanished_raw_file_fails_with_its_name(setup):
    instance, storage, raw, _ = setup
    keys = [r.partition_key for r in _tick(instance, storage).run_requests]
    key = next(k for k in keys if k.startswith("red_left"))
    (raw / "red left.mp4").unlink()
    result = materialize([raw_videos], partition_key=key, instance=instance, resources={"curation_storage": storage},
                         raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert "red left.mp4" in failure.message and "gone" in failure.message


def test_empty_training_dataset_fails_the_blocking_check(setup):
    instance, storage, raw, _ = setup
    for path in raw.iterdir():
        path.unlink()
    (raw / "empty.mp4").write_bytes(b"")
    key = _tick(instance, storage).run_requests[0].partition_key
    assert _curate_partition(instance, storage, key).success
    merged = materialize([training_dataset, *curation_checks], instance=instance,
                         resources={"curation_storage": storage}, raise_on_error=False)
    checks = {e.check_name: e.passed for e in merged.get_asset_check_evaluations()}
    assert checks["training_dataset_not_empty"] is False and checks["training_dataset_rejected"] is True


def test_definitions_load_with_each_executor(monkeypatch):
    from orchestration import definitions

    try:
        assert definitions.defs.resolve_job_def("curate_partition").executor_def.name == "multiprocess"
        monkeypatch.setenv("OPENSORA_DAGSTER_EXECUTOR", "nomad")
        with pytest.raises(ValueError, match="nomad"):
            importlib.reload(definitions)
        pytest.importorskip("dagster_k8s")
        from dagster import validate_run_config

        from opensora_core.config import project_root

        monkeypatch.setenv("OPENSORA_DAGSTER_EXECUTOR", "k8s")
        importlib.reload(definitions)
        job = definitions.defs.resolve_job_def("curate_partition")
        assert job.executor_def.name == "k8s"
        run_config = yaml.safe_load((project_root() / "configs/data/k8s_executor.yaml").read_text())
        validate_run_config(job, run_config)
        run_config["execution"]["config"]["max_concurrent"] = "many"
        with pytest.raises(Exception, match="max_concurrent"):
            validate_run_config(job, run_config)
    finally:
        monkeypatch.delenv("OPENSORA_DAGSTER_EXECUTOR", raising=False)
        importlib.reload(definitions)


def test_thumbnails_in_metadata_are_small_whatever_the_still(tmp_path):
    import base64

    import cv2
    import numpy as np

    from assets_defs.curation import THUMBNAIL_SIDE, _thumbnail_md

    storage = CurationStorage(raw_root=str(tmp_path / "raw"), curated_root=str(tmp_path / "curated"))
    folder = tmp_path / "curated" / "partitions" / "photo-1" / "clips"
    folder.mkdir(parents=True)
    photo = np.random.default_rng(0).integers(0, 255, (1200, 2000, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "photo-1-0000.png"), photo)
    markdown = _thumbnail_md(storage, "photo-1", pd.DataFrame({"thumbnail": ["photo-1-0000.png"],
                                                                "clip_id": ["photo-1-0000"]}))
    assert markdown.startswith("![photo-1-0000](data:image/jpeg;base64,")
    data = base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")"))
    thumbnail = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert thumbnail.shape == (round(1200 * THUMBNAIL_SIDE / 2000), THUMBNAIL_SIDE, 3)
    assert len(data) < (folder / "photo-1-0000.png").stat().st_size / 20


def test_per_file_steps_share_the_curation_pool():
    """One pool across runs is what lets an instance bound how many files are cut at once
    (`dagster instance concurrency set curation N`); the merge is not in it."""
    from assets_defs.curation import CURATION_POOL

    assert [a.op.pool for a in (raw_videos, scene_clips, scored_clips)] == [CURATION_POOL] * 3
    assert training_dataset.op.pool is None


def test_a_step_that_fails_on_the_way_fails_its_run(setup, monkeypatch):
    """A codec's or scorer's error is recorded (the merge lists it) and fails the run, so
    it shows in the UI and can be run again, unlike a file that is bad in itself."""
    instance, storage, _, _ = setup
    key = next(r.partition_key for r in _tick(instance, storage).run_requests if r.partition_key.startswith("red"))
    monkeypatch.setattr(clips_step, "_cut_and_score", lambda *a, **k: (_ for _ in ()).throw(MemoryError("oom")))
    result = materialize([raw_videos, scene_clips, scored_clips], partition_key=key, instance=instance,
                         resources={"curation_storage": storage}, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    assert "scene_clips of partition red_left" in error.message and "cutting failed (MemoryError: oom)" in error.message
    monkeypatch.undo()
    assert _curate_partition(instance, storage, key).success  # run again: cut this time


def test_a_store_failing_to_give_the_raw_file_fails_the_probe_run(setup, monkeypatch):
    instance, storage, _, _ = setup
    key = next(r.partition_key for r in _tick(instance, storage).run_requests if r.partition_key.startswith("red"))

    @contextlib.contextmanager
    def unreachable(self, *parts):
        raise ConnectionError("store unreachable")
        yield

    monkeypatch.setattr(Storage, "local_copy", unreachable)
    result = materialize([raw_videos], partition_key=key, instance=instance,
                         resources={"curation_storage": storage}, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    assert "raw_videos of partition red_left" in error.message and "store unreachable" in error.message


def test_changed_scorers_score_every_curated_file_again_without_cutting(setup):
    """A model, weights file or caption table replaced in place (or the scorers'
    settings changed): the sensor requests each curated file's run, which scores again
    while the probe and the clips stand."""
    instance, storage, raw, _ = setup
    keys = sorted(r.partition_key for r in _tick(instance, storage).run_requests)
    for key in keys:
        assert _curate_partition(instance, storage, key).success
    assert isinstance(_tick(instance, storage), SkipReason)
    table = raw.parent / "captions.csv"  # a caption table the scorers now read
    table.write_text("path,text\nred left.mp4,a red square from the table\n")
    config = Path(storage.data_config)
    settings = yaml.safe_load(config.read_text())
    settings["scorers"]["captions"] = {"sidecar": False, "import_csv": str(table)}
    config.write_text(yaml.safe_dump(settings))
    requests = _tick(instance, storage).run_requests
    assert sorted(r.partition_key for r in requests) == keys
    assert {r.tags["opensora/reason"] for r in requests} == {"scorers"}
    assert isinstance(_tick(instance, storage), SkipReason)  # once
    table.write_text("path,text\nred left.mp4,a red square edited in place\n")  # the table's content counts
    requests = _tick(instance, storage).run_requests
    assert sorted(r.partition_key for r in requests) == keys
    red = next(r for r in requests if r.partition_key.startswith("red_left"))
    with pytest.MonkeyPatch.context() as patch:
        for step in ("raw_videos", "scene_clips"):
            patch.setattr(STEP_MODULES[step], step, lambda *a, _s=step, **k: pytest.fail(f"{_s} ran again"))
        result = materialize([raw_videos, scene_clips, scored_clips], partition_key=red.partition_key,
                             instance=instance, resources={"curation_storage": storage}, tags=red.tags)
    assert result.success
    assert set(scores_step.read_scores(storage.out(), red.partition_key)["text"]) == {
        "a red square edited in place"}
