"""`opensora runs compare`: the newest stage runs of the MLflow experiment side by side."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.table import Table

from opensora_core.tracking import EXPERIMENT, METRICS, PARAMS, compare_runs
from opensora_core.tracking.store import check_store_to_read


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compare_table(frame: pd.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(column, justify="right" if column in (*PARAMS, *METRICS, "stage") else "left",
                         no_wrap=column in ("run_id", "start_time"))
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    return table


def runs_compare(stage: int | None = None, last: int = 5, tracking_uri: str | None = None) -> None:
    """Print the newest stage runs side by side (the body of `opensora runs compare`);
    the tracking URI defaults to the embedded profile's."""
    if tracking_uri is None:
        from opensora_core.config import load_profile

        tracking_uri = load_profile("embedded").mlflow_tracking_uri
    check_store_to_read(tracking_uri)  # TrackingUnreachable: a store that is not there, named
    frame = compare_runs(tracking_uri, stage=stage, last=last)
    console = Console(width=max(Console().width, 200))
    if frame.empty:
        which = f"stage {stage} runs" if stage is not None else "runs"
        console.print(f"no {which} in experiment {EXPERIMENT!r} at {tracking_uri}")
        return
    scope = f"stage {stage}" if stage is not None else "all stages"
    console.print(compare_table(frame, f"{EXPERIMENT}: last {len(frame)} runs, {scope} ({tracking_uri})"))
