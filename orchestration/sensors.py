"""Sensors and the jobs they launch."""

import json

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from assets_defs.curation import (
    CAPTION_RUN_TAG,
    SCORERS_RUN_TAG,
    raw_partitions,
    raw_videos,
    scene_clips,
    scored_clips,
)
from opensora_core.curation.ingest import INDEX_FILE, register_inputs
from opensora_core.curation.partitions import plan_partitions
from orchestration.resources import CurationStorage
from orchestration.schedules import retrain_job

TRAINING_TABLE = "meta.parquet"  # the training table under CurationStorage.out()
STAGE_TO_RETRAIN = "stdit2_stage3"  # what retrain_job trains: its materializations mark "the last training"

curate_partition_job = define_asset_job(
    "curate_partition",
    selection=AssetSelection.assets(raw_videos, scene_clips, scored_clips),
    description="Probe, cut and score one raw file (one partition).",
)


@sensor(job=curate_partition_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def raw_videos_sensor(context: SensorEvaluationContext, curation_storage: CurationStorage):
    """Registers new raw files as partitions and requests their curation runs.

    Only new or changed files are hashed (the index caches by path, size and mtime);
    a changed file gets a new key. Partitions of files that are gone (deleted, or
    changed: their old key) are removed, unless the folder lists no file at all (an
    unmounted or emptied store is not taken as "delete everything"). A file whose
    sidecar caption was added, edited or removed is curated again under its key, and
    so is every file when the scorers changed: their settings, or a model, weights file
    or caption table they name replaced in place (the cursor keeps the fingerprint the
    last tick saw; those runs score again without probing or cutting).
    """
    try:
        source = curation_storage.source()
    except (OSError, ValueError) as err:
        return SkipReason(str(err))
    if source.missing():
        return SkipReason(f"raw folder {curation_storage.raw_root} does not exist")
    out = curation_storage.out()
    # Sidecar stamps as the last tick saw them (the sensor is what writes the index; an
    # index from before stamps has none, and is not taken as "every caption changed").
    before = {row["key"]: row["sidecar"] for row in json.loads(out.read_text(INDEX_FILE)) if "sidecar" in row} \
        if out.exists(INDEX_FILE) else {}
    config = curation_storage.curation_config()
    try:
        files = register_inputs(source, config, index=out)
    except ValueError as err:  # e.g. the curated root inside the raw one
        return SkipReason(str(err))
    scorers = config.fingerprint("scorers")  # weights and tables by content (digests cached by stat)
    if not files:
        return SkipReason(f"raw folder {curation_storage.raw_root} has no video or image files")
    plan = plan_partitions(files, set(context.instance.get_dynamic_partitions(raw_partitions.name)), before,
                           scorers, context.cursor)
    if plan.kept_back:
        context.log.warning(plan.kept_back)
    if plan.empty:
        if context.cursor != scorers:
            return SensorResult(cursor=scorers, skip_reason=f"no new raw files among {len(files)}")
        return SkipReason(f"no new raw files among {len(files)}")
    new, gone, recaptioned, rescored = plan.new, plan.gone, plan.recaptioned, plan.rescored
    requests = [raw_partitions.build_add_request(new)] if new else []
    if gone:
        context.log.info(f"removing {len(gone)} partitions of raw files no longer there: {', '.join(gone[:5])}")
        requests.append(raw_partitions.build_delete_request(gone))
    if rescored:
        context.log.info(f"scorers changed: scoring the {len(rescored)} curated files again")
    return SensorResult(
        run_requests=[RunRequest(partition_key=key, run_key=key) for key in new] + [
            RunRequest(partition_key=f.key, run_key=f"{f.key} caption {f.sidecar}", tags=dict([CAPTION_RUN_TAG]))
            for f in recaptioned] + [
            RunRequest(partition_key=f.key, run_key=f"{f.key} scorers {scorers}", tags=dict([SCORERS_RUN_TAG]))
            for f in rescored],
        dynamic_partitions_requests=requests,
        cursor=scorers,
    )


def _latest_storage_id(instance, key: AssetKey) -> int | None:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else None


def curated_since(instance, storage_id: int) -> list[str]:
    """Partitions whose `scored_clips` were materialized after event `storage_id`."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=scored_clips.key, after_storage_id=storage_id), limit=10_000).records
    return sorted({r.partition_key for r in records if r.partition_key})


@sensor(job=retrain_job, minimum_interval_seconds=120, default_status=DefaultSensorStatus.STOPPED)
def retrain_on_new_data_sensor(context: SensorEvaluationContext):
    """Requests `retrain_job` when raw files were curated since the last training.

    "Since the last training": after the newest `stdit2_stage3` materialization, and
    after what the previous request already covered (the cursor: the newest curated
    event it saw), so one batch of new files launches one retraining. Stopped by
    default, like `retrain_schedule`: turn it on where new data should retrain the
    model by itself.
    """
    newest = _latest_storage_id(context.instance, scored_clips.key)
    if newest is None:
        return SkipReason("nothing curated yet")
    trained = _latest_storage_id(context.instance, AssetKey(STAGE_TO_RETRAIN)) or 0
    covered = max(trained, int(context.cursor or 0))
    if newest <= covered:
        return SkipReason("no raw files curated since the last training or retraining request")
    partitions = curated_since(context.instance, covered)
    return SensorResult(
        run_requests=[RunRequest(run_key=f"retrain-{newest}",
                                 tags={"opensora/new_partitions": str(len(partitions))})],
        cursor=str(newest),
    )
