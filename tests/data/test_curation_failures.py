"""What curation does when a step fails on one file, or the inputs are laid out badly:
the run completes, the file is accounted for with a reason, and the next run retries
what may succeed then."""

from __future__ import annotations

import json
import logging
import os

import av
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from opensora_core.cli import app
from opensora_core.curation.runner import curate
from opensora_core.curation.scoring.flow import FlowScorer
from opensora_core.data.synthetic import moving_shape_clip
from tests.data.corpus import EXPECTED, corpus_config, make_corpus


def _two_good_files(raw):
    make_corpus(raw)
    for name in set(EXPECTED) - {"red left.mp4", "two_scenes.mp4"}:
        (raw / name).unlink()
    (raw / "notes.md").unlink(missing_ok=True)


def _manifest(out, name_start: str, step: str) -> dict:
    return json.loads(next((out / "partitions").glob(f"{name_start}*/{step}/manifest.json")).read_text())


def test_a_video_the_encoder_cannot_write_is_rejected_and_the_others_kept(tmp_path, caplog):
    """16x8200 decodes (FFV1) but no clip encoder takes a frame 8200 rows tall: before,
    the error stopped the whole run and wrote no table."""
    raw = tmp_path / "raw"
    _two_good_files(raw)
    frames = np.repeat(moving_shape_clip(12, 16, 64, "red", "left"), 129, axis=1)[:, :8200]
    with av.open(str(raw / "wide.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 8200, "yuv444p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    config = corpus_config(min_flow=None)
    with caplog.at_level(logging.WARNING):
        summary = curate(raw, tmp_path / "out", config)
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert rejected["path"].tolist() == [str(raw / "wide.mkv")] and rejected["step"].tolist() == ["scene_clips"]
    assert rejected["reason"].iloc[0].startswith("cutting failed (")
    assert summary.kept == 3 and any("cutting" in r.message and "wide.mkv" in r.message for r in caplog.records)
    clips = _manifest(tmp_path / "out", "wide", "clips")
    assert clips["retry"] and not list((tmp_path / "out" / "partitions").glob("wide*/clips/*.mp4"))
    # Marked for retry: the next run cuts it again (a transient failure may pass then).
    calls = []
    from opensora_core.curation import scene_clips as clips_step

    original = clips_step._cut_and_score
    clips_step._cut_and_score = lambda *a, **k: calls.append(a[0]) or original(*a, **k)
    try:
        curate(raw, tmp_path / "out", config)
    finally:
        clips_step._cut_and_score = original
    assert len(calls) == 1  # wide.mkv only; the good files are up to date


def test_a_scorer_failing_leaves_its_values_empty_and_is_retried(tmp_path, monkeypatch, caplog):
    raw = tmp_path / "raw"
    _two_good_files(raw)

    def broken(self, batch):
        raise RuntimeError("flow exploded")

    monkeypatch.setattr(FlowScorer, "score", broken)  # while cutting and when scoring clips
    with caplog.at_level(logging.WARNING):
        summary = curate(raw, tmp_path / "out", corpus_config())
    assert any("scorer flow failed" in r.message for r in caplog.records)
    scores = _manifest(tmp_path / "out", "two_scenes", "scores")
    assert scores["retry"] and any("scorer flow failed (RuntimeError: flow exploded)" in n for n in scores["notes"])
    # No clip passes as if it had moved: each is filtered for its missing value, by name.
    filtered = pd.read_csv(tmp_path / "out" / "filtered.csv")
    assert summary.kept == 0 and len(filtered) == 3
    assert set(filtered["reason"]) == {"no flow value (filters.min_flow)"}
    assert any("scorer flow failed" in w for w in summary.warnings)
    monkeypatch.undo()
    again = curate(raw, tmp_path / "out", corpus_config())
    assert again.kept == 3 and not _manifest(tmp_path / "out", "two_scenes", "scores")["retry"]


def test_a_file_name_that_is_not_utf8_is_rejected_by_name(tmp_path):
    raw = tmp_path / "raw"
    _two_good_files(raw)
    name = os.fsdecode(b"caf\xe9 latin-1.mp4")  # bytes a Latin-1 system wrote
    (raw / "red left.mp4").rename(raw / name)
    summary = curate(raw, tmp_path / "out", corpus_config())
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert rejected["path"].tolist() == [str(raw / "caf\\xe9 latin-1.mp4")]
    assert rejected["step"].tolist() == ["raw_videos"]
    assert "not valid UTF-8" in rejected["reason"].iloc[0] and "rename" in rejected["reason"].iloc[0]
    assert summary.kept == 2


def test_hidden_media_files_are_named_in_a_warning(tmp_path, caplog):
    raw = tmp_path / "raw"
    _two_good_files(raw)
    (raw / "._red left.mp4").write_bytes(b"\0" * 64)  # macOS AppleDouble
    with caplog.at_level(logging.WARNING):
        summary = curate(raw, tmp_path / "out", corpus_config())
    assert summary.kept == 3
    assert any("1 hidden files" in r.message and "._red left.mp4" in r.message for r in caplog.records)


def test_an_output_inside_the_input_is_refused(tmp_path):
    raw = tmp_path / "raw"
    _two_good_files(raw)
    with pytest.raises(ValueError, match="inside the input folder"):
        curate(raw, raw / "curated", corpus_config())
    assert not (raw / "curated" / "meta.csv").exists()
    result = CliRunner().invoke(app, ["data", "curate", "--input", str(raw), "--out", str(raw / "curated"),
                                      "--config", "synthetic"])
    assert result.exit_code == 2 and "inside the input folder" in result.output


def test_a_sidecar_that_is_not_utf8_is_noted_once_not_retried(tmp_path):
    raw = tmp_path / "raw"
    _two_good_files(raw)
    (raw / "two_scenes.txt").write_bytes("deux scènes".encode("latin-1"))
    summary = curate(raw, tmp_path / "out", corpus_config())
    manifest = _manifest(tmp_path / "out", "two_scenes", "raw")
    assert manifest["caption"] is None and not manifest["retry"]
    assert any("not UTF-8" in note for note in manifest["probe"]["notes"])
    assert any("two_scenes.mp4" in w and "not UTF-8" in w for w in summary.warnings)
    assert any("not UTF-8" in n for n in json.loads((tmp_path / "out" / "summary.json").read_text())["notes"][
        str(raw / "two_scenes.mp4")])
