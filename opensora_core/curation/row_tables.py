"""Small per-partition tables (a row per clip) written and read as parquet through
Arrow directly, with the column types pandas would give them.

Each partition writes three such tables (`clips.parquet`, `sample_scores.parquet`,
`scores.parquet`) and reads two back; going through pandas cost ~6 ms a write and
~3.5 ms a read for a table of a few rows (building the DataFrame, converting it to
Arrow and back), against ~2 and ~1.5 ms through Arrow: on a small video a fifth of
its whole curation. The files stay what `DataFrame.to_parquet` wrote, column types
included (integers with a missing value become doubles, text is `large_string`, a
column with no value at all is null-typed), so `pd.read_parquet` and the merge of
the partitions read them as before (`tests/data/test_row_tables.py` compares both
writers on every kind of column).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def arrow_column(values: list) -> pa.Array:
    """`values` as the Arrow column pandas would write for them: NaN is a missing
    value (a column of NaN alone is still doubles), integers with a missing one are
    doubles, text is `large_string`."""
    array = pa.array(values, from_pandas=True)
    if pa.types.is_null(array.type) and any(isinstance(v, float) for v in values):
        return array.cast(pa.float64())
    if pa.types.is_integer(array.type) and array.null_count:
        return array.cast(pa.float64())
    if pa.types.is_string(array.type):
        return array.cast(pa.large_string())
    return array


def rows_table(rows: list[dict], columns: Sequence[str]) -> pa.Table:
    """`rows` (dicts; a key a row lacks is a missing value) as a table of `columns`."""
    return pa.table({name: arrow_column([row.get(name) for row in rows]) for name in columns})


def write_rows(path: str | Path, rows: list[dict], columns: Sequence[str]) -> None:
    """Write `rows` as the parquet file `pd.DataFrame(rows, columns=columns).to_parquet(
    path, index=False)` would write (less its pandas metadata, which only describes a
    default index)."""
    if len(set(columns)) != len(columns):
        raise ValueError(f"{path}: duplicate column names in {list(columns)}")
    pq.write_table(rows_table(rows, columns), str(path))


def read_rows(path: str | Path) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts) of a parquet file; missing values are None."""
    table = pq.read_table(str(path))
    return table.column_names, table.to_pylist()
