from __future__ import annotations

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from opensora_core.curation.captions import CaptionTable, read_sidecar
from opensora_core.curation.config import OCRConfig
from opensora_core.curation.scoring.base import ClipSamples, pair_positions, spread_positions
from opensora_core.curation.scoring.flow import FlowScorer, flow_magnitude
from opensora_core.curation.scoring.quality import frame_quality
from opensora_core.curation.storage import Storage
from opensora_core.data.synthetic import moving_shape_clip


def test_sample_positions_spread_over_the_clip():
    assert spread_positions(100, 4) == [12, 37, 62, 87]
    assert spread_positions(2, 5) == [0, 1]
    assert pair_positions(1, 3) == [] and max(pair_positions(10, 3)) <= 8


def test_flow_separates_motion_from_stillness():
    moving = moving_shape_clip(6, 64, 64, "red", "right", speed=3)
    still = np.repeat(moving[:1], 6, axis=0)
    assert flow_magnitude(moving[0], moving[1]) > 0.3
    assert flow_magnitude(still[0], still[1]) < 0.01
    faster = moving_shape_clip(6, 64, 64, "red", "right", speed=6)
    scorer = FlowScorer.__new__(FlowScorer)
    from opensora_core.curation.config import FlowConfig

    scorer.config = FlowConfig(samples=2)
    rows = []
    for clip in (moving, faster):
        samples = ClipSamples("c", 6, {i: f for i, f in enumerate(clip)})
        rows += scorer.score([samples])
    assert rows[1]["flow"] > rows[0]["flow"] * 1.5


def test_flow_is_reported_at_the_reference_size_whatever_the_analysis_size():
    # A smooth texture on a 512 px frame shifted by 8 px: 4 px/frame at the 256 px reference.
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (512, 512), dtype=np.uint8), (0, 0), 6)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    a, b = texture[:, 16:-16], texture[:, 8:-24]  # b is a shifted 8 px (scene moves left)
    for size in (64, 128, 256):
        assert flow_magnitude(a, b, size) == pytest.approx(4.0, rel=0.2), size


def test_quality_penalises_black_and_blurred_frames():
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(textured, (0, 0), 6)
    black = np.zeros_like(textured)
    q = {name: frame_quality(f) for name, f in (("textured", textured), ("blurred", blurred), ("black", black))}
    assert q["black"]["quality"] == 0
    assert q["textured"]["quality_sharpness"] > q["blurred"]["quality_sharpness"]
    assert all(0 <= v <= 1 for row in q.values() for v in row.values())


def test_luma_views_outlive_their_frames(tmp_path):
    """`frame_luma` keeps a view of the decoder's buffer, not a copy: the view must
    still hold the frame's pixels once the frame is dropped and decoding goes on."""
    import gc

    from opensora_core.curation.scoring.base import frame_luma, plane_view
    from opensora_core.data.video_io import write_video

    rng = np.random.default_rng(3)
    path = write_video(tmp_path / "noise.mp4", rng.integers(0, 256, (40, 64, 96, 3), dtype=np.uint8), fps=24)
    with av.open(str(path)) as container:
        frames = container.decode(video=0)
        first = next(frames)
        luma, _ = frame_luma(first, 640)
        expected = plane_view(first, 0).copy()
        assert not luma.flags.owndata  # a view, as the cost of the cut assumes
        del first
        gc.collect()
        rest = list(frames)  # the decoder reuses whatever buffers were freed
    assert len(rest) == 39
    np.testing.assert_array_equal(luma, expected)


def test_quality_is_its_definition_in_numpy():
    """OpenCV's one-pass statistics give the numbers of the definition (float64
    Laplacian variance, NumPy mean, std and in-range fraction), on frames of every
    kind: RGB and luma, larger than the analysis size (resized), odd sizes, clipped."""
    import math

    from opensora_core.curation.scoring.base import shrink

    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (375, 501), dtype=np.uint8)
    frames = [noise, cv2.GaussianBlur(noise, (0, 0), 2), rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8),
              np.clip(rng.normal(240, 30, (99, 131)), 0, 255).astype(np.uint8), np.full((64, 48), 3, np.uint8)]
    for frame in frames:
        gray = shrink(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame, 512)
        assert max(gray.shape) == min(512, max(frame.shape[:2]))
        sharpness = 1 - math.exp(-cv2.Laplacian(gray, cv2.CV_64F).var() / 100)
        exposure = max(0.0, 1 - abs(gray.mean() / 255 - 0.5) * 2) * ((gray >= 5) & (gray <= 250)).mean()
        contrast = min(1.0, gray.std() / 64)
        got = frame_quality(frame)
        expected = {"quality_sharpness": sharpness, "quality_exposure": exposure, "quality_contrast": contrast,
                    "quality": (sharpness * exposure * contrast) ** (1 / 3)}
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), frame.shape


