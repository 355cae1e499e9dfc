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
    kind = "Parquet" if path.suffix == ".parquet" else "CSV"
    try:
        table = pd.read_parquet(path) if kind == "Parquet" else pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as err:
        raise TableError(f"{option} {path}: not a readable {kind} table ({str(err).splitlines()[0]})") from None
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise TableError(f"{option} {path}: missing column(s) {', '.join(missing)}")
    for column in SIZE_COLUMNS:
        if column in table.columns:
            table[column] = _whole_numbers(table[column], column, f"{option} {path}")
    return table


# Columns every consumer turns into ints (buckets, windows): checked once, here.
SIZE_COLUMNS = ("num_frames", "height", "width")


def _whole_numbers(column: pd.Series, name: str, where: str) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() | (values < 1) | (values % 1 != 0)
    if bad.any():
        rows = ", ".join(f"row {i + 1}: {_shown(column.iloc[i])}" for i in bad.to_numpy().nonzero()[0][:5])
        raise TableError(f"{where}: column {name} must hold whole numbers >= 1 ({int(bad.sum())} do not; {rows})")
    return values.astype(int)


def _shown(value) -> str:
    if isinstance(value, str):
        return repr(value)
    return "empty" if pd.isna(value) else str(value)
