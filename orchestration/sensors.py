"""Sensors and the jobs they launch."""

import hashlib

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from assets_defs.curation import raw_partitions, raw_videos, scene_clips, scored_clips
from opensora_core.data.ingest import register_inputs
from orchestration.resources import CurationStorage
from orchestration.schedules import retrain_job

TRAINING_TABLE = "meta.parquet"  # the training table under CurationStorage.out()

curate_partition_job = define_asset_job(
    "curate_partition",
    selection=AssetSelection.assets(raw_videos, scene_clips, scored_clips),
    description="Probe, cut and score one raw file (one partition).",
)


@sensor(job=curate_partition_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def raw_videos_sensor(context: SensorEvaluationContext, curation_storage: CurationStorage):
    """Registers new raw files as partitions and requests their curation runs.

    Only new or changed files are hashed (the index caches by path, size and mtime);
    a changed file gets a new key, so its old partition stays as it was.
    """
    source = curation_storage.source()
    if not source.fs.isdir(source.root):
        return SkipReason(f"raw folder {curation_storage.raw_root} does not exist")
    files = register_inputs(source, curation_storage.curation_config(), index=curation_storage.out())
    known = set(context.instance.get_dynamic_partitions(raw_partitions.name))
    new = [f.key for f in files if f.key not in known]
    if not new:
        return SkipReason(f"no new raw files among {len(files)}")
    return SensorResult(
        run_requests=[RunRequest(partition_key=key, run_key=key) for key in new],
        dynamic_partitions_requests=[raw_partitions.build_add_request(new)],
    )


def table_digest(curation_storage: CurationStorage) -> str | None:
    """sha256 (16 hex digits) of the training table, None when there is none yet.

    The same digest training logs as the `data_snapshot` tag of its MLflow runs.
    """
    out = curation_storage.out()
    if not out.exists(TRAINING_TABLE):
        return None
    return hashlib.sha256(out.read_bytes(TRAINING_TABLE)).hexdigest()[:16]


@sensor(job=retrain_job, minimum_interval_seconds=120, default_status=DefaultSensorStatus.STOPPED)
def retrain_on_new_data_sensor(context: SensorEvaluationContext, curation_storage: CurationStorage):
    """Requests `retrain_job` when the training table changed since the last request.

    The cursor is the digest of `meta.parquet` the last request was made for; a table
    seen before (same content, even if rewritten) is skipped. Stopped by default, like
    `retrain_schedule`: turn it on where new data should retrain the model by itself.
    """
    digest = table_digest(curation_storage)
    if digest is None:
        return SkipReason(f"no training table {curation_storage.out().path(TRAINING_TABLE)} yet")
    if digest == context.cursor:
        return SkipReason(f"training table unchanged since the last retraining request ({digest})")
    return SensorResult(
        run_requests=[RunRequest(run_key=f"retrain-{digest}", tags={"opensora/data_snapshot": digest})],
        cursor=digest,
    )