def _ocr_backends() -> list:
    from opensora_core.curation.scoring.ocr import library_missing, tesseract_missing

    return [pytest.param("cli", marks=pytest.mark.skipif(tesseract_missing() is not None,
                                                         reason=str(tesseract_missing()))),
            pytest.param("library", marks=pytest.mark.skipif(library_missing(OCRConfig()) is not None,
                                                             reason=str(library_missing(OCRConfig()))))]


def _text_frames() -> list[np.ndarray]:
    text = np.full((240, 320, 3), 255, np.uint8)
    cv2.putText(text, "HELLO WORLD", (10, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 3)
    title = np.full((240, 320, 3), 30, np.uint8)
    cv2.putText(title, "THE END", (30, 140), cv2.FONT_HERSHEY_DUPLEX, 2.0, (250, 250, 250), 4)
    blank = np.full((240, 320, 3), 90, np.uint8)
    return [blank, text, blank, title]


@pytest.mark.parametrize("backend", _ocr_backends())
def test_ocr_coverage_finds_text_and_keeps_frames_apart(backend):
    from opensora_core.curation.scoring.ocr import text_coverage

    coverage = text_coverage(_text_frames(), OCRConfig(backend=backend), backend)
    assert coverage[0] == 0 and coverage[2] == 0
    assert 0.02 < coverage[1] < 0.5
    assert coverage[3] > coverage[1]  # bigger letters cover more of the frame


@pytest.mark.skipif(any(m.args[0] for p in _ocr_backends() for m in p.marks), reason="needs both OCR backends")
def test_ocr_library_and_binary_read_the_same_boxes():
    from opensora_core.curation.scoring.ocr import text_coverage

    frames = _text_frames()
    library = text_coverage(frames, OCRConfig(), "library")
    binary = text_coverage(frames, OCRConfig(), "cli")
    assert library == pytest.approx(binary, abs=0.01)


@pytest.mark.skipif(any(m.args[0] for p in _ocr_backends()[1:] for m in p.marks), reason="needs tesserocr")
def test_ocr_library_engines_serve_threads_one_at_a_time():
    from concurrent.futures import ThreadPoolExecutor

    from opensora_core.curation.scoring import ocr

    frames = _text_frames()
    alone = ocr.text_coverage(frames, OCRConfig(), "library")
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: ocr.text_coverage(frames, OCRConfig(), "library"), range(6)))
    assert all(t == alone for t in together)
    engines = [e for idle in ocr._IDLE_ENGINES.values() for e in idle]
    assert 1 <= len(engines) <= 3 and len({id(e) for e in engines}) == len(engines)


def test_ocr_backend_choice_names_what_is_missing(tmp_path, monkeypatch):
    from opensora_core.curation.scoring import ocr

    monkeypatch.delenv("TESSDATA_PREFIX", raising=False)
    empty = tmp_path / "tessdata"
    empty.mkdir()
    backend, why = ocr.choose_backend(OCRConfig(backend="library", tessdata=str(empty)))
    assert backend is None and "eng.traineddata" in why and str(empty) in why
    (empty / "eng.traineddata").write_bytes(b"")
    assert ocr.find_tessdata("eng", str(empty)) == empty
    assert ocr.find_tessdata("eng+deu", str(empty)) is None  # every language must be there
    monkeypatch.setenv("TESSDATA_PREFIX", str(empty))
    assert ocr.find_tessdata("eng") == empty

    def no_tesserocr():
        raise ImportError("No module named 'tesserocr'")

    monkeypatch.setattr(ocr, "_import_tesserocr", no_tesserocr)
    backend, why = ocr.choose_backend(OCRConfig(backend="library"))
    assert backend is None and "tesserocr is not installed" in why
    monkeypatch.setattr(ocr.shutil, "which", lambda name: None)
    backend, why = ocr.choose_backend(OCRConfig())
    assert backend is None and "tesserocr" in why and "tesseract binary" in why
    scorer = ocr.OCRScorer(OCRConfig())
    assert scorer.unavailable() == why


