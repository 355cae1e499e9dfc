from __future__ import annotations

import json
import socket

import pytest
from mlflow.tracking import MlflowClient

from opensora_core.tracking import (
    RECORD_FILE,
    StageTracker,
    TrackingUnavailable,
    flatten_params,
    upload_offline_record,
)

PARAMS = {"stage": {"lr": 1e-3, "bucket_config": {"32px": {1: [1.0, 8]}}, "mask_ratios": None}, "seed": 0}


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


@pytest.fixture
def closed_port_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    # Bound but not listening: a connection is refused, and no other process can take the
    # port and answer while the test runs.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def http_calls(monkeypatch):
    """Every URL opened through urllib (the tracker's probe) while the test runs."""
    import urllib.request

    opened, urlopen = [], urllib.request.urlopen

    def spy(url, *args, **kwargs):
        opened.append(url)
        return urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", spy)
    return opened


def test_flatten_params_dots_nested_keys_and_keeps_lists_whole():
    assert flatten_params(PARAMS) == {"stage.lr": "0.001", "stage.bucket_config.32px.1": "[1.0, 8]",
                                      "stage.mask_ratios": "", "seed": "0"}


def test_one_nested_run_per_stage_with_params_metrics_tags_and_artifact(tmp_path, sqlite_uri):
    parent = StageTracker.start(sqlite_uri, "opensora-test", "pipeline", {}, {}, None, tmp_path / "parent")
    tracker = StageTracker.start(sqlite_uri, "opensora-test", "stage0", PARAMS, {"stage": "0"}, parent.run_id,
                                 tmp_path / "stage0")
    for step, loss in enumerate([1.0, 0.8, 0.5], start=1):
        tracker.log_metrics({"loss": loss, "lr": 1e-3}, step)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    tracker.log_artifact(weights, "export")
    tracker.set_tags({"dcp_dir": (tmp_path / "ckpt").as_uri()})
    tracker.finish()
    parent.finish()

    client = MlflowClient(sqlite_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "stage0"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["dcp_dir"].startswith("file://") and run.data.tags["stage"] == "0"
    assert run.data.params["stage.lr"] == "0.001"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [1.0, 0.8, 0.5]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "export")] == ["export/model.safetensors"]
    # Artifacts of a SQLite store sit beside the database, not in the working directory.
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert tracker.run_url.endswith(f"/#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}")


def test_unreachable_server_keeps_a_local_record_that_uploads_later(tmp_path, closed_port_uri, sqlite_uri,
                                                                    http_calls):
    tracker = StageTracker.start(closed_port_uri, "opensora-test", "stage1", PARAMS, {"stage": "1"}, None,
                                 tmp_path / "offline")
    assert http_calls == [f"{closed_port_uri}/health"]  # one probe, then offline: no retries to wait through
    assert tracker.run_id is None and tracker.run_url is None
    tracker.log_metrics({"loss": 2.0}, 1)
    tracker.log_metrics({"loss": 1.5}, 2)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    tracker.log_artifact(weights)
    tracker.finish()
    events = [json.loads(line)["event"] for line in (tmp_path / "offline" / RECORD_FILE).read_text().splitlines()]
    assert events[:4] == ["start", "params", "tags", "offline"] and events[-1] == "finish"

    run_id = upload_offline_record(tmp_path / "offline", sqlite_uri)
    assert upload_offline_record(tmp_path / "offline", sqlite_uri) == run_id  # once only
    client = MlflowClient(sqlite_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "stage1"
    assert run.data.params["stage.lr"] == "0.001" and run.data.tags["stage"] == "1"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [2.0, 1.5]
    assert [a.path for a in client.list_artifacts(run_id)] == ["model.safetensors"]

    # The stage resumes in the same folder, still offline: a new record, a new run on upload.
    again = StageTracker.start(closed_port_uri, "opensora-test", "stage1", PARAMS, {}, None, tmp_path / "offline")
    again.log_metrics({"loss": 1.2}, 3)
    again.finish()
    assert (tmp_path / "offline" / "record.1.jsonl").is_file()
    second = upload_offline_record(tmp_path / "offline", sqlite_uri)
    assert second != run_id and [m.value for m in client.get_metric_history(second, "loss")] == [1.2]


def test_required_tracking_fails_early_naming_the_uri(tmp_path, closed_port_uri):
    with pytest.raises(TrackingUnavailable, match=f"{closed_port_uri}.*mlflow_required"):
        StageTracker.start(closed_port_uri, "opensora-test", "stage0", {}, {}, None, tmp_path, required=True)


def test_store_failing_midway_completes_the_same_run_on_upload(tmp_path, sqlite_uri, monkeypatch):
    tracker = StageTracker.start(sqlite_uri, "opensora-test", "stage2", PARAMS, {}, None, tmp_path / "rec")
    tracker.log_metrics({"loss": 1.0}, 1)

    def down(*args, **kwargs):
        raise ConnectionError("store went away")

    monkeypatch.setattr(tracker._client, "log_batch", down)
    tracker.log_metrics({"loss": 0.9}, 2)  # goes offline here, training carries on
    tracker.log_metrics({"loss": 0.7}, 3)
    tracker.finish()
    monkeypatch.undo()

    client = MlflowClient(sqlite_uri)
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [1.0]
    assert upload_offline_record(tmp_path / "rec", sqlite_uri) == tracker.run_id
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [1.0, 0.9, 0.7]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
