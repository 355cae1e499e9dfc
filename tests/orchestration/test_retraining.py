"""Retraining wiring, in-process: the job, the cron schedule and the new-data sensor.

The retraining job itself runs in tests/orchestration/test_pipeline.py, after the
whole graph."""

from __future__ import annotations

import importlib

import pytest
import yaml
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from opensora_core.config import ConfigError
from orchestration.schedules import (
    DEFAULT_RETRAIN_CRON,
    RETRAIN_CRON_ENV,
    retrain_job,
    retrain_schedule_from_env,
)
from orchestration.sensors import retrain_on_new_data_sensor

RETRAIN_ASSETS = {"training_dataset", "text_embeddings", "video_latents", "stdit2_stage3", "eval_samples"}


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


def test_schedule_cron_comes_from_the_profile(monkeypatch, tmp_path, test_profile):
    monkeypatch.delenv(RETRAIN_CRON_ENV, raising=False)
    data = yaml.safe_load(test_profile.read_text())
    data.update(retrain_cron="15 2 * * 1-5", retrain_timezone="Europe/Berlin")
    profile = tmp_path / "weekdays.yaml"
    profile.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("OPENSORA_PROFILE", str(profile))
    schedule = retrain_schedule_from_env()
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("15 2 * * 1-5", "Europe/Berlin")
    monkeypatch.setenv(RETRAIN_CRON_ENV, "30 1 * * *")  # the variable wins over the profile
    assert retrain_schedule_from_env().cron_schedule == "30 1 * * *"

    data["retrain_cron"] = "weekly"
    profile.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="retrain_cron.*five fields"):
        retrain_schedule_from_env()


def test_schedule_rejects_a_bad_cron(monkeypatch):
    monkeypatch.setenv(RETRAIN_CRON_ENV, "every sunday")
    with pytest.raises(Exception, match="cron"):
        retrain_schedule_from_env()


def _tick(instance, cursor):
    return retrain_on_new_data_sensor(build_sensor_context(instance=instance, cursor=cursor))


def _event(instance, asset, partition=None):
    instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=partition))


def test_sensor_requests_retraining_once_per_batch_of_newly_curated_files():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("raw_videos", ["a", "b", "c"])
    nothing = _tick(instance, None)
    assert isinstance(nothing, SkipReason) and "nothing curated" in nothing.skip_message

    _event(instance, "scored_clips", "a")
    _event(instance, "scored_clips", "b")
    first = _tick(instance, None)
    assert isinstance(first, SensorResult) and len(first.run_requests) == 1
    assert first.run_requests[0].tags["opensora/new_partitions"] == "2"
    again = _tick(instance, first.cursor)  # the same files: covered by the request already made
    assert isinstance(again, SkipReason) and "since the last training" in again.skip_message

    _event(instance, "stdit2_stage3")  # trained after both curations
    assert isinstance(_tick(instance, None), SkipReason)

    _event(instance, "scored_clips", "c")
    third = _tick(instance, first.cursor)
    assert isinstance(third, SensorResult) and third.run_requests[0].tags["opensora/new_partitions"] == "1"
    assert third.run_requests[0].run_key != first.run_requests[0].run_key
    assert isinstance(_tick(instance, third.cursor), SkipReason)