@pytest.mark.skipif(any(m.args[0] for p in _ocr_backends()[:1] for m in p.marks), reason="needs the tesseract binary")
def test_ocr_language_without_data_is_named_not_run():
    from opensora_core.curation.scoring import ocr

    backend, why = ocr.choose_backend(OCRConfig(lang="eng+xx", backend="cli"))
    assert backend is None and "no language data for xx" in why and "tesseract-ocr-xx" in why
    backend, why = ocr.choose_backend(OCRConfig(lang="xx"))
    assert backend is None and "xx.traineddata" in why and "language data for xx" in why
    assert ocr.OCRScorer(OCRConfig(lang="xx")).unavailable() == why
    assert ocr.choose_backend(OCRConfig(lang="eng", backend="cli")) == ("cli", None)


def test_ocr_scorer_version_and_batching_follow_its_backend(monkeypatch):
    from opensora_core.curation.scoring import ocr

    monkeypatch.setattr(ocr, "choose_backend", lambda config: ("cli", None))
    binary = ocr.OCRScorer(OCRConfig())
    monkeypatch.setattr(ocr, "choose_backend", lambda config: ("library", None))
    library = ocr.OCRScorer(OCRConfig())
    # Scores of the two are not mixed, and only the binary pays a start-up per call.
    assert binary.fingerprint() != library.fingerprint()
    assert binary.batched and not library.batched


def test_captions_from_sidecars_and_imported_tables(tmp_path):
    (tmp_path / "a.txt").write_text("  a red\ncircle  \n")
    (tmp_path / "b.json").write_text('{"caption": "a blue square"}')
    storage = Storage(tmp_path)
    assert read_sidecar(storage, "a.mp4") == "a red circle"
    assert read_sidecar(storage, "b.mp4") == "a blue square"
    assert read_sidecar(storage, "c.mp4") is None
    pd.DataFrame({"path": ["/data/x/a.mp4"], "text": ["opensora caption"]}).to_csv(tmp_path / "os.csv", index=False)
    table = CaptionTable.from_csv(tmp_path / "os.csv")
    assert table.lookup("raw/a.mp4", "clip-0.mp4", 0, 1) == "opensora caption"
    pd.DataFrame({"videoID": ["vid"], "timestamp": ["[['0:00:00.000', '0:00:04.000'], ['0:00:04.000', '0:00:09.500']]"],
                  "caption": ["['first part', 'second part']"]}).to_csv(tmp_path / "panda.csv", index=False)
    panda = CaptionTable.from_csv(tmp_path / "panda.csv")
    assert panda.layout == "panda70m"
    assert panda.lookup("dir/vid.mp4", "c.mp4", 3.5, 8.0) == "second part"
    assert panda.lookup("dir/vid.mp4", "c.mp4", 0.0, 3.0) == "first part"
    assert panda.lookup("dir/other.mp4", "c.mp4", 0.0, 3.0) is None
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="Panda-70M"):
        CaptionTable.from_csv(tmp_path / "bad.csv")


def _two_shots(path, n=24):
    from opensora_core.data.video_io import write_video

    frames = np.concatenate([moving_shape_clip(n, 64, 96, "yellow", "up", background=(20, 20, 20)),
                             moving_shape_clip(n, 64, 96, "green", "down", shape="triangle",
                                               background=(200, 200, 200))])
    return write_video(path, frames, fps=12)


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_cut_is_frame_accurate_and_hands_sample_frames_over(tmp_path, codec):
    from opensora_core.curation.config import ClipsConfig, ScenesConfig
    from opensora_core.curation.scenes.cutter import Sampler, cut_scenes
    from opensora_core.data.video_io import read_frames

    video = _two_shots(tmp_path / "two.mp4")
    taken = []
    sampler = Sampler(80, lambda n: set(spread_positions(n, 3)), lambda clip, s: taken.append((clip, s)))
    cut = cut_scenes(video, tmp_path / "clips", "c", ScenesConfig(min_frames=8, max_frames=16),
                     ClipsConfig(codec=codec, stream_copy=False), sampler=sampler)
    assert [(c.start_frame, c.end_frame) for c in cut.clips] == [(0, 16), (16, 24), (24, 40), (40, 48)]
    assert sorted(p.name for p in (tmp_path / "clips").iterdir() if p.suffix == ".mp4") == \
        [c.file for c in cut.clips]  # no temporary file left
    with av.open(str(tmp_path / "clips" / cut.clips[0].file)) as container:
        assert container.streams.video[0].codec_context.name == {"mpeg4": "mpeg4", "libx264": "h264"}[codec]
    for clip, samples in taken:
        assert len(read_frames(tmp_path / "clips" / clip.file, 1000)) == clip.num_frames
        assert sorted(samples.frames) == spread_positions(clip.num_frames, 3)
        frame = samples.frames[spread_positions(clip.num_frames, 3)[0]]
        assert frame.dtype == np.uint8 and frame.shape == (64, 96)  # luma, within 1.25x the size asked
    # The sampled luma is the grey of the decoded frame: the background of each shot.
    assert taken[0][1].frames[2][0, 0] < 40 and taken[2][1].frames[2][0, 0] > 180
    # Thumbnails: the piece's first frame, 160 px wide, in the source's colours (BGR in the jpg).
    source = _decoded(video)
    for clip in cut.clips:
        thumb = cv2.imread(str(tmp_path / "clips" / clip.thumbnail))
        expected = cv2.resize(source[clip.start_frame], (160, 107), interpolation=cv2.INTER_AREA)
        assert thumb.shape == (107, 160, 3) and np.abs(thumb[..., ::-1].astype(int) - expected).mean() < 4


