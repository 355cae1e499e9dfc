"""The MLflow calls trackers and uploads share: a client that gives up on a dead HTTP
server soon, the experiment (created once, whoever races for it), batched logging."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

# A server that does not answer its health endpoint in this time is treated as down.
PROBE_TIMEOUT_S = 5.0
# MLflow's own HTTP retries and timeouts can stall a training step for a long time;
# these tighter limits make the tracker give up on a dead server soon. Set these
# variables yourself to choose other limits.
_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
# Where `make ui` serves MLflow's UI over the embedded SQLite store.
_UI_URL_ENV = "OPENSORA_MLFLOW_UI_URL"
_DEFAULT_UI_URL = "http://127.0.0.1:5000"
# Where experiments created by the project keep their artifacts (see _artifact_location).
_ARTIFACT_ROOT_ENV = "OPENSORA_MLFLOW_ARTIFACT_ROOT"
_BATCH = 100  # MLflow's limit on params or tags per log_batch call


def _chunks(items: list, size: int = _BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def _client(uri: str, registry: bool = False):
    """A client for `uri` (and its model registry with `registry`); OSError when an HTTP
    server does not answer."""
    from mlflow.tracking import MlflowClient

    if _is_http(uri):
        for name, value in _HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        _probe(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri if registry else None)


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: `OPENSORA_MLFLOW_ARTIFACT_ROOT` when set
    (an object store such as `s3://bucket/mlflow`, which a database store such as
    PostgreSQL needs: it holds no files itself); else, for a SQLite store, beside its
    database file. MLflow's default is relative to the working directory, which differs
    between training processes; an HTTP server chooses its own."""
    root = os.environ.get(_ARTIFACT_ROOT_ENV, "").strip()
    if root:
        return root.rstrip("/")
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


def _run_url(uri: str, experiment_id: str, run_id: str, ui_url: str | None = None) -> str:
    base = uri if _is_http(uri) else ui_url or os.environ.get(_UI_URL_ENV, _DEFAULT_UI_URL)
    base = base.rstrip("/")
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
