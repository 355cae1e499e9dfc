"""The MLflow store a process talks to: a client for its tracking and registry URI (an
unreachable server refused fast, naming the URI), the experiment (created beside a
sqlite database's artifacts, as training does) and links into the MLflow UI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opensora_core.tracking.comparison import EXPERIMENT
from opensora_core.tracking.mlflow_calls import _client, _experiment_id, _probe, _run_url


class TrackingUnreachable(ConnectionError):
    """The tracking server does not answer, or a store to read is not there."""


def check_store_to_read(uri: str) -> None:
    """Refuse, before any call, a store that reading would not find: an http(s) server
    that does not answer (a short probe instead of MLflow's long retries) or a sqlite
    database file that does not exist (MLflow would create an empty one, and a mistyped
    path would look like a store without runs)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix):])
        if not path.is_file():
            raise TrackingUnreachable(f"no MLflow database at {path} (from {uri}); check the path")
    elif uri.startswith(("http://", "https://")):
        try:
            _probe(uri)
        except OSError as err:
            raise TrackingUnreachable(f"MLflow tracking server {uri} is unreachable ({err})") from None


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
