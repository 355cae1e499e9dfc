from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pytest

from opensora_core.curation import partitions, runner
from opensora_core.curation import scene_clips as clips_step
from opensora_core.curation import scored_clips as scores_step
from opensora_core.curation import training_dataset as dataset_step
from opensora_core.curation.config import OCRConfig
from opensora_core.curation.ingest import partition_key, register_inputs
from opensora_core.curation.runner import curate
from opensora_core.curation.scoring import SCORE_RANGES
from opensora_core.curation.scoring.ocr import choose_backend
from opensora_core.curation.storage import Storage
from opensora_core.curation.training_dataset import (
    OPENSORA_COLUMNS,
    apply_filters,
    training_dataset,
)
from opensora_core.data.video_io import read_frames
from tests.data.corpus import EXPECTED, corpus_config, make_corpus

HAVE_TESSERACT = choose_backend(OCRConfig())[0] is not None  # the binary or the library


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation")
    files = make_corpus(root / "raw")
    summary = curate(root / "raw", root / "out", corpus_config())
    return root, files, summary


def test_every_input_lands_in_exactly_one_table(curated):
    root, files, summary = curated
    meta = pd.read_csv(root / "out" / "meta.csv")
    rejected = pd.read_csv(root / "out" / "rejected.csv")
    kept_sources, rejected_paths = set(meta["source"]), set(rejected["path"])
    assert not kept_sources & rejected_paths
    assert kept_sources | rejected_paths == {str(p) for p in files.values()}  # notes.md is not an input
    for name, (outcome, detail) in EXPECTED.items():
        source = str(files[name])
        if outcome == "kept":
            frames = sorted(meta.loc[meta["source"] == source, "num_frames"])
            assert frames == sorted(detail), name
        else:
            row = rejected[rejected["path"] == source].iloc[0]
            assert row["step"] == detail, (name, row["reason"])
            assert isinstance(row["reason"], str) and row["reason"], name
    reasons = dict(zip(rejected["path"].map(lambda p: p.rsplit("/", 1)[-1]), rejected["reason"]))
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert "no video stream" in reasons["audio_only.mp4"]
    assert "min_frames" in reasons["one_frame.mp4"]
    assert "min_resolution" in reasons["tiny.mp4"] and "min_flow" in reasons["static.mp4"]
    assert summary.kept == len(meta) and summary.rejected == len(rejected)


def test_mp4_scenes_on_keyframes_are_copied_and_other_sources_encoded(curated):
    root, _, _ = curated
    out = Storage(root / "out")
    copied = {}
    for key in out.listdir("partitions"):
        manifest = partitions.read_manifest(out, key, "clips")
        if manifest and manifest["clips"] and "stream_copied" in manifest:
            copied[PurePosixPath(partitions.read_manifest(out, key, "raw")["path"]).name] = \
                (manifest["stream_copied"], manifest["clips"])
    # H.264 mp4 from the synthesiser: each shot starts on a keyframe. MKV is always encoded.
    assert copied["red left.mp4"] == (1, 1) and copied["odd_size.mkv"] == (0, 1)
    assert copied["two_scenes.mp4"][0] >= 1  # the first scene starts on the first keyframe
    total = clips_step.clip_origins(out, out.listdir("partitions"))
    assert total == (sum(c for c, _ in copied.values()), sum(n - c for c, n in copied.values()))
    assert total[0] >= 2 and total[1] >= 1


