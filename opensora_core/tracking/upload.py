"""Replaying a local record into a tracking store: what the store missed, later."""

from __future__ import annotations

from pathlib import Path

from opensora_core.tracking.mlflow_calls import (
    _client,
    _experiment_id,
    _log_metrics,
    _log_params_and_tags,
)
from opensora_core.tracking.record import RECORD_FILE, _Record


def upload_offline_record(local_dir: str | Path, tracking_uri: str) -> str:
    """Send what the trackers of `local_dir` recorded but the store missed; return the
    run id of the newest record.

    A run that went offline midway is completed in place when `tracking_uri` holds it;
    otherwise (never created, or another store) a new run gets the whole record. Older
    records of the folder (a resumed stage) are uploaded first. Uploading twice sends
    nothing the second time.
    """
    directory = Path(local_dir)
    current = directory / RECORD_FILE
    if not current.is_file():
        raise FileNotFoundError(f"{current}: no tracking record here")
    older = sorted(directory.glob("record.*.jsonl"), key=lambda p: int(p.name.split(".")[1]))
    for path in older:
        _upload(_Record(path), tracking_uri)
    return _upload(_Record(current), tracking_uri)


def _upload(record: _Record, tracking_uri: str) -> str:
    events = record.read()
    start = next((e for e in events if e["event"] == "start"), None)
    if start is None:
        raise ValueError(f"{record.path}: the record has no start event")
    for event in events:
        if event["event"] == "uploaded" and event["tracking_uri"] == tracking_uri:
            return event["run_id"]
    run = next((e for e in events if e["event"] == "run"), None)
    offline = next((e for e in events if e["event"] == "offline"), None)
    if offline is None and run is not None and start["tracking_uri"] == tracking_uri:
        return run["run_id"]  # fully tracked already
    missing = [e["path"] for e in events if e["event"] == "artifact" and not Path(e["path"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{record.path}: artifacts of the record are gone: {', '.join(missing)}")

    client = _client(tracking_uri)
    run_id = _existing_run(client, run, tracking_uri, start)
    if run_id is not None:
        # Params and tags are idempotent; the rest is resent from the first failed call.
        replay = [e for e in events if e["event"] in ("params", "tags") or e["seq"] >= offline["resend_from"]]
    else:
        experiment_id = _experiment_id(client, tracking_uri, start["experiment"])
        run_id = client.create_run(experiment_id, run_name=start["run_name"], start_time=start["time_ms"]).info.run_id
        replay = events
    status, end_time = "FINISHED", None
    for event in replay:
        kind = event["event"]
        if kind == "params":
            _log_params_and_tags(client, run_id, event["params"], {})
        elif kind == "tags":
            _log_params_and_tags(client, run_id, {}, event["tags"])
        elif kind == "metrics":
            _log_metrics(client, run_id, event["metrics"], event["step"], event["timestamp_ms"])
        elif kind == "artifact":
            client.log_artifact(run_id, event["path"], event["artifact_path"])
        elif kind == "finish":
            status, end_time = event["status"], event["time_ms"]
    _log_params_and_tags(client, run_id, {}, {"opensora.uploaded_from": str(record.path.resolve())})
    if end_time is None:
        status = "FAILED"  # the process ended without finishing its run (killed, crashed)
    client.set_terminated(run_id, status, end_time=end_time)
    record.write("uploaded", run_id=run_id, tracking_uri=tracking_uri)
    return run_id


def _existing_run(client, run: dict | None, tracking_uri: str, start: dict) -> str | None:
    """The run the tracker created before going offline, if this store holds it."""
    from mlflow.exceptions import MlflowException

    if run is None or start["tracking_uri"] != tracking_uri:
        return None
    try:
        return client.get_run(run["run_id"]).info.run_id
    except MlflowException:
        return None
