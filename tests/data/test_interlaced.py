"""Interlaced video (DV, broadcast 1080i) is deinterlaced as a player shows it: clips and
training reads without combing, frame for frame in place."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from opensora_core.curation import partitions
from opensora_core.curation import scene_clips as clips_step
from opensora_core.curation.config import CurationConfig
from opensora_core.curation.runner import curate
from opensora_core.curation.storage import Storage
from opensora_core.data.frame_arrays import square_pixel_width
from opensora_core.data.video_io import read_frames

SCENE, HEIGHT, WIDTH, STEP = 24, 64, 160, 4  # frames per scene; the bar moves STEP px a frame


def _write(path: Path, aspect: Fraction | None = None) -> None:
    """Two scenes of a white bar moving right, interlaced top field first: even rows
    show it at frame k's instant, odd rows half a frame later (so every frame combs)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"x264-params": "tff=1:keyint=12", "flags": "+ildct+ilme", "crf": "10", "bf": "0"}
        if aspect is not None:
            stream.codec_context.sample_aspect_ratio = aspect
        for index in range(2 * SCENE):
            array = np.full((HEIGHT, WIDTH, 3), (40, 40, 40) if index < SCENE else (20, 60, 140), np.uint8)
            x = STEP * (index % SCENE)
            array[0::2, x : x + 16] = 255
            array[1::2, x + STEP // 2 : x + STEP // 2 + 16] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def _comb(frames: np.ndarray) -> float:
    """Mean difference between neighbouring rows of opposite fields, over that within
    a field: ~1 for a progressive picture, well above for a combed one."""
    grey = frames.astype(float).mean(-1)
    across = np.abs(grey[:, 0:-1:2] - grey[:, 1::2]).mean()
    within = np.abs(grey[:, 0:-2:2] - grey[:, 2::2]).mean() + 1e-6
    return across / within


def _bar_centres(frames: np.ndarray) -> np.ndarray:
    """Column of the bright bar's centre in each frame (rows averaged)."""
    bright = (frames.astype(float).mean(-1) > 200).mean(1)  # [T, W]
    return (bright * np.arange(frames.shape[2])).sum(1) / np.maximum(bright.sum(1), 1e-6)


def _config() -> CurationConfig:
    return CurationConfig.model_validate({
        "scenes": {"min_frames": 8, "max_frames": 64},
        "scorers": {"flow": {"enabled": False}, "ocr": {"enabled": False}, "quality": {"samples": 2}}})


@pytest.mark.parametrize("aspect", [None, Fraction(4, 3)])
def test_interlaced_video_is_cut_deinterlaced_frame_for_frame(tmp_path, aspect):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "interlaced.mp4", aspect)
    with av.open(str(raw / "interlaced.mp4")) as container:  # the fixture is interlaced, and combs
        decoded = list(container.decode(video=0))
        assert all(frame.interlaced_frame for frame in decoded)
        assert _comb(np.stack([f.to_ndarray(format="rgb24") for f in decoded])) > 3

    curate(raw, tmp_path / "out", _config())
    out = Storage(tmp_path / "out")
    key = next(p.name for p in (tmp_path / "out" / "partitions").iterdir())
    width = square_pixel_width(WIDTH, aspect)
    probe = partitions.read_manifest(out, key, "raw")["probe"]
    assert probe["interlaced"] and probe["width"] == width
    manifest = partitions.read_manifest(out, key, "clips")
    assert manifest["stream_copied"] == 0 and manifest["scenes"] == [[0, SCENE], [SCENE, 2 * SCENE]]
    expected = STEP * (np.arange(2 * SCENE) % SCENE) + 8 + STEP / 4  # the bar between its two fields
    scale = width / WIDTH
    for clip in clips_step.read_clips(out, key).itertuples():
        with av.open(clip.path) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert len(frames) == clip.num_frames == SCENE and frames.shape[2] == width
        assert _comb(frames) < 1.5
        # Each frame is its own source frame's (none lost or shifted by yadif's look-ahead).
        np.testing.assert_allclose(_bar_centres(frames), expected[clip.start_frame : clip.end_frame] * scale,
                                   atol=1.5 * scale)

    read = read_frames(raw / "interlaced.mp4", 2 * SCENE)
    assert read.shape == (2 * SCENE, HEIGHT, width, 3) and _comb(read) < 1.5
    np.testing.assert_allclose(_bar_centres(read), expected * scale, atol=1.5 * scale)