def test_meta_has_open_sora_columns_first_and_true_geometry(curated):
    root, files, _ = curated
    meta = pd.read_csv(root / "out" / "meta.csv")
    present = [c for c in OPENSORA_COLUMNS if c in meta.columns]
    assert list(meta.columns[: len(present)]) == present
    assert {"path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution", "flow"} <= set(present)
    assert ("ocr" in meta.columns) == HAVE_TESSERACT
    assert "aes" not in meta.columns and "match" not in meta.columns  # no CLIP weights: left out, not faked
    assert (meta["aspect_ratio"] == meta["height"] / meta["width"]).all()
    assert (meta["resolution"] == meta["height"] * meta["width"]).all()
    odd = meta[meta["source"] == str(files["odd_size.mkv"])].iloc[0]
    assert (odd["height"], odd["width"]) == (46, 64)  # 4:2:0 needs even sides
    image = meta[meta["media"] == "image"].iloc[0]
    assert image["num_frames"] == 1 and np.isnan(image["fps"]) and np.isnan(image["flow"])
    texts = dict(zip(meta["source"].map(lambda p: p.rsplit("/", 1)[-1]), meta["text"]))
    assert texts["red left.mp4"] == "a red square moving left" and texts["still.png"] == "an orange triangle"
    pd.testing.assert_frame_equal(pd.read_parquet(root / "out" / "meta.parquet").reset_index(drop=True),
                                  meta, check_dtype=False)


def test_clips_are_frame_accurate_and_scores_in_range(curated):
    root, files, _ = curated
    meta = pd.read_parquet(root / "out" / "meta.parquet")
    for row in meta[meta["media"] == "video"].itertuples():
        assert len(read_frames(row.path, 1000)) == row.num_frames == row.end_frame - row.start_frame
    two = meta[meta["source"] == str(files["two_scenes.mp4"])].sort_values("start_frame")
    assert list(zip(two["start_frame"], two["end_frame"])) == [(0, 24), (24, 48)]
    # The second scene really is the green triangle on light grey.
    first = read_frames(two.iloc[1]["path"], 1)[0]
    assert first[0, 0].mean() > 150
    for column, (low, high) in SCORE_RANGES.items():
        if column in meta:
            values = meta[column].dropna()
            assert (low is None or (values >= low).all()) and (high is None or (values <= high).all()), column


