from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from opensora_core.cli import app


def test_buckets_command_prints_the_table_and_writes_assignments(tmp_path):
    meta = tmp_path / "meta.csv"
    pd.DataFrame({
        "path": [f"clip{i}.mp4" for i in range(6)] + ["tiny.mp4", "still.png"],
        "num_frames": [100, 100, 100, 100, 60, 60, 100, 1],
        "height": [720, 720, 480, 480, 240, 240, 64, 1024],
        "width": [1280, 1280, 854, 854, 426, 426, 64, 1024],
    }).to_csv(meta, index=False)
    out = tmp_path / "assignments.csv"
    result = CliRunner().invoke(app, ["data", "buckets", "--meta", str(meta), "--stage", "stage1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "144p" in result.output and "dropped" in result.output and "below 0.8" in result.output
    rows = pd.read_csv(out, keep_default_na=False)
    assert list(rows.columns) == ["index", "path", "resolution", "num_frames", "height", "width", "dropped_reason"]
    assert rows.loc[6, "resolution"] == "" and "below" in rows.loc[6, "dropped_reason"]
    assert rows.loc[7, "num_frames"] == "1" or rows.loc[7, "num_frames"] == 1
    placed = rows[rows["resolution"] != ""]
    assert (placed["height"].astype(int) % 16 == 0).all()


def test_buckets_command_rejects_tables_without_sizes(tmp_path):
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"path": ["a.mp4"], "num_frames": [3]}).to_csv(meta, index=False)
    result = CliRunner().invoke(app, ["data", "buckets", "--meta", str(meta), "--stage", "stage1"])
    assert result.exit_code == 2 and "height, width" in result.output