def test_detection_sees_frames_at_pyscenedetects_size(tmp_path):
    """Frames wider than the analysis width are resized to it, as PySceneDetect's
    default downscaling does (height to match, rounded for 4:2:0); the picture is the
    full frame's, resized."""
    from opensora_core.curation.scenes.detection import detection_frame, detection_size

    assert detection_size(720, 528, 256) == (256, 188)
    assert detection_size(1920, 1080, 256) == (256, 144)
    assert detection_size(320, 240, 256) == (256, 192)
    assert detection_size(256, 141, 256) == (256, 141) and detection_size(200, 100, 256) == (200, 100)
    from opensora_core.data.video_io import write_video

    yy, xx = np.mgrid[0:96, 0:128]
    colours = np.stack([xx * 2, yy * 2, np.full_like(xx, 200)], axis=-1).astype(np.uint8)  # red across, green down
    with av.open(str(write_video(tmp_path / "colours.mp4", np.stack([colours] * 2), fps=12))) as container:
        frame = next(container.decode(video=0))
    size = detection_size(frame.width, frame.height, 48)
    small = detection_frame(frame, size)
    assert small.shape == (size[1], size[0], 3) == (36, 48, 3)
    expected = cv2.resize(frame.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_LINEAR)
    # Chroma is resized before the conversion rather than after: a few levels apart at most.
    assert np.abs(small.astype(int) - expected).mean() < 3
    assert np.abs(small[..., ::-1].astype(int) - expected).mean() > 30  # (channels swapped: far off)


def test_fast_detector_scores_equal_pyscenedetect(tmp_path):
    from fractions import Fraction

    from scenedetect import FrameTimecode
    from scenedetect.detectors import AdaptiveDetector

    from opensora_core.curation.scenes.detection import _Detector, detection_frame

    video = _two_shots(tmp_path / "two.mp4")
    theirs, ours, cuts = AdaptiveDetector(), _Detector(), ([], [])
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            small = detection_frame(frame)
            cuts[0].extend(c.frame_num for c in theirs.process_frame(FrameTimecode(i, Fraction(12)), small))
            cuts[1].extend(c.frame_num for c in ours.process_frame(FrameTimecode(i, Fraction(12)), small))
            assert ours._frame_score == theirs._frame_score
    assert cuts[0] == cuts[1] == [24]


def test_an_encoding_error_stops_the_cut_and_leaves_no_files(tmp_path, monkeypatch):
    from opensora_core.curation.scenes import cutter

    def broken(self, *args):
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(cutter._ClipWriter, "_encode", broken)
    monkeypatch.setattr(cutter._CopyWriter, "_write", broken)
    for stream_copy in (False, True):
        with pytest.raises(RuntimeError, match="encoder broke"):
            cutter.cut_scenes(_two_shots(tmp_path / "two.mp4"), tmp_path / "clips", "c",
                              cutter.ScenesConfig(min_frames=8), cutter.ClipsConfig(stream_copy=stream_copy))
        assert not [p for p in (tmp_path / "clips").iterdir() if p.suffix != ".jpg"]


