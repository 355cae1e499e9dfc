"""Reading a training table (Open-Sora-compatible `meta.csv` or `meta.parquet`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd


class TableError(ValueError):
    """A training table that is missing, or lacks columns a step needs."""


def read_training_table(path: str | Path, required: Iterable[str] = (), option: str = "--meta") -> pd.DataFrame:
    """The table at `path` (parquet by suffix, else CSV); errors name the option, the
    path and every missing column."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{option} {path}: no such file")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise TableError(f"{option} {path}: missing column(s) {', '.join(missing)}")
    return table
