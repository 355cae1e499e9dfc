"""The MLflow store a process talks to: a client for its tracking URI (an unreachable
server fails fast, naming the URI), the experiment (created beside a sqlite database's
artifacts, as training does) and links into the MLflow UI."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXPERIMENT = "opensora-stdit2"
DEFAULT_UI_URL = "http://127.0.0.1:5000"
REACH_TIMEOUT_S = 5


class TrackingUnreachable(ConnectionError):
    """The tracking server does not answer."""


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Raise TrackingUnreachable when an http(s) tracking server does not answer within
    `timeout` (any HTTP answer, even an error status, means a server is there)."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except OSError as err:
        raise TrackingUnreachable(f"MLflow tracking server {uri} is unreachable ({err}); start it or set the "
                                  "profile's mlflow_tracking_uri") from None


@dataclass(frozen=True)
class TrackingStore:
    tracking_uri: str
    experiment: str = DEFAULT_EXPERIMENT
    model_name: str = "stdit2"
    ui_url: str | None = None

    def client(self):
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith(("http://", "https://")):
            check_reachable(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self, client) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, as training does
            location = (Path(self.tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        if self.tracking_uri.startswith(("http://", "https://")):
            base = self.tracking_uri
        else:
            base = self.ui_url or os.environ.get("OPENSORA_MLFLOW_UI_URL", DEFAULT_UI_URL)
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