def _segment(path: Path, height: int, width: int, frames: int, background: tuple[int, int, int]) -> bytes:
    """An interlaced MPEG-TS segment of `frames` frames of `width` x `height`."""
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"x264-params": "tff=1:keyint=12", "flags": "+ildct+ilme", "crf": "10", "bf": "0"}
        for index in range(frames):
            array = np.full((height, width, 3), background, np.uint8)
            array[0::2, STEP * index : STEP * index + 16] = 255
            array[1::2, STEP * index + 2 : STEP * index + 18] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path.read_bytes()


def test_a_recording_that_changes_size_is_cut_at_both_sizes(tmp_path):
    """A broadcast recording switching resolution: deinterlacing follows the new size
    (yadif's graph was set up once and failed on it), and read_frames stops at it."""
    from opensora_core.curation.scenes.cutter import cut_scenes

    recording = tmp_path / "recording.ts"
    recording.write_bytes(_segment(tmp_path / "a.ts", 64, 160, SCENE, (40, 40, 40))
                          + _segment(tmp_path / "b.ts", 128, 320, SCENE, (20, 60, 140)))
    cut = cut_scenes(recording, tmp_path / "clips", "r", _config().scenes, _config().clips)
    assert [(c.start_frame, c.end_frame, c.width, c.height) for c in cut.clips] == [
        (0, SCENE, 160, 64), (SCENE, 2 * SCENE, 320, 128)]
    for clip in cut.clips:
        with av.open(str(tmp_path / "clips" / clip.file)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert len(frames) == SCENE and _comb(frames) < 1.5
    assert read_frames(recording, 2 * SCENE).shape == (SCENE, 64, 160, 3)


def test_read_frames_gives_the_frame_held_for_deinterlacing_when_decoding_fails(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    from tests.data.test_rotation_and_damage import _damage_keyframe

    _write(raw / "damaged.mp4")
    _damage_keyframe(raw / "damaged.mp4", 2)  # frame 24's
    decodable = 0
    with av.open(str(raw / "damaged.mp4")) as container:
        try:
            for _ in container.decode(video=0):
                decodable += 1
        except av.FFmpegError:
            pass
    assert 0 < decodable < 2 * SCENE
    assert len(read_frames(raw / "damaged.mp4", 2 * SCENE)) == decodable


def test_frames_after_a_damaged_keyframe_are_their_own_not_concealed_copies(tmp_path):
    """A damaged keyframe: the decoder went on giving the frames that depend on it as
    copies of the frame before the damage, unflagged (a clip then began with the
    previous scene's picture). They are lost now, up to the next keyframe, and every
    frame kept is the clean file's frame of its index."""
    from opensora_core.data.decoding import FrameDecoder
    from tests.data.test_rotation_and_damage import _damage_keyframe, _two_scenes

    frames = _two_scenes(96, 128, frames=60)
    frames[:, 1::2] //= 2  # fields that differ
    frames[24:] = 255 - frames[24:]  # and content after the damage unlike that before it
    paths = {}
    for name in ("clean", "damaged"):
        paths[name] = tmp_path / f"{name}.mp4"
        with av.open(str(paths[name]), "w", options={"movflags": "faststart"}) as container:
            stream = container.add_stream("libx264", rate=12)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
            stream.options = {"g": "12", "crf": "12", "bf": "0", "x264-params": "tff=1", "flags": "+ildct+ilme"}
            for array in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            container.mux(stream.encode())
    _damage_keyframe(paths["damaged"], 2)  # frame 24's

    def decoded(path: Path) -> tuple[dict[int, np.ndarray], list]:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoder = FrameDecoder(stream)
            return ({index: frame.to_ndarray(format="rgb24").astype(int)
                     for index, frame in decoder.frames(container.demux(stream))}, decoder.gaps)

    clean, _ = decoded(paths["clean"])
    damaged, (gap,) = decoded(paths["damaged"])
    assert gap.start <= 24 < gap.end
    for index, picture in damaged.items():
        assert np.abs(picture - clean[index]).mean() < 3, index