def test_background_scorer_prepares_each_scorer_on_its_worker_first():
    import threading

    from opensora_core.curation.scoring import BackgroundScorer
    from opensora_core.curation.scoring.base import Scorer

    events = []

    class Recording(Scorer):
        needs_color = False

        def __init__(self, name, batched, fail=False):
            self.name, self.batched, self.fail, self.columns = name, batched, fail, (name,)

        def prepare(self):
            events.append(("prepare", self.name, threading.current_thread().name))
            if self.fail:
                raise OSError("no model here")

        def positions(self, num_frames):
            return {0}

        def score(self, batch):
            events.append(("score", self.name, threading.current_thread().name))
            return [{self.name: 1.0} for _ in batch]

    background = BackgroundScorer([Recording("a", False), Recording("b", True, fail=True)], batch_size=4)
    background.take(None, ClipSamples("clip-0", 1, {0: np.zeros((8, 8), np.uint8)}))
    rows = background.results()
    assert rows == {"clip-0": {"a": 1.0, "b": 1.0}}
    for name in ("a", "b"):
        steps = [e for e in events if e[1] == name]
        assert [s[0] for s in steps] == ["prepare", "score"] and steps[0][2] == steps[1][2] != "MainThread"
    assert "no model here" in background.failed["b"]


def test_frame_array_gives_pyav_pixels_with_one_converter_per_thread(tmp_path):
    import threading

    from opensora_core.data import frame_arrays
    from opensora_core.data.video_io import write_video

    rng = np.random.default_rng(0)
    small = write_video(tmp_path / "small.mp4", rng.integers(0, 255, (4, 48, 64, 3), dtype=np.uint8), fps=8)
    large = write_video(tmp_path / "large.mp4", rng.integers(0, 255, (3, 96, 128, 3), dtype=np.uint8), fps=8)
    frames = [f for path in (small, large) for f in av.open(str(path)).decode(video=0)]  # two geometries
    for fmt in ("rgb24", "bgr24", "gray"):
        for frame in frames:
            assert np.array_equal(frame_arrays.frame_array(frame, fmt), frame.to_ndarray(format=fmt))
    mine = frame_arrays._reformatter()
    other = []
    thread = threading.Thread(target=lambda: other.append(frame_arrays._reformatter()))
    thread.start()
    thread.join()
    assert frame_arrays._reformatter() is mine and other[0] is not mine


