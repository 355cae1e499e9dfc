"""Training tables that cannot be read, or whose sizes are not whole numbers, are refused
by name (exit 2 on the command line) before any work."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from opensora_core import cli
from opensora_core.data.meta import TableError, read_training_table

COLUMNS = ("num_frames", "height", "width")


def _csv(tmp_path, rows, name="meta.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_sizes_must_be_whole_numbers_and_the_bad_rows_are_named(tmp_path):
    good = {"path": "a.mp4", "text": "x", "num_frames": 16, "height": 64, "width": 64}
    table = read_training_table(_csv(tmp_path, [good, {**good, "num_frames": 8.0}]), COLUMNS)
    assert table["num_frames"].tolist() == [16, 8] and table["num_frames"].dtype.kind == "i"
    bad = _csv(tmp_path, [good, {**good, "num_frames": "many"}, {**good, "num_frames": None}], "bad.csv")
    with pytest.raises(TableError, match=r"column num_frames must hold whole numbers >= 1 \(2 do not; "
                                         r"row 2: 'many', row 3: empty\)"):
        read_training_table(bad, COLUMNS)
    with pytest.raises(TableError, match="column height"):
        read_training_table(_csv(tmp_path, [{**good, "height": 0}], "zero.csv"), COLUMNS)


def test_empty_and_binary_files_are_not_readable_tables(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "noise.parquet").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(TableError, match="empty.csv: not a readable CSV table"):
        read_training_table(tmp_path / "empty.csv")
    with pytest.raises(TableError, match="noise.parquet: not a readable Parquet table"):
        read_training_table(tmp_path / "noise.parquet")


def test_data_buckets_exits_2_on_a_table_with_text_sizes(tmp_path):
    meta = _csv(tmp_path, [{"path": "a.mp4", "text": "x", "num_frames": "n/a", "height": 64, "width": 64}])
    result = CliRunner().invoke(cli.app, ["data", "buckets", "--meta", str(meta), "--stage", "tiny/stage1"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "column num_frames must hold whole numbers >= 1 (1 do not; row 1: empty)" in output