def test_rerun_reuses_partitions_and_new_file_costs_one_partition(curated, tmp_path, monkeypatch):
    root, _, _ = curated
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(root / "raw", raw)
    shutil.copytree(root / "out", out)
    calls = []
    original = clips_step.scene_clips
    monkeypatch.setattr(runner, "scene_clips", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    summary = curate(raw, out, corpus_config())  # paths differ from the first run: everything re-probed
    calls.clear()
    before = {p: p.stat().st_mtime_ns for p in (out / "partitions").rglob("*.mp4")}
    shutil.copy(raw / "red left.mp4", raw / "new.mp4")
    summary2 = curate(raw, out, corpus_config())
    assert len(calls) == 1 and calls[0].startswith("new-")
    assert {p: p.stat().st_mtime_ns for p in before} == before  # other partitions untouched
    # The same content twice gives its rows once: from the first by path, the other rejected as its duplicate.
    assert (summary2.kept, summary2.rejected) == (summary.kept, summary.rejected + 1)
    rejected = pd.read_csv(out / "rejected.csv").set_index("path")
    assert rejected.loc[str(raw / "red left.mp4"), "reason"].startswith(f"duplicate of {raw / 'new.mp4'}")



def test_threshold_on_a_column_not_computed_warns(curated):
    root, _, _ = curated
    out = Storage(root / "out")
    keys = [f.key for f in register_inputs(Storage(root / "raw"), corpus_config(), index=None)]
    summary = training_dataset(out, keys, corpus_config(min_aes=5.0))
    assert any("min_aes" in w and "not computed" in w for w in summary.warnings)
    assert summary.kept == len(pd.read_csv(root / "out" / "meta.csv"))
    table = pd.DataFrame({"media": ["video", "video", "image"], "flow": [0.5, np.nan, np.nan],
                          "num_frames": [16, 16, 1], "resolution": [4096] * 3, "text": ["a"] * 3})
    kept, filtered, warnings = apply_filters(table, corpus_config(min_flow=0.1))
    assert list(kept.index) == [0, 2] and "no flow value" in filtered.iloc[0]["reason"] and not warnings
    # Rewrite the real files as they were (this test shares the module's output).
    training_dataset(out, keys, corpus_config())


def test_partition_keys_are_ascii_and_depend_on_path_and_content():
    key = partition_key("dir/blå cirkel ä.mp4", "ab" * 32)
    assert key.startswith("bla_cirkel_a-") and key.isascii()
    assert key != partition_key("other/blå cirkel ä.mp4", "ab" * 32)
    assert key != partition_key("dir/blå cirkel ä.mp4", "cd" * 32)


def test_ocr_skipped_with_warning_when_tesseract_missing(tmp_path, monkeypatch, caplog):
    from opensora_core.curation.scoring import ocr

    # A user without root: neither the binary nor the library's language data.
    monkeypatch.setattr(ocr.shutil, "which", lambda name: None)
    monkeypatch.setattr(ocr, "TESSDATA_GLOBS", ())
    monkeypatch.delenv("TESSDATA_PREFIX", raising=False)
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in list(EXPECTED)[2:]:
        (raw / name).unlink()
    with caplog.at_level(logging.WARNING):
        summary = curate(raw, tmp_path / "out", corpus_config())
    assert any("ocr" in r.message and "tesseract" in r.message for r in caplog.records)
    assert "ocr" not in summary.columns and summary.kept == 2
    manifest = json.loads(next((tmp_path / "out" / "partitions").glob("*/scores/manifest.json")).read_text())
    assert "tesseract" in manifest["skipped"]["ocr"]
    # Installed later (same settings): the next run scores what was skipped, not only new files.
    monkeypatch.undo()
    if HAVE_TESSERACT:
        assert "ocr" in curate(raw, tmp_path / "out", corpus_config()).columns


def test_output_to_an_fsspec_object_store(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in list(EXPECTED)[1:]:
        (raw / name).unlink()
    out = Storage("memory://curation-test")
    summary = curate(raw, out, corpus_config())
    assert summary.kept == 1 and summary.rejected == 0
    meta = pd.read_csv(out.fs.open(out.path("meta.csv")))
    assert meta["path"].iloc[0].startswith("memory://") and out.fs.exists(meta["path"].iloc[0])


@pytest.mark.real_video
def test_megamind_has_four_scenes_matching_pyscenedetect(videos_dir, tmp_path):
    import scenedetect

    from opensora_core.curation.scenes.cutter import cut_scenes

    counted = []
    cut = cut_scenes(videos_dir / "Megamind.avi", tmp_path, "m", progress=counted.append)
    assert len(cut.scenes) == 4 and cut.decoded_frames == 270 and sum(counted) == 270
    theirs = [start.frame_num for start, _ in scenedetect.detect(str(videos_dir / "Megamind.avi"),
                                                                 scenedetect.AdaptiveDetector())]
    ours = [start for start, _ in cut.scenes]
    # PySceneDetect numbers frames from the first packet's timestamp; cuts agree to that offset.
    assert np.allclose(np.diff(ours), np.diff(theirs), atol=1)
    # Each scene starts on an I-frame: copied from the AVI, and its copy is the source's frames.
    source = read_frames(videos_dir / "Megamind.avi", 1000)
    assert [(c.file[-4:], c.stream_copy) for c in cut.clips] == [(".avi", True)] * 4
    for clip in cut.clips:
        frames = read_frames(tmp_path / clip.file, 1000)
        assert len(frames) == clip.num_frames and np.array_equal(frames, source[clip.start_frame : clip.end_frame])


@pytest.mark.real_video
def test_shared_videos_partly_decodable_kept_with_true_count(videos_dir, tmp_path):
    config = corpus_config(min_frames=16, min_resolution=36864)
    config.scenes.max_frames = 256
    summary = curate(videos_dir, tmp_path / "out", config)
    meta = pd.read_csv(tmp_path / "out" / "meta.csv")
    tree = meta[meta["source"].str.endswith("tree.avi")]
    assert list(tree["num_frames"]) == [68]  # the header claims 444; only 68 decode
    probe = json.loads(next((tmp_path / "out" / "partitions").glob("tree-*/raw/manifest.json")).read_text())
    assert probe["probe"]["header_frames"] == 444 and probe["probe"]["num_frames"] == 68
    mega = meta[meta["source"].str.endswith("/Megamind.avi")]
    assert sorted(mega["num_frames"]) == [46, 56, 70, 98]
    assert summary.rejected + len(set(meta["source"])) == 3


def _copy_output(root, tmp_path):
    shutil.copytree(root / "out", tmp_path / "out")
    return Storage(tmp_path / "out")


def _video_keys(out: Storage) -> list[str]:
    return sorted(k for k in out.listdir("partitions")
                  if (partitions.read_manifest(out, k, "clips") or {}).get("sample_scores"))


def test_scores_computed_while_cutting_are_reused_without_decoding(curated, tmp_path, monkeypatch):
    root, _, _ = curated
    out = _copy_output(root, tmp_path)
    keys = _video_keys(out)
    assert len(keys) >= 4  # every kept video was scored while it was cut
    expected = {"flow", "quality"} | ({"ocr"} if HAVE_TESSERACT else set())
    for key in keys:
        assert set(partitions.read_manifest(out, key, "scores")["reused"]) == expected
    before = scores_step.read_scores(out, keys[0])

    def no_decoding(*args, **kwargs):
        raise AssertionError("clips decoded although their scores are stored")

    monkeypatch.setattr(scores_step, "read_samples", no_decoding)
    manifest = scores_step.scored_clips(out, keys[0], corpus_config())
    assert set(manifest["reused"]) == expected
    pd.testing.assert_frame_equal(scores_step.read_scores(out, keys[0]), before)
    # Changed flow settings: flow is scored again by decoding the clips, the rest reused.
    monkeypatch.undo()
    config = corpus_config()
    config.scorers.flow.samples = 3
    manifest = scores_step.scored_clips(out, keys[0], config)
    assert set(manifest["reused"]) == expected - {"flow"}
    assert scores_step.read_scores(out, keys[0])["flow"].notna().all()


def _source_scores(out: Storage, key: str, config) -> tuple[pd.DataFrame, list[dict]]:
    """The stored scores of partition `key`, and the same scorers on the source's RGB frames."""
    from opensora_core.curation.scoring.base import ClipSamples
    from opensora_core.curation.scoring.flow import FlowScorer
    from opensora_core.curation.scoring.quality import QualityScorer

    stored = scores_step.read_scores(out, key)
    source = partitions.read_manifest(out, key, "raw")["source"]
    recomputed = []
    for row in stored.itertuples():
        frames = read_frames(source, row.num_frames, start=row.start_frame)
        samples = [ClipSamples(row.clip_id, row.num_frames, dict(enumerate(frames)))]
        recomputed.append({**FlowScorer(config.flow).score(samples)[0],
                           **QualityScorer(config.quality).score(samples)[0]})
    return stored, recomputed


def test_scores_while_cutting_are_the_scores_of_the_source_frames(curated):
    from opensora_core.curation.scoring.quality import QualityScorer

    root, _, _ = curated
    out = Storage(root / "out")
    for key in _video_keys(out):
        stored, recomputed = _source_scores(out, key, corpus_config().scorers)
        for row, expected in zip(stored.itertuples(), recomputed, strict=True):
            # The cutter's luma against OpenCV's grey of the RGB decode: equal but for
            # rounding and saturated colours, which Farneback on flat synthetic shapes
            # magnifies; moving and still stay apart (real footage: test below).
            assert (row.flow >= 0.02) == (expected["flow"] >= 0.02), key
            for column in QualityScorer.columns:
                assert getattr(row, column) == pytest.approx(expected[column], abs=0.03), (key, column)


@pytest.mark.real_video
def test_scores_while_cutting_real_footage(videos_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(videos_dir / "Megamind.avi", raw)
    config = corpus_config()
    curate(raw, tmp_path / "out", config)
    out = Storage(tmp_path / "out")
    (key,) = _video_keys(out)
    stored, recomputed = _source_scores(out, key, config.scorers)
    for row, expected in zip(stored.itertuples(), recomputed, strict=True):
        assert row.flow == pytest.approx(expected["flow"], rel=0.05)
        assert row.quality == pytest.approx(expected["quality"], abs=0.02)


def test_a_scorer_failing_while_cutting_is_scored_by_decoding(tmp_path, monkeypatch, caplog):
    from opensora_core.curation.scoring.quality import QualityScorer

    original = QualityScorer.score

    def fails_on_luma(self, batch):
        if any(f.ndim == 2 for clip in batch for f in clip.frames.values()):
            raise RuntimeError("boom")
        return original(self, batch)

    monkeypatch.setattr(QualityScorer, "score", fails_on_luma)
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in list(EXPECTED)[1:]:
        (raw / name).unlink()
    with caplog.at_level(logging.WARNING):
        summary = curate(raw, tmp_path / "out", corpus_config())
    assert summary.kept == 1 and any("quality failed while cutting" in r.message for r in caplog.records)
    manifest = json.loads(next((tmp_path / "out" / "partitions").glob("*/scores/manifest.json")).read_text())
    assert "quality" not in manifest["reused"] and "flow" in manifest["reused"]
    assert pd.read_csv(tmp_path / "out" / "meta.csv")["quality"].notna().all()


def test_merge_reads_partitions_as_pandas_concat_would(curated, tmp_path, monkeypatch):
    root, _, _ = curated
    out = _copy_output(root, tmp_path)
    keys = [f.key for f in register_inputs(Storage(root / "raw"), corpus_config(), index=None)]
    written = {}
    for merge in ("arrow", "pandas"):
        if merge == "pandas":
            monkeypatch.setattr(dataset_step, "_read_all_scores", lambda out, keys: pd.concat(
                [scores_step.read_scores(out, k) for k in keys], ignore_index=True))
        training_dataset(out, keys, corpus_config(min_flow=None))
        written[merge] = {name: (tmp_path / "out" / name).read_bytes()
                          for name in ("meta.csv", "filtered.csv", "rejected.csv", "summary.json")}
        written[merge]["meta.parquet"] = pd.read_parquet(tmp_path / "out" / "meta.parquet")
    pd.testing.assert_frame_equal(written["arrow"].pop("meta.parquet"), written["pandas"].pop("meta.parquet"))
    assert written["arrow"] == written["pandas"]


def test_merge_parses_only_partitions_changed_since_the_last_merge(tmp_path, monkeypatch, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from opensora_core.curation.training_dataset import (
        MERGED_SCORES,
        _MergedScores,
        _read_all_scores,
    )

    out = Storage(tmp_path)

    def put(key, columns):
        folder = tmp_path / "partitions" / key / "scores"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"partition": [key] * len(next(iter(columns.values()))), **columns}),
                       folder / "scores.parquet")

    # Types a wider partition promotes (int -> double) and a column null in one file only.
    put("p1", {"x": pa.array([1, 2], pa.int64()), "text": pa.nulls(2)})
    put("p2", {"x": pa.array([0.5], pa.float64()), "text": pa.array(["a"]), "extra": pa.array([1.0])})
    put("p3", {"x": pa.array([3], pa.int64())})
    parsed = []
    parse = _MergedScores.parse
    monkeypatch.setattr(_MergedScores, "parse", staticmethod(lambda data: parsed.append(1) or parse(data)))

    def merged_both_ways(keys):
        parsed.clear()
        cached = _read_all_scores(out, keys)
        used = len(parsed)
        (tmp_path / MERGED_SCORES).rename(tmp_path / "kept.parquet")
        fresh = _read_all_scores(out, keys)
        (tmp_path / "kept.parquet").replace(tmp_path / MERGED_SCORES)
        pd.testing.assert_frame_equal(cached, fresh)
        return cached, used

    table, used = merged_both_ways(["p1", "p2", "p3"])
    assert used == 3 and list(table["x"]) == [1.0, 2.0, 0.5, 3.0]
    put("p4", {"x": pa.array([4], pa.int64())})
    table, used = merged_both_ways(["p1", "p2", "p3", "p4"])
    assert used == 1 and len(table) == 5  # only the new partition was parsed
    table, used = merged_both_ways(["p1", "p3"])  # p2 gone: p1's ints and null text come back as they were
    assert used == 0 and table["x"].dtype == np.int64 and "extra" not in table and table["text"].isna().all()
    put("p3", {"x": pa.array([30, 31], pa.int64())})  # re-scored
    table, used = merged_both_ways(["p1", "p3"])
    assert used == 1 and list(table["x"]) == [1, 2, 30, 31]
    (tmp_path / MERGED_SCORES).write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING):
        table, used = merged_both_ways(["p1", "p3"])
    assert used == 2 and list(table["x"]) == [1, 2, 30, 31]
    assert any("unreadable" in r.message for r in caplog.records)


