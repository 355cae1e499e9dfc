"""The one Definitions object: `dagster dev -m orchestration.definitions`.

Executor: the multiprocess executor on one machine (steps of a run in parallel
processes; partitions run as separate runs, as many at a time as the run coordinator
allows). `OPENSORA_DAGSTER_EXECUTOR=k8s` switches to dagster-k8s's `k8s_job_executor`:
one pod per step, so each partition's curation runs in its own pods; configure its
image and resources under `execution.config` of the run (see
`configs/data/k8s_executor.yaml`). Storage roots are fsspec URLs (see
`CurationStorage`), so pods need no shared disk.
"""

from __future__ import annotations

import os

from dagster import Definitions, multiprocess_executor

from assets_defs.caches import cache_assets, cache_checks
from assets_defs.curation import curation_assets, curation_checks
from assets_defs.evaluation import evaluation_assets
from assets_defs.training import training_assets, training_checks
from opensora_core.config import ProfileConfig
from orchestration.resources import (
    active_profile,
    cache_settings_from_env,
    curation_storage_from_env,
    evaluation_settings_from_env,
    mlflow_tracking_from_env,
    torchx_launcher_from_env,
    training_settings_from_env,
)
from orchestration.schedules import retrain_job, retrain_schedule_from_env
from orchestration.sensors import (
    curate_partition_job,
    raw_videos_sensor,
    retrain_on_new_data_sensor,
)


def executor_from_env():
    kind = os.environ.get("OPENSORA_DAGSTER_EXECUTOR", "multiprocess")
    if kind == "multiprocess":
        return multiprocess_executor.configured({"max_concurrent": int(os.environ.get("OPENSORA_MAX_CONCURRENT", "0"))})
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as err:
            raise RuntimeError("OPENSORA_DAGSTER_EXECUTOR=k8s needs dagster-k8s (pip install dagster-k8s)") from err
        return k8s_job_executor
    raise ValueError(f"OPENSORA_DAGSTER_EXECUTOR={kind!r}: expected 'multiprocess' or 'k8s'")


def resources_from_env(profile: ProfileConfig | None = None) -> dict:
    """Every resource, configured from the profile (loaded once) and environment
    variables read now."""
    profile = profile or active_profile()
    return {
        "curation_storage": curation_storage_from_env(profile),
        "cache_settings": cache_settings_from_env(profile),
        "training_settings": training_settings_from_env(profile),
        "torchx_launcher": torchx_launcher_from_env(profile),
        "mlflow_tracking": mlflow_tracking_from_env(profile),
        "evaluation_settings": evaluation_settings_from_env(profile),
    }


def build_definitions() -> Definitions:
    """The code location, configured from the environment as it is now (the demo and
    tests set variables first; `dagster dev` reads them at load)."""
    profile = active_profile()  # read once for every resource and the schedule
    return Definitions(
        assets=[*curation_assets, *cache_assets, *training_assets, *evaluation_assets],
        asset_checks=[*curation_checks, *cache_checks, *training_checks],
        jobs=[curate_partition_job, retrain_job],
        schedules=[retrain_schedule_from_env(profile)],
        sensors=[raw_videos_sensor, retrain_on_new_data_sensor],
        resources=resources_from_env(profile),
        executor=executor_from_env(),
    )


defs = build_definitions()
