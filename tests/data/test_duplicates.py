"""Inputs with the same content (a download saved twice, one file under two names): the
first by path is curated, the others are rejected as its duplicates."""

from __future__ import annotations

import shutil

import pandas as pd
from PIL import Image

from opensora_core.curation.config import CurationConfig
from opensora_core.curation.runner import curate
from opensora_core.data.synthetic import moving_shape_clip, shape_image
from opensora_core.data.video_io import write_video


def _config(drop: bool = True) -> CurationConfig:
    return CurationConfig.model_validate({
        "scenes": {"min_frames": 8, "max_frames": 64},
        "scorers": {"flow": {"enabled": False}, "ocr": {"enabled": False}, "quality": {"samples": 2}},
        "filters": {"drop_duplicate_files": drop}})


def test_files_with_the_same_content_give_rows_once(tmp_path):
    raw = tmp_path / "raw"
    (raw / "copies").mkdir(parents=True)
    write_video(raw / "b.mp4", moving_shape_clip(16, 48, 64, "red", "left", "circle", seed=0), fps=8)
    write_video(raw / "other.mp4", moving_shape_clip(16, 48, 64, "blue", "up", "square", seed=1), fps=8)
    shutil.copy(raw / "b.mp4", raw / "a copy.mp4")
    shutil.copy(raw / "b.mp4", raw / "copies" / "b.mp4")
    Image.fromarray(shape_image(32, 32, "green", "triangle")).save(raw / "still.png")
    shutil.copy(raw / "still.png", raw / "still again.png")

    summary = curate(raw, tmp_path / "out", _config())
    meta = pd.read_csv(tmp_path / "out" / "meta.csv")
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv").set_index("path")
    assert sorted(meta["source"].str.rsplit("/", n=1).str[-1]) == ["a copy.mp4", "other.mp4", "still again.png"]
    assert summary.rejected == 3 and set(rejected["step"]) == {"training_dataset"}
    for duplicate, kept in (("b.mp4", "a copy.mp4"), ("copies/b.mp4", "a copy.mp4"),
                            ("still.png", "still again.png")):
        reason = rejected.loc[str(raw / duplicate), "reason"]
        assert reason.startswith(f"duplicate of {raw / kept} (same content") and "drop_duplicate_files" in reason

    # The one kept removed: a duplicate is curated in its place.
    (raw / "a copy.mp4").unlink()
    summary = curate(raw, tmp_path / "out", _config())
    meta = pd.read_csv(tmp_path / "out" / "meta.csv")
    assert str(raw / "b.mp4") in set(meta["source"]) and summary.rejected == 2

    # Switched off: every copy gives its rows.
    summary = curate(raw, tmp_path / "out", _config(drop=False))
    assert summary.rejected == 0 and pd.read_csv(tmp_path / "out" / "meta.csv")["source"].nunique() == 5


def test_rows_without_a_content_hash_are_never_duplicates():
    from opensora_core.curation.training_dataset import _drop_duplicate_files

    table = pd.DataFrame({"source": ["a", "b", "c", "d"], "source_sha256": ["x", "x", None, None],
                          "partition": ["pa", "pb", "pc", "pd"]})
    kept, rejected = _drop_duplicate_files(table)
    assert kept["source"].tolist() == ["a", "c", "d"] and [r["path"] for r in rejected] == ["b"]
    kept, rejected = _drop_duplicate_files(table[table["source"] != "b"])
    assert kept["source"].tolist() == ["a", "c", "d"] and rejected == []
