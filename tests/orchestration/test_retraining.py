"""Retraining wiring, in-process: the job, the cron schedule and the new-data sensor.

The retraining job itself is not run here (it trains a model); its assets are
covered by the curation, cache and training asset tests.
"""

from __future__ import annotations

import importlib

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, SensorResult, SkipReason, build_sensor_context

from orchestration.resources import CurationStorage
from orchestration.schedules import (
    DEFAULT_RETRAIN_CRON,
    RETRAIN_CRON_ENV,
    retrain_job,
    retrain_schedule_from_env,
)
from orchestration.sensors import retrain_on_new_data_sensor, table_digest

RETRAIN_ASSETS = {"training_dataset", "text_embeddings", "video_latents", "stdit2_stage3"}


def test_definitions_hold_the_retraining_job_schedule_and_sensor():
    from orchestration.definitions import defs

    job = defs.resolve_job_def("retrain_job")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == RETRAIN_ASSETS
    assert AssetKey("stdit2_stage2") not in job.asset_layer.executable_asset_keys
    schedule = defs.resolve_schedule_def("retrain_schedule")
    assert schedule.job_name == "retrain_job"
    sensor = defs.resolve_sensor_def("retrain_on_new_data_sensor")
    assert sensor.job_name == "retrain_job"
    # The existing ones are still there.
    assert defs.resolve_sensor_def("raw_videos_sensor").job_name == "curate_partition"
    assert defs.resolve_job_def("curate_partition") is not None


def test_schedule_cron_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(RETRAIN_CRON_ENV, raising=False)
    assert retrain_schedule_from_env().cron_schedule == DEFAULT_RETRAIN_CRON == "0 3 * * 0"
    monkeypatch.setenv(RETRAIN_CRON_ENV, "30 1 * * *")
    schedule = retrain_schedule_from_env()
    assert schedule.cron_schedule == "30 1 * * *" and schedule.job_name == retrain_job.name
    from orchestration import definitions

    try:
        importlib.reload(definitions)
        assert definitions.defs.resolve_schedule_def("retrain_schedule").cron_schedule == "30 1 * * *"
    finally:
        monkeypatch.delenv(RETRAIN_CRON_ENV, raising=False)
        importlib.reload(definitions)
    assert definitions.defs.resolve_schedule_def("retrain_schedule").cron_schedule == DEFAULT_RETRAIN_CRON


def test_schedule_rejects_a_bad_cron(monkeypatch):
    monkeypatch.setenv(RETRAIN_CRON_ENV, "every sunday")
    with pytest.raises(Exception, match="cron"):
        retrain_schedule_from_env()


def _tick(instance, storage, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"curation_storage": storage})
    return retrain_on_new_data_sensor(context)


def _write_table(path, captions):
    pd.DataFrame({"path": [f"clip{i}.mp4" for i in range(len(captions))], "text": captions}).to_parquet(path)


def test_sensor_requests_retraining_once_per_table_version(tmp_path):
    curated = tmp_path / "curated"
    storage = CurationStorage(raw_root=str(tmp_path / "raw"), curated_root=str(curated))
    instance = DagsterInstance.ephemeral()

    result = _tick(instance, storage, None)  # no curated folder at all
    assert isinstance(result, SkipReason) and "meta.parquet" in result.skip_message
    curated.mkdir()
    assert isinstance(_tick(instance, storage, None), SkipReason)  # folder, no table

    _write_table(curated / "meta.parquet", ["a red square", "a blue circle"])
    first = _tick(instance, storage, None)
    assert isinstance(first, SensorResult) and len(first.run_requests) == 1
    digest = table_digest(storage)
    assert first.cursor == digest
    assert first.run_requests[0].run_key == f"retrain-{digest}"
    assert first.run_requests[0].tags["opensora/data_snapshot"] == digest

    again = _tick(instance, storage, first.cursor)
    assert isinstance(again, SkipReason) and "unchanged" in again.skip_message

    # Rewritten with the same content: still the same table, no new run.
    _write_table(curated / "meta.parquet", ["a red square", "a blue circle"])
    assert isinstance(_tick(instance, storage, first.cursor), SkipReason)

    _write_table(curated / "meta.parquet", ["a red square", "a blue circle", "a green square"])
    changed = _tick(instance, storage, first.cursor)
    assert isinstance(changed, SensorResult) and len(changed.run_requests) == 1
    assert changed.cursor != first.cursor and changed.cursor == table_digest(storage)
    assert changed.run_requests[0].run_key != first.run_requests[0].run_key
    assert isinstance(_tick(instance, storage, changed.cursor), SkipReason)
