"""MLflow tracking of one training stage: one run per stage, nested under a pipeline run.

The only module of `opensora_core` that imports mlflow. It uses `MlflowClient` only
(no global active run), so several trackers can live in one process.

Tracking never stops training. Every call is first appended to a local record
(`<local_dir>/record.jsonl`: params, tags, metrics with their steps and timestamps,
artifact paths, the final status); when the tracking store cannot be reached at the
start, or a call fails later, the tracker warns once and carries on with the record
alone. `upload_offline_record(local_dir, uri)` replays what the store missed, later,
into the same run when it exists there, else into a new one.

A profile with `mlflow_required: true` (clusters) makes an unreachable store an error
in `StageTracker.start`, before any training work: a run that must be tracked should not
spend GPU hours first. Once started, a failing store never kills the run (it falls back
to the record as above); hours of training are worth more than a live chart.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from opensora_core.utils.jsonl import append_jsonl, read_jsonl

__all__ = ["RECORD_FILE", "StageTracker", "TrackingUnavailable", "flatten_params", "upload_offline_record"]

log = logging.getLogger(__name__)

RECORD_FILE = "record.jsonl"
# A server that does not answer its health endpoint in this time is treated as down.
PROBE_TIMEOUT_S = 5.0
# HTTP stores retry for minutes by default (7 retries, 120 s timeout each); a training
# step should stall at most about a minute before the tracker gives up on the server.
# Set these variables yourself to choose other limits.
_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
# Where `make ui` serves MLflow's UI over the embedded SQLite store.
_UI_URL_ENV = "OPENSORA_MLFLOW_UI_URL"
_DEFAULT_UI_URL = "http://127.0.0.1:5000"
_PARENT_TAG = "mlflow.parentRunId"
_BATCH = 100  # MLflow's limit on params or tags per log_batch call


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached and the profile requires tracking."""


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dicts to MLflow params: `{"stage": {"lr": 1e-3}}` -> `{"stage.lr": "0.001"}`.

    Lists stay whole (as JSON), so `bucket_config.240p.16` reads `[0.5, 48]`.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple, Mapping)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = "" if value is None else str(value)
    return flat


def _chunks(items: list, size: int = _BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Record:
    """Append-only JSONL log of everything one tracker was asked to send.

    A stage that resumes in the same folder starts a new record; the previous one is
    kept as `record.<n>.jsonl` until it is uploaded with the rest.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = 0

    @classmethod
    def create(cls, directory: Path) -> _Record:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / RECORD_FILE
        if path.exists():
            n = 1
            while (directory / f"record.{n}.jsonl").exists():
                n += 1
            path.rename(directory / f"record.{n}.jsonl")
        return cls(path)

    def write(self, event: str, **fields: Any) -> int:
        """Append one event; return its sequence number within this record."""
        self.seq += 1
        append_jsonl(self.path, {"event": event, "seq": self.seq, "time_ms": int(time.time() * 1000), **fields})
        return self.seq

    def read(self) -> list[dict[str, Any]]:
        events = read_jsonl(self.path)
        self.seq = max((e["seq"] for e in events), default=0)
        return events


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _probe(uri: str) -> None:
    """Raise OSError when an HTTP tracking server does not answer at all.

    Any HTTP status counts as reachable: a server that answers 401 or 404 to the health
    endpoint is up, and MLflow's own calls will say what is wrong with them.
    """
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if _is_http(uri):
        for name, value in _HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        _probe(uri)
    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside its database file. MLflow's default is
    relative to the working directory, which differs between training processes."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return (Path(uri[len(prefix) :]).parent / "mlartifacts").resolve().as_uri()
    return None


def _experiment_id(client, uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except MlflowException:
        # Another rank or stage created it between the lookup and the create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _run_url(uri: str, experiment_id: str, run_id: str) -> str:
    base = uri.rstrip("/") if _is_http(uri) else os.environ.get(_UI_URL_ENV, _DEFAULT_UI_URL).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def _log_params_and_tags(client, run_id: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    for chunk in _chunks([Param(k, v) for k, v in params.items()]):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks([RunTag(k, v) for k, v in tags.items()]):
        client.log_batch(run_id, tags=chunk)


def _log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int, timestamp_ms: int) -> None:
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()])


class StageTracker:
    """One MLflow run for one training stage; created with :meth:`start` on rank 0."""

    def __init__(self, record: _Record, tracking_uri: str, client=None, run_id: str | None = None,
                 run_url: str | None = None) -> None:
        self._record = record
        self._uri = tracking_uri
        self._client = client
        self.run_id = run_id
        self.run_url = run_url
        self._monitor = None
        self._finished = False

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, run_name: str, params: dict, tags: dict[str, str],
              parent_run_id: str | None, local_dir: Path, required: bool = False) -> StageTracker:
        """Create the run (params flattened, tags, system metrics) or fall back to the record.

        Raises :class:`TrackingUnavailable` when the store cannot be reached and
        ``required`` is set.
        """
        record = _Record.create(Path(local_dir))
        flat, tags = flatten_params(params), {str(k): str(v) for k, v in tags.items()}
        if parent_run_id:
            tags[_PARENT_TAG] = parent_run_id
        record.write("start", tracking_uri=tracking_uri, experiment=experiment, run_name=run_name,
                     parent_run_id=parent_run_id)
        params_seq = record.write("params", params=flat)
        record.write("tags", tags=tags)
        try:
            client = _client(tracking_uri)
            experiment_id = _experiment_id(client, tracking_uri, experiment)
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        except Exception as err:  # any failure of the store means "offline"
            reason = f"{type(err).__name__}: {err}"
            if required:
                raise TrackingUnavailable(
                    f"MLflow tracking store {tracking_uri} is unreachable ({reason}); the profile requires "
                    "tracking (mlflow_required: true): start the server or fix mlflow_tracking_uri"
                ) from err
            tracker = cls(record, tracking_uri)
            tracker._go_offline(reason)
            return tracker
        record.write("run", run_id=run_id, experiment_id=experiment_id)
        tracker = cls(record, tracking_uri, client, run_id, _run_url(tracking_uri, experiment_id, run_id))
        tracker._call(params_seq, _log_params_and_tags, flat, {})
        tracker._start_system_metrics()
        return tracker

    @property
    def online(self) -> bool:
        return self._client is not None

    @property
    def local_dir(self) -> Path:
        return self._record.path.parent

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items()}
        seq = self._record.write("metrics", step=step, timestamp_ms=timestamp, metrics=values)
        self._call(seq, _log_metrics, values, step, timestamp)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path).resolve()
        seq = self._record.write("artifact", path=str(path), artifact_path=artifact_path)
        self._call(seq, lambda client, run_id: client.log_artifact(run_id, str(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        tags = {str(k): str(v) for k, v in tags.items()}
        seq = self._record.write("tags", tags=tags)
        self._call(seq, _log_params_and_tags, {}, tags)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run (`FINISHED`, `FAILED` or `KILLED`); a second call does nothing."""
        if self._finished:
            return
        self._finished = True
        if self._monitor is not None:
            self._monitor.finish()
        seq = self._record.write("finish", status=status)
        self._call(seq, lambda client, run_id: client.set_terminated(run_id, status))
        if self._client is None:
            log.warning("MLflow run not (fully) tracked; the local record is in %s. Upload it with "
                        "opensora_core.train.tracking.upload_offline_record(%r, %r)",
                        self.local_dir, str(self.local_dir), self._uri)

    def _call(self, seq: int, fn, *args) -> None:
        """Send event `seq` of the record; on failure, go offline from that event on."""
        if self._client is None:
            return
        try:
            fn(self._client, self.run_id, *args)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self._go_offline(f"{type(err).__name__}: {err}", resend_from=seq)

    def _go_offline(self, reason: str, resend_from: int = 0) -> None:
        self._client = None
        self._record.write("offline", reason=reason, resend_from=resend_from)
        log.warning("MLflow tracking at %s is unavailable (%s); training goes on and keeps a local record "
                    "in %s to upload later", self._uri, reason, self.local_dir)

    def _start_system_metrics(self) -> None:
        try:
            import psutil  # noqa: F401 - MLflow's CPU/memory monitor needs it
        except ImportError:
            log.info("system metrics off: psutil is not installed")
            self.set_tags({"opensora.system_metrics": "off: psutil not installed"})
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self._uri)
        self._monitor.start()


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


