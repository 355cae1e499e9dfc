"""Retraining: the job, and the schedule that launches it on a cron from config.

`retrain_job` rebuilds the training table from the curated partitions (new raw files
are curated as they arrive, by `raw_videos_sensor`'s per-partition runs), updates the
caches (both are incremental: unchanged captions and clips are reused), fine-tunes
the MLflow registry's champion with the last stage's config (`stdit2_stage3` with run
config `init: champion`), evaluates the result and promotes it if it beats the
champion (`eval_samples`). Earlier stages are not in the job.

Two things launch it: `retrain_schedule` (the profile's `retrain_cron`, default
Sundays 03:00, in its `retrain_timezone`, default UTC; `OPENSORA_RETRAIN_CRON` and
`OPENSORA_RETRAIN_TIMEZONE` override them) and
`orchestration.sensors.retrain_on_new_data_sensor` (when the training table changed).
Both are stopped by default: a retraining run trains a model, so turn them on in the
Dagster UI (Automation) where that is wanted.
"""

from __future__ import annotations

import os

from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from assets_defs.caches import text_embeddings, video_latents
from assets_defs.curation import training_dataset
from assets_defs.evaluation import eval_samples
from assets_defs.training import stdit2_stage3
from opensora_core.config import ProfileConfig
from orchestration.resources import active_profile

RETRAIN_CRON_ENV = "OPENSORA_RETRAIN_CRON"
RETRAIN_TIMEZONE_ENV = "OPENSORA_RETRAIN_TIMEZONE"
DEFAULT_RETRAIN_CRON = ProfileConfig.model_fields["retrain_cron"].default  # Sundays 03:00

retrain_job = define_asset_job(
    "retrain_job",
    selection=AssetSelection.assets(training_dataset, text_embeddings, video_latents, stdit2_stage3, eval_samples),
    config={"ops": {stdit2_stage3.op.name: {"config": {"init": "champion"}}}},
    description="Rebuild the training table, update the caches, fine-tune the champion with the last stage's "
                "config (stdit2_stage3), evaluate and promote if better.",
    tags={"opensora/kind": "retrain"},
)


def retrain_schedule_from_env(profile: ProfileConfig | None = None) -> ScheduleDefinition:
    """The retraining schedule with the cron of the profile named by `OPENSORA_PROFILE`,
    or of `OPENSORA_RETRAIN_CRON` when that is set (read now)."""
    profile = profile or active_profile()
    cron = os.environ.get(RETRAIN_CRON_ENV, "").strip() or profile.retrain_cron
    return ScheduleDefinition(
        name="retrain_schedule",
        job=retrain_job,
        cron_schedule=cron,
        execution_timezone=os.environ.get(RETRAIN_TIMEZONE_ENV, "").strip() or profile.retrain_timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Retrain on a cron (profile {profile.name!r}: retrain_cron, or {RETRAIN_CRON_ENV}).",
    )


retrain_schedule = retrain_schedule_from_env()