def test_scenes_are_cut_with_one_opencv_thread_and_the_setting_restored(curated, tmp_path, monkeypatch):
    """Cutting runs its own threads (decoding, encoding, one per scorer): OpenCV's pool
    on top oversubscribes the cores. The process's setting is restored afterwards."""
    import cv2

    from opensora_core.utils.opencv_threads import opencv_threads

    root, _, _ = curated
    out = _copy_output(root, tmp_path)
    key = _video_keys(out)[0]
    seen, cut_and_score = [], clips_step._cut_and_score

    def recording(*args, **kwargs):
        seen.append(cv2.getNumThreads())
        return cut_and_score(*args, **kwargs)

    monkeypatch.setattr(clips_step, "_cut_and_score", recording)
    before = cv2.getNumThreads()
    with opencv_threads(3):
        clips_step.scene_clips(Storage(root / "raw"), out, key, corpus_config())
        assert cv2.getNumThreads() == 3  # an enclosing setting survives the inner one
    assert seen == [clips_step.CURATION_OPENCV_THREADS] == [1]
    assert cv2.getNumThreads() == before


def test_an_edited_sidecar_caption_is_read_again_without_cutting(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in set(EXPECTED) - {"red left.mp4", "two_scenes.mp4"}:
        (raw / name).unlink()
    (raw / "two_scenes.txt").write_text("first caption")
    curate(raw, tmp_path / "out", corpus_config())
    cuts = []
    original = clips_step._cut_and_score
    monkeypatch.setattr(clips_step, "_cut_and_score", lambda *a, **k: cuts.append(a[0]) or original(*a, **k))

    def captions() -> dict[str, set]:
        meta = pd.read_csv(tmp_path / "out" / "meta.csv", keep_default_na=False)
        return {PurePosixPath(s).name: set(g["text"]) for s, g in meta.groupby("source")}

    (raw / "two_scenes.txt").write_text("an edited caption, longer")
    (raw / "red left.txt").unlink()  # the corpus's, replaced by a JSON sidecar
    (raw / "red left.json").write_text(json.dumps({"caption": "a red circle moving left"}))
    curate(raw, tmp_path / "out", corpus_config())
    assert captions() == {"two_scenes.mp4": {"an edited caption, longer"},
                          "red left.mp4": {"a red circle moving left"}}
    (raw / "two_scenes.txt").unlink()
    curate(raw, tmp_path / "out", corpus_config())
    assert captions()["two_scenes.mp4"] == {""}
    assert cuts == []  # the probe and the clips stood; only the captions were read again


def _without_sidecars(config):
    return config.model_copy(update={"scorers": config.scorers.model_copy(update={
        "captions": config.scorers.captions.model_copy(update={"sidecar": False})})})


def test_sidecar_captions_can_be_turned_off(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in set(EXPECTED) - {"red left.mp4"}:
        (raw / name).unlink()
    config = corpus_config()
    curate(raw, tmp_path / "out", config)
    assert pd.read_csv(tmp_path / "out" / "meta.csv")["text_source"].tolist() == ["sidecar"]
    curate(raw, tmp_path / "out", _without_sidecars(config))  # a scorer setting: scored again, without the sidecar
    meta = pd.read_csv(tmp_path / "out" / "meta.csv")
    assert meta["text"].isna().all() and meta["text_source"].isna().all()


def test_an_empty_model_caption_is_no_caption(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in set(EXPECTED) - {"two_scenes.mp4"}:
        (raw / name).unlink()
    config = _without_sidecars(corpus_config())
    curate(raw, tmp_path / "out", config)
    out = Storage(tmp_path / "out")
    key = _video_keys(out)[0]
    answers = iter(["", "  two   shapes \n"])
    captioning = scores_step.Captioning(model=lambda frames: [next(answers) for _ in frames])
    scores_step.scored_clips(out, key, config, captioning)
    scores = scores_step.read_scores(out, key)
    assert scores["text"].isna().tolist() == [True, False] and scores["text"].iloc[1] == "two shapes"
    assert scores["text_source"].isna().tolist() == [True, False] and scores["text_source"].iloc[1] == "model"


def test_outputs_of_an_older_probe_or_cutter_are_made_again(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    make_corpus(raw)
    for name in set(EXPECTED) - {"red left.mp4", "still.png"}:
        (raw / name).unlink()
    curate(raw, tmp_path / "out", corpus_config())
    steps = []
    for step in ("raw_videos", "scene_clips"):
        original = getattr(runner, step)
        monkeypatch.setattr(runner, step, lambda *a, _f=original, _s=step, **k: steps.append(_s) or _f(*a, **k))
    curate(raw, tmp_path / "out", corpus_config())
    assert steps == []
    monkeypatch.setattr(partitions, "CUTTER_VERSION", partitions.CUTTER_VERSION + 1)
    curate(raw, tmp_path / "out", corpus_config())
    assert steps == ["scene_clips", "scene_clips"]
    monkeypatch.setattr(partitions, "PROBE_VERSION", partitions.PROBE_VERSION + 1)
    curate(raw, tmp_path / "out", corpus_config())
    assert steps[2:] == ["raw_videos", "scene_clips"] * 2


def test_moved_folders_give_a_table_of_paths_that_are_there(tmp_path):
    """Output and input folders moved (another disk, another machine's mount): a re-run
    cuts nothing again and the table names the clips and raw files where they are now."""
    from opensora_core.data.synthetic import moving_shape_clip
    from opensora_core.data.video_io import write_video

    raw = tmp_path / "raw"
    raw.mkdir()
    write_video(raw / "a.mp4", moving_shape_clip(16, 48, 64, "red", "left", "circle", seed=0), fps=8)
    (raw / "empty.mp4").write_bytes(b"")
    curate(raw, tmp_path / "out", corpus_config())
    shutil.move(tmp_path / "out", tmp_path / "moved-out")
    shutil.move(raw, tmp_path / "moved-raw")
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        original = clips_step.scene_clips
        patch.setattr(runner, "scene_clips", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
        curate(tmp_path / "moved-raw", tmp_path / "moved-out", corpus_config())
    assert calls == []
    meta = pd.read_csv(tmp_path / "moved-out" / "meta.csv")
    assert len(meta) == 1 and meta["source"].tolist() == [str(tmp_path / "moved-raw" / "a.mp4")]
    assert meta["path"].str.startswith(str(tmp_path / "moved-out")).all() and all(map(os.path.isfile, meta["path"]))
    rejected = pd.read_csv(tmp_path / "moved-out" / "rejected.csv")
    assert rejected["path"].tolist() == [str(tmp_path / "moved-raw" / "empty.mp4")]