def _x264_shots(path, shots: list[np.ndarray], fps: int = 24):
    """H.264 mp4 with B-frames whose every shot starts on an IDR frame, as encoders put
    keyframes at scene cuts."""
    from fractions import Fraction

    starts, total = set(), 0
    for shot in shots:
        starts.add(total)
        total += len(shot)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = shots[0].shape[2], shots[0].shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "bframes": "3", "forced-idr": "1", "scenecut": "0"}
        for i, frame in enumerate(np.concatenate(shots)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pict_type = av.video.frame.PictureType.I if i in starts else av.video.frame.PictureType.NONE
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def _decoded(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _shots(lengths, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 30, (1, 96, 128, 3), dtype=np.uint8)
    looks = [("red", "right", (20, 20, 20)), ("blue", "up", (200, 200, 200)), ("yellow", "left", (90, 40, 40))]
    return [moving_shape_clip(n, 96, 128, color, direction, speed=2, background=bg) + noise
            for n, (color, direction, bg) in zip(lengths, looks)]


def test_scenes_starting_on_keyframes_are_copied_bit_exact(tmp_path):
    from opensora_core.curation.config import ClipsConfig, ScenesConfig
    from opensora_core.curation.scenes.cutter import cut_scenes

    video = _x264_shots(tmp_path / "shots.mp4", _shots([30, 26, 34]))
    source = _decoded(video)
    cut = cut_scenes(video, tmp_path / "clips", "c", ScenesConfig(min_frames=8))
    assert [(c.start_frame, c.end_frame) for c in cut.clips] == [(0, 30), (30, 56), (56, 90)]
    assert all(c.stream_copy for c in cut.clips)
    for clip in cut.clips:
        frames = _decoded(tmp_path / "clips" / clip.file)
        assert len(frames) == clip.num_frames
        assert all(np.array_equal(a, b) for a, b in zip(frames, source[clip.start_frame : clip.end_frame]))
    # The same cut re-encoded instead, when copying is switched off: lossy, same frames.
    again = cut_scenes(video, tmp_path / "encoded", "c", ScenesConfig(min_frames=8), ClipsConfig(stream_copy=False))
    assert [(c.start_frame, c.end_frame, c.stream_copy) for c in again.clips] == \
        [(c.start_frame, c.end_frame, False) for c in cut.clips]
    assert len(_decoded(tmp_path / "encoded" / again.clips[1].file)) == 26


def test_pieces_copied_only_when_exact_else_decoded_again_and_encoded(tmp_path, monkeypatch):
    from opensora_core.curation.config import ScenesConfig
    from opensora_core.curation.scenes import cutter, stream_copy

    # One long shot split every 20 frames: only the first piece starts on a keyframe, and
    # with B-frames its packets are one run or not depending on where the split falls.
    video = _x264_shots(tmp_path / "long.mp4", _shots([70]))
    source = _decoded(video)
    for max_frames in (19, 20, 21, 22):
        cut = cutter.cut_scenes(video, tmp_path / f"clips{max_frames}", "c",
                                ScenesConfig(min_frames=8, max_frames=max_frames))
        assert not any(c.stream_copy for c in cut.clips[1:])  # they start mid-GOP
        for clip in cut.clips:
            frames = _decoded(tmp_path / f"clips{max_frames}" / clip.file)
            assert len(frames) == clip.num_frames == clip.end_frame - clip.start_frame
            error = np.mean([np.abs(a.astype(int) - b.astype(int)).mean()
                             for a, b in zip(frames, source[clip.start_frame : clip.end_frame])])
            assert error == 0 if clip.stream_copy else 0 < error < 8
    # Force the fallback for the first piece: encoded from the frames kept while it might
    # be copied, or, where they did not fit in the buffer, decoded again from its keyframe.
    monkeypatch.setattr(stream_copy._PacketLog, "run", lambda self, pts: None)
    decoded_again = []
    decode_again = stream_copy._CopySource.decode_again
    monkeypatch.setattr(stream_copy._CopySource, "decode_again",
                        lambda self, keys: decoded_again.append(len(keys)) or decode_again(self, keys))
    for buffer_bytes, again in ((stream_copy.COPY_BUFFER_BYTES, []), (96 * 128 * 3, [30])):
        monkeypatch.setattr(stream_copy, "COPY_BUFFER_BYTES", buffer_bytes)  # 1.5 yuv420p frames of 128x96
        decoded_again.clear()
        folder = tmp_path / f"fallback{buffer_bytes}"
        cut = cutter.cut_scenes(video, folder, "c", ScenesConfig(min_frames=8, max_frames=30))
        assert [(c.start_frame, c.end_frame, c.stream_copy) for c in cut.clips] == \
            [(0, 30, False), (30, 60, False), (60, 70, False)]
        assert decoded_again == again
        first = _decoded(folder / cut.clips[0].file)
        assert len(first) == 30 and np.mean([np.abs(a.astype(int) - b.astype(int)).mean()
                                             for a, b in zip(first, source[:30])]) < 8


def test_packet_log_finds_runs_and_forgets_what_no_piece_needs():
    from types import SimpleNamespace

    from opensora_core.curation.scenes.stream_copy import _PacketLog

    log = _PacketLog(limit=100)
    # Decode order I0 P3 B1 B2 I4 P7 B5 B6 (pts = display index).
    for pts, key in [(0, True), (3, False), (1, False), (2, False), (4, True), (7, False), (5, False), (6, False)]:
        log.add(SimpleNamespace(pts=pts, is_keyframe=key))
    assert log.is_keyframe(0) and log.is_keyframe(4) and not log.is_keyframe(3)
    assert [p.pts for p in log.run([0, 1, 2, 3])] == [0, 3, 1, 2]
    assert log.run([0, 1, 2]) is None  # B2 needs P3, which is not in the piece
    assert log.run([1, 2, 3]) is None  # does not start with its first frame's packet
    assert [p.pts for p in log.run([4, 5, 6, 7])] == [4, 7, 5, 6]
    for pts in range(8):
        log.seen(pts)
    log.keep_from([4, None])
    assert sorted(log.index_of) == [4, 5, 6, 7] and not log.is_keyframe(0)
    log.add(SimpleNamespace(pts=5, is_keyframe=False))  # a repeated timestamp: nothing is copied any more
    assert not log.usable and log.run([4, 5, 6, 7]) is None
    small = _PacketLog(limit=2)
    for pts in range(3):
        small.add(SimpleNamespace(pts=pts, is_keyframe=True))
    assert not small.usable  # too many packets waiting (frames that never come out)


def _avi_shots(path, shots: list[np.ndarray], keyframes: set[int] | None = None, flag: set[int] = frozenset(),
               codec: str = "mpeg4"):
    """AVI of `shots` (no B-frames) with I-frames at `keyframes` (default: where each
    shot starts) and nowhere else; the packets at `flag` are marked keyframes although
    they are not, as damaged or careless AVI writers do (the demuxer re-derives MPEG-4's
    flags from the bitstream, not MS-MPEG-4's)."""
    from fractions import Fraction

    frames = np.concatenate(shots)
    if keyframes is None:
        keyframes = set(np.cumsum([0] + [len(s) for s in shots[:-1]]).tolist())
    packets = []
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    encoder.time_base, encoder.gop_size = Fraction(1, 24), 10**4
    encoder.options = {"sc_threshold": "1000000000"}  # no I-frames of its own choosing at the cuts
    for i, frame in enumerate(frames):
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = i
        video_frame.pict_type = av.video.frame.PictureType.I if i in keyframes else av.video.frame.PictureType.P
        packets += encoder.encode(video_frame)
    packets += encoder.encode(None)
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream(codec, rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = encoder.width, encoder.height, "yuv420p"
        for i, packet in enumerate(packets):
            packet.is_keyframe = packet.is_keyframe or i in flag
            packet.stream = stream
            container.mux(packet)
    return path


def test_avi_pieces_are_copied_by_position_when_the_copy_decodes_to_them(tmp_path):
    from opensora_core.curation.config import ScenesConfig
    from opensora_core.curation.scenes.cutter import cut_scenes

    video = _avi_shots(tmp_path / "shots.avi", _shots([30, 26, 34]), keyframes={0, 30, 42, 56})
    source = _decoded(video)
    cut = cut_scenes(video, tmp_path / "clips", "c", ScenesConfig(min_frames=8))
    assert [(c.start_frame, c.end_frame, c.stream_copy) for c in cut.clips] == \
        [(0, 30, True), (30, 56, True), (56, 90, True)]
    assert [c.file for c in cut.clips] == ["c-0000.avi", "c-0001.avi", "c-0002.avi"]
    for clip in cut.clips:
        frames = _decoded(tmp_path / "clips" / clip.file)
        assert len(frames) == clip.num_frames
        assert all(np.array_equal(a, b) for a, b in zip(frames, source[clip.start_frame : clip.end_frame]))
    # Scenes split every 20 frames: pieces starting on no keyframe are encoded (50-56 is too short).
    split = cut_scenes(video, tmp_path / "split", "c", ScenesConfig(min_frames=8, max_frames=20))
    assert [(c.start_frame, c.end_frame, c.stream_copy) for c in split.clips] == \
        [(0, 20, True), (20, 30, False), (30, 50, True), (56, 76, True), (76, 90, False)]
    assert [c.file[-4:] for c in split.clips] == [".avi", ".mp4", ".avi", ".avi", ".mp4"]
    encoded = _decoded(tmp_path / "split" / split.clips[1].file)
    assert len(encoded) == 10
    assert np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(encoded, source[20:30])]) < 8
    assert sorted(p.name for p in (tmp_path / "split").iterdir() if p.suffix != ".jpg") == \
        sorted(c.file for c in split.clips)


def test_an_avi_copy_that_does_not_decode_to_its_piece_is_encoded_instead(tmp_path, caplog):
    from opensora_core.curation.config import ScenesConfig
    from opensora_core.curation.scenes.cutter import cut_scenes

    # One shot split every 20 frames; the P-frames at 20 and 40 are flagged as keyframes:
    # copied, those pieces decode without their reference frames. Each is encoded from the
    # source instead (once one copy failed, the video's later pieces are not even tried).
    # (A P-frame that opens a shot is mostly intra-coded and may well pass: then the copy is exact.)
    video = _avi_shots(tmp_path / "lying.avi", _shots([60]), keyframes={0}, flag={20, 40}, codec="msmpeg4v2")
    source = _decoded(video)
    with caplog.at_level("INFO", logger="opensora_core.curation.scenes.stream_copy"):
        cut = cut_scenes(video, tmp_path / "clips", "c", ScenesConfig(min_frames=8, max_frames=20))
    assert [(c.start_frame, c.end_frame, c.stream_copy, c.file) for c in cut.clips] == \
        [(0, 20, True, "c-0000.avi"), (20, 40, False, "c-0001.mp4"), (40, 60, False, "c-0002.mp4")]
    assert "c-0001.avi: frame 0 of the copy differs from the source's" in caplog.text
    second = _decoded(tmp_path / "clips" / "c-0001.mp4")
    assert len(second) == 20
    assert np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(second, source[20:40])]) < 8
    assert sorted(p.name for p in (tmp_path / "clips").iterdir() if p.suffix != ".jpg") == \
        ["c-0000.avi", "c-0001.mp4", "c-0002.mp4"]


