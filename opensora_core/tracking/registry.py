"""Promotion in the MLflow model registry: register a run's exported model as a new
version of `stdit2` and move the alias `champion` to it only if its evaluation score
beats the current champion's.

Scores are stored on each version as the tag `eval.<metric>`; a version that is not
promoted gets the alias `challenger`. mlflow is imported inside the functions: importing
this module costs nothing.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from opensora_core.tracking.mlflow_calls import _client

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_MODEL_NAME = "stdit2"


def score_tag(metric: str) -> str:
    return f"eval.{metric}"


def _source(client, run_id: str, artifact_path_or_model_uri: str) -> str:
    """A full URI (`runs:/`, `models:/`, `file:`, `s3://`...) as given; a relative
    artifact path joined onto the run's artifact URI."""
    if "://" in artifact_path_or_model_uri or artifact_path_or_model_uri.startswith(("runs:/", "models:/", "file:")):
        return artifact_path_or_model_uri
    base = client.get_run(run_id).info.artifact_uri.rstrip("/")
    return f"{base}/{artifact_path_or_model_uri.lstrip('/')}"


def _current_champion(client, model_name: str, metric: str) -> tuple[object | None, int | None, float | None]:
    """(the champion version, its number, its `metric` score) of `model_name`, created
    empty when it is not registered yet; Nones where there is no champion or score."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="STDiT-2 text-to-video exports")
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None, None, None
    raw = (champion.tags or {}).get(score_tag(metric))
    return champion, int(champion.version), float(raw) if raw is not None else None


def promote_if_better(
    tracking_uri: str,
    model_name: str = DEFAULT_MODEL_NAME,
    run_id: str | None = None,
    artifact_path_or_model_uri: str = "export",
    score: float = float("nan"),
    metric: str = "color_accuracy",
    floor: float | None = None,
) -> dict:
    """Register a new version from `run_id`'s artifact (by default the stage's `export/`
    folder: weights, config and a trained text encoder), tag it with `score`, and move
    `champion` to it when there is no champion yet or `score` is strictly higher than
    the champion's. Returns `decision` ("promoted" or "kept"), `new_version`,
    `new_score`, `champion_version` and `champion_score` (the champion before this
    call; None when there was none). With `floor` (e.g. chance on the prompt set), a
    score not above it is never promoted, even with no champion: decision "below floor"."""

    if run_id is None:
        raise ValueError("run_id is required")
    score = float(score)
    if math.isnan(score):
        raise ValueError(f"cannot promote on a NaN {metric}")
    client = _client(tracking_uri, registry=True)
    champion, champion_version, champion_score = _current_champion(client, model_name, metric)

    source = _source(client, run_id, artifact_path_or_model_uri)
    version = client.create_model_version(model_name, source, run_id=run_id,
                                          tags={score_tag(metric): repr(score), "eval.metric": metric})
    new_version = int(version.version)
    above_floor = floor is None or score > floor
    better = above_floor and (champion is None or champion_score is None or score > champion_score)
    if better:
        client.set_registered_model_alias(model_name, CHAMPION, str(new_version))
        decision = "promoted"
    else:
        client.set_registered_model_alias(model_name, CHALLENGER, str(new_version))
        decision = "kept" if above_floor else "below floor"
    client.set_model_version_tag(model_name, str(new_version), "promotion.decision", decision)
    return {
        "decision": decision,
        "new_version": new_version,
        "new_score": score,
        "champion_version": champion_version,
        "champion_score": champion_score,
        "metric": metric,
        "source": source,
        "floor": floor,
    }


def champion(tracking_uri: str, model_name: str = DEFAULT_MODEL_NAME):
    """The model version under the alias `champion`, or None when there is none (or no
    registered model of that name yet)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri, registry=True)
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def download_champion(tracking_uri: str, destination: Path, model_name: str = DEFAULT_MODEL_NAME) -> tuple[Path, int]:
    """Download the champion's files into `destination` (replaced whole, atomically) and
    return the path of its `model.safetensors` and the version number.

    Raises LookupError when there is no champion, FileNotFoundError when its files hold
    no `model.safetensors`.
    """
    version = champion(tracking_uri, model_name)
    if version is None:
        raise LookupError(f"model {model_name!r} has no {CHAMPION!r} alias in the MLflow registry at {tracking_uri}; "
                          "run eval_samples once (it registers and promotes the first version)")
    return _download(tracking_uri, version, Path(destination), model_name), int(version.version)


def download_version(tracking_uri: str, version: int, destination: Path, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    """Download version `version`'s files into `destination` (replaced whole, atomically);
    the path of its `model.safetensors`. LookupError when there is no such version."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri, registry=True)
    try:
        found = client.get_model_version(model_name, str(version))
    except MlflowException:
        raise LookupError(f"model {model_name!r} has no version {version} in the MLflow registry at "
                          f"{tracking_uri}") from None
    return _download(tracking_uri, found, Path(destination), model_name)


def _download(tracking_uri: str, version, destination: Path, model_name: str) -> Path:
    import mlflow.artifacts

    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(staging),
                                                     tracking_uri=tracking_uri))
    folder = local if local.is_dir() else local.parent
    if not (folder / "model.safetensors").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise FileNotFoundError(f"{model_name} version {version.version} ({version.source}) holds no model.safetensors")
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(folder, destination)
    shutil.rmtree(staging, ignore_errors=True)
    return destination / "model.safetensors"
