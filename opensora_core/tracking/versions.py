"""The registered versions of a model, as the web app shows them: aliases, the scores
of the evaluation round that registered each one, and that round's preview; and the
files of one version, downloaded once into a local folder."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from opensora_core.tracking.mlflow_calls import _client
from opensora_core.tracking.registry import CHAMPION, DEFAULT_MODEL_NAME

# The evaluation round's scores, in the order the app shows them (eval/round.py logs them
# as metrics of the run tagged `model_version`).
VERSION_SCORES = ("prompt_following", "color_accuracy", "direction_accuracy", "diversity", "clip_score")
PREVIEW = "eval/preview.gif"


@dataclass(frozen=True)
class VersionInfo:
    version: int
    aliases: tuple[str, ...]
    source: str
    run_id: str | None
    eval_run_id: str | None  # the evaluation round that registered it, when found
    scores: dict[str, float] = field(default_factory=dict)
    decision: str | None = None  # promotion.decision

    @property
    def is_champion(self) -> bool:
        return CHAMPION in self.aliases

    def label(self) -> str:
        marks = f" ({', '.join(self.aliases)})" if self.aliases else ""
        return f"v{self.version}{marks}"


def _eval_runs(client, version_numbers: list[int]) -> dict[int, object]:
    """version -> the newest run tagged `model_version` = it (record_round tags the round)."""
    from mlflow.entities import ViewType

    found: dict[int, object] = {}
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments or not version_numbers:
        return found
    # MLflow's search has no IN for tags: every round (stage "eval"), matched here.
    runs = client.search_runs(experiments, filter_string="tags.stage = 'eval'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    wanted = {str(v) for v in version_numbers}
    for run in runs:
        number = run.data.tags.get("model_version")
        if number in wanted:
            found.setdefault(int(number), run)
    return found


def list_versions(tracking_uri: str, model_name: str = DEFAULT_MODEL_NAME) -> list[VersionInfo]:
    """Every version of `model_name`, newest first ([] when it is not registered), with
    the scores of its evaluation round (the version's `eval.<metric>` tag where the
    round's run is gone)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri, registry=True)
    try:
        aliases = client.get_registered_model(model_name).aliases or {}
    except MlflowException:
        return []
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(int(number), []).append(alias)
    versions = client.search_model_versions(f"name = '{model_name}'")
    rounds = _eval_runs(client, [int(v.version) for v in versions])
    infos = []
    for v in versions:
        number = int(v.version)
        run = rounds.get(number)
        tags = v.tags or {}
        if run is not None:
            scores = {k: float(run.data.metrics[k]) for k in VERSION_SCORES if k in run.data.metrics}
        else:
            scores = {k.removeprefix("eval."): float(value) for k, value in tags.items()
                      if k.startswith("eval.") and k != "eval.metric"}
        infos.append(VersionInfo(number, tuple(sorted(by_version.get(number, []))), v.source, v.run_id,
                                 None if run is None else run.info.run_id,
                                 {k: s for k, s in scores.items() if not math.isnan(s)},
                                 tags.get("promotion.decision")))
    return sorted(infos, key=lambda info: -info.version)


def download_preview(tracking_uri: str, eval_run_id: str, destination: Path) -> Path | None:
    """The round's `preview.gif` (every prompt of seed 0, side by side) as
    `destination`, downloaded once; None when the round logged none."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    destination = Path(destination)
    if destination.is_file():
        return destination
    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=eval_run_id, artifact_path=PREVIEW,
                                                    dst_path=str(staging), tracking_uri=tracking_uri)
        os.replace(local, destination)
    except (MlflowException, OSError):
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def version_run_id(tracking_uri: str, version: int, model_name: str = DEFAULT_MODEL_NAME) -> str | None:
    """The run `version` was registered from ("" when none); None when the registry no
    longer holds it (a local copy outlives a deleted version)."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client(tracking_uri, registry=True).get_model_version(model_name, str(version))
    except MlflowException:
        return None
    return found.run_id or ""