def test_an_avi_copy_with_frames_missing_is_encoded_instead(tmp_path, monkeypatch):
    from opensora_core.curation.scenes import cutter, stream_copy

    video = _avi_shots(tmp_path / "shots.avi", _shots([30, 26]))
    real = stream_copy._decoded_signatures
    monkeypatch.setattr(stream_copy, "_decoded_signatures", lambda path: real(path)[:-1])
    cut = cutter.cut_scenes(video, tmp_path / "clips", "c", cutter.ScenesConfig(min_frames=8))
    assert [(c.num_frames, c.stream_copy) for c in cut.clips] == [(30, False), (26, False)]
    assert [len(_decoded(tmp_path / "clips" / c.file)) for c in cut.clips] == [30, 26]


def test_frame_signature_reads_pixels_not_row_padding(tmp_path):
    from opensora_core.curation.scenes.stream_copy import frame_signature

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)  # rows of 60 px are padded in the buffer
    for fmt in ("rgb24", "yuv420p", "gray"):
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=fmt)
        again = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=fmt)
        assert frame_signature(frame) == frame_signature(again), fmt
        changed = pixels.copy()
        changed[8, 3] = 255 - changed[8, 3]  # a pixel on a row the signature reads
        other = av.VideoFrame.from_ndarray(changed, format="rgb24").reformat(format=fmt)
        assert frame_signature(other) != frame_signature(frame), fmt
        assert frame.planes[0].line_size > frame.planes[0].width or fmt != "gray"
    small = av.VideoFrame.from_ndarray(pixels[:, :58], format="rgb24")
    assert frame_signature(small) != frame_signature(av.VideoFrame.from_ndarray(pixels, format="rgb24"))


