"""The per-partition tables written through Arrow are the files pandas wrote."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from opensora_core.curation.row_tables import read_rows, write_rows

# Every kind of column the curation steps write: ids and paths, counts, rates with a
# missing value (images have no fps), scores that are floats, numpy scalars, NaN or
# None, text with and without gaps, columns nothing filled, flags.
ROWS = [
    {"clip_id": "k-0000", "path": "/o/k-0000.mp4", "num_frames": 48, "fps": 24.0, "scene": 0, "flow": np.float64(1.5),
     "ocr": np.float32(0.25), "quality": 0.5, "text": "a red circle", "text_source": "sidecar", "aes": None,
     "match": None, "start_frame": 0, "mixed": 1, "flag": True, "nan_only": float("nan"), "int_gap": 3},
    {"clip_id": "k-0001", "path": "/o/k-0001.png", "num_frames": 1, "fps": float("nan"), "scene": 1, "flow": None,
     "ocr": np.float32(0.0), "quality": float("nan"), "text": None, "text_source": None, "aes": None,
     "match": None, "start_frame": 48, "mixed": 2.5, "flag": None, "nan_only": float("nan"), "int_gap": None},
]
COLUMNS = list(ROWS[0])


def _pandas_file(path, rows, columns):
    pd.DataFrame(rows, columns=columns).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("rows", [ROWS, ROWS[:1], []], ids=["two rows", "one row", "no rows"])
def test_written_like_pandas(tmp_path, rows):
    ours = tmp_path / "ours.parquet"
    write_rows(ours, rows, COLUMNS)
    theirs = _pandas_file(tmp_path / "pandas.parquet", rows, COLUMNS)
    assert pq.read_schema(ours).remove_metadata() == pq.read_schema(theirs).remove_metadata()
    assert pq.read_table(ours).to_pylist() == pq.read_table(theirs).to_pylist()
    pd.testing.assert_frame_equal(pd.read_parquet(ours), pd.read_parquet(theirs))


def test_read_rows(tmp_path):
    path = tmp_path / "t.parquet"
    write_rows(path, ROWS, COLUMNS)
    columns, rows = read_rows(path)
    assert columns == COLUMNS
    assert rows[0]["num_frames"] == 48 and rows[0]["text"] == "a red circle" and rows[0]["ocr"] == 0.25
    # Missing values come back as None, NaN included; integers with a gap as floats.
    assert rows[1]["fps"] is None and rows[1]["quality"] is None and rows[1]["text"] is None
    assert rows[0]["int_gap"] == 3.0 and isinstance(rows[0]["int_gap"], float) and rows[1]["int_gap"] is None
    assert rows[0]["nan_only"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for row in rows for v in row.values())
    # A key a row lacks is a missing value; columns keep the order given.
    write_rows(path, [{"b": 1}, {"a": "x"}], ["a", "b"])
    assert read_rows(path) == (["a", "b"], [{"a": None, "b": 1}, {"a": "x", "b": None}])


def test_duplicate_columns_named(tmp_path):
    with pytest.raises(ValueError, match="duplicate column names"):
        write_rows(tmp_path / "t.parquet", ROWS, ["clip_id", "clip_id"])
