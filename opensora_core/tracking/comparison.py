"""Comparing the runs of the experiment (`opensora runs compare`)."""

from __future__ import annotations

import math

import pandas as pd

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