# -- comparing runs (`opensora runs compare`) ----------------------------------------
# The names below are the ones opensora_core/train/loop.py logs: tags `stage`,
# `data_snapshot` (hash of the training table) and a code version tag when one was set;
# params flattened by `flatten_params`; the latest value of each metric.

EXPERIMENT = "opensora-stdit2"  # the experiment opensora_core/train/loop.py logs to
# Tags that may carry the code version, first found wins (MLflow sets the last itself
# for runs started from a git checkout through its fluent API).
CODE_VERSION_TAGS = ("code_version", "opensora.code_version", "git_commit", "mlflow.source.git.commit")
# Column -> flattened param names, first found wins.
PARAMS = {"max_steps": ("max_steps", "stage.max_steps"), "seed": ("seed", "stage.seed"), "lr": ("stage.lr", "lr")}
METRICS = ("loss", "tokens_per_s", "grad_norm")
COLUMNS = ["run_id", "start_time", "stage", "data_snapshot", "code_version", *PARAMS, *METRICS]


def _first(mapping: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((mapping[n] for n in names if n in mapping), None)


def _number(value: str | None) -> float | int | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def compare_runs(tracking_uri: str, stage: int | None = None, last: int = 5) -> pd.DataFrame:
    """The `last` newest runs of the experiment (of one `stage` when given), newest first.

    One row per run with the columns of :data:`COLUMNS`; a value the run lacks is None
    (NaN for metrics). An experiment that does not exist yet gives an empty frame.
    """
    if last < 1:
        raise ValueError(f"last must be at least 1, got {last}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return pd.DataFrame(columns=COLUMNS)
    query = f"tags.stage = '{int(stage)}'" if stage is not None else ""
    runs = client.search_runs([experiment.experiment_id], filter_string=query, max_results=last,
                              order_by=["attributes.start_time DESC"])
    rows = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        row = {
            "run_id": run.info.run_id,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms"),
            "stage": _number(tags.get("stage")),
            "data_snapshot": tags.get("data_snapshot"),
            "code_version": _first(tags, CODE_VERSION_TAGS),
        }
        row.update({column: _number(_first(params, names)) for column, names in PARAMS.items()})
        row.update({name: metrics.get(name, math.nan) for name in METRICS})
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
