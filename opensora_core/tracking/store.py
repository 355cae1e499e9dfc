"""The MLflow store a process talks to: a client for its tracking and registry URI (an
unreachable server refused fast, naming the URI), the experiment (created beside a
sqlite database's artifacts, as training does) and links into the MLflow UI."""

from __future__ import annotations

from dataclasses import dataclass

from opensora_core.tracking.comparison import EXPERIMENT
from opensora_core.tracking.mlflow_calls import _client, _experiment_id, _run_url


class TrackingUnreachable(ConnectionError):
    """The tracking server does not answer."""


@dataclass(frozen=True)
class TrackingStore:
    tracking_uri: str
    experiment: str = EXPERIMENT
    model_name: str = "stdit2"
    ui_url: str | None = None  # where a non-http store's UI is served (`make ui`)

    def client(self):
        try:
            return _client(self.tracking_uri, registry=True)
        except OSError as err:
            raise TrackingUnreachable(f"MLflow tracking server {self.tracking_uri} is unreachable ({err}); start "
                                      "it or set the profile's mlflow_tracking_uri") from None

    def experiment_id(self, client) -> str:
        return _experiment_id(client, self.tracking_uri, self.experiment)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return _run_url(self.tracking_uri, experiment_id, run_id, self.ui_url)