def test_position_log_keeps_what_a_piece_or_the_decoder_still_needs():
    from types import SimpleNamespace

    from opensora_core.curation.scenes.stream_copy import _PositionLog

    log = _PositionLog(limit=10)
    for i in range(6):
        log.add(SimpleNamespace(is_keyframe=i in (0, 3)))
    assert log.is_keyframe(0) and log.is_keyframe(3) and not log.is_keyframe(1) and not log.is_keyframe(9)
    log.seen(3)  # frames 0-3 out; packets 4 and 5 wait in the decoder
    log.keep_from([None, 2])
    assert sorted(log.packets) == [2, 3, 4, 5] and log.run([1, 2]) is None and len(log.run([2, 3, 4])) == 3
    log.keep_from([None, None])
    assert sorted(log.packets) == [4, 5]  # nothing before the first frame not yet out
    for _ in range(9):
        log.add(SimpleNamespace(is_keyframe=True))
    assert not log.usable and not log.is_keyframe(4) and log.run([4]) is None


def test_a_piece_decoded_again_comes_from_the_start_when_seeking_overshoots(tmp_path, monkeypatch):
    from opensora_core.curation.scenes.stream_copy import _CopySource, _PacketLog

    video = _x264_shots(tmp_path / "shots.mp4", _shots([30, 26]))
    with av.open(str(video)) as container:
        pts = [f.pts for f in container.decode(video=0)]
    source = _CopySource(video, None, _PacketLog(limit=8))
    assert [f.pts for f in source.decode_again(pts[30:40])] == pts[30:40]
    # A demuxer whose seek lands past the piece: decoded from the start instead.
    seek, seeks = av.container.InputContainer.seek, []

    opened, open_ = [], av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: opened.append(1) or open_(*args, **kwargs))
    for to_last_frame in (True, False):  # lands on the last frame / fails (no keyframe after it)

        def overshooting(self, offset, stream=None, to_last_frame=to_last_frame, **kwargs):
            seeks.append(offset)
            return seek(self, pts[-1], stream=stream, backward=to_last_frame, any_frame=to_last_frame)

        monkeypatch.setattr(av.container.InputContainer, "seek", overshooting)
        opened.clear()
        assert [f.pts for f in source.decode_again(pts[30:40])] == pts[30:40]
        assert seeks[-1] == pts[30] and len(opened) == 2  # the second time without seeking
    with pytest.raises(RuntimeError, match="did not decode a second time"):
        list(source.decode_again([pts[5], 10**9]))
