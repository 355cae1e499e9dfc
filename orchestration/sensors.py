"""Sensors and the jobs they launch."""


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
