"""`StageTracker`: one MLflow run per training stage, falling back to its local record
when the store cannot be reached."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opensora_core.tracking.mlflow_calls import (
    _client,
    _experiment_id,
    _log_metrics,
    _log_params_and_tags,
    _run_url,
)
from opensora_core.tracking.record import _Record

log = logging.getLogger(__package__)

_PARENT_TAG = "mlflow.parentRunId"


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
                        "opensora_core.tracking.upload_offline_record(%r, %r)",
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
