"""Non-square pixels (DVD, DV, HDV footage): clips, sizes and training reads are as a
player shows the video, resampled to square pixels. HDR video is noted."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from opensora_core.curation import partitions
from opensora_core.curation import scene_clips as clips_step
from opensora_core.curation.config import CurationConfig
from opensora_core.curation.runner import curate
from opensora_core.curation.storage import Storage
from opensora_core.data.frame_arrays import pixel_aspect, square_pixel_width
from opensora_core.data.video_io import read_frames

CODED = (64, 96)  # height, width as stored
SCENE = 24  # frames per scene; two scenes


def _shown(aspect: Fraction) -> np.ndarray:
    """`[2 * SCENE, 64, W, 3]` as a player shows the video: two scenes (a grey and a blue
    background), each with a red square 16 px on a side, square on screen."""
    height, width = CODED[0], square_pixel_width(CODED[1], aspect)
    frames = np.zeros((2 * SCENE, height, width, 3), np.uint8)
    frames[:SCENE] = (120, 120, 120)
    frames[SCENE:] = (20, 40, 160)
    for index in range(2 * SCENE):
        x = 8 + index % SCENE
        frames[index, 24:40, x : x + 16] = (230, 20, 20)
    return frames


def _write(path: Path, aspect: Fraction, transfer: int | None = None) -> np.ndarray:
    """The shown frames squeezed to the coded width, stored with `aspect` as the sample
    aspect ratio (mp4 `pasp`) and `transfer` as the colour transfer; returns the shown
    frames."""
    shown = _shown(aspect)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = CODED[1], CODED[0], "yuv420p"
        stream.options = {"g": "12", "crf": "12", "bf": "0"}
        stream.codec_context.sample_aspect_ratio = aspect
        if transfer is not None:
            stream.codec_context.color_trc = transfer
        for frame in shown:
            coded = cv2.resize(frame, (CODED[1], CODED[0]), interpolation=cv2.INTER_AREA)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(coded, format="rgb24")))
        container.mux(stream.encode())
    return shown


def _config() -> CurationConfig:
    return CurationConfig.model_validate({
        "scenes": {"min_frames": 8, "max_frames": 64},
        "scorers": {"flow": {"enabled": False}, "ocr": {"enabled": False}, "quality": {"samples": 2}}})


def test_anamorphic_video_is_cut_with_square_pixels(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    aspect = Fraction(3, 2)  # 96 coded columns shown as 144
    shown = _write(raw / "anamorphic.mp4", aspect)
    with av.open(str(raw / "anamorphic.mp4")) as container:
        assert pixel_aspect(container.streams.video[0]) == aspect  # the fixture carries its ratio

    curate(raw, tmp_path / "out", _config())
    out = Storage(tmp_path / "out")
    key = next(p.name for p in (tmp_path / "out" / "partitions").iterdir())
    probe = partitions.read_manifest(out, key, "raw")["probe"]
    assert (probe["width"], probe["height"], probe["pixel_aspect"]) == (144, 64, "3:2")
    manifest = partitions.read_manifest(out, key, "clips")
    assert manifest["stream_copied"] == 0 and manifest["scenes"] == [[0, SCENE], [SCENE, 2 * SCENE]]
    clips = clips_step.read_clips(out, key)
    assert (clips["width"] == 144).all() and (clips["height"] == 64).all()
    for clip in clips.itertuples():
        with av.open(clip.path) as container:
            stream = container.streams.video[0]
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)]).astype(int)
            assert pixel_aspect(stream) is None  # square: any loader sees the shown picture
        assert frames.shape[1:3] == (64, 144)
        assert np.abs(frames - shown[clip.start_frame : clip.end_frame]).mean() < 6

    # Training's reader shows the source the same way.
    read = read_frames(raw / "anamorphic.mp4", 2 * SCENE).astype(int)
    assert read.shape == (2 * SCENE, 64, 144, 3) and np.abs(read - shown).mean() < 6


@pytest.mark.parametrize("aspect", [Fraction(1001, 1000), Fraction(1, 1)])
def test_pixels_within_a_percent_of_square_are_square(tmp_path, aspect):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "square.mp4", aspect)
    curate(raw, tmp_path / "out", _config())
    out = Storage(tmp_path / "out")
    key = next(p.name for p in (tmp_path / "out" / "partitions").iterdir())
    probe = partitions.read_manifest(out, key, "raw")["probe"]
    assert (probe["width"], probe["pixel_aspect"]) == (96, None)
    assert partitions.read_manifest(out, key, "clips")["stream_copied"] == 2  # both scenes start on keyframes


def test_hdr_video_is_noted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "pq.mp4", Fraction(1), transfer=16)
    _write(raw / "sdr.mp4", Fraction(1), transfer=1)
    summary = curate(raw, tmp_path / "out", _config())
    assert summary.kept == 4
    noted = {source.rsplit("/", 1)[-1]: notes for source, notes in summary.notes.items()}
    assert list(noted) == ["pq.mp4"] and "HDR video (PQ transfer" in noted["pq.mp4"][0]


def test_the_probe_command_says_how_the_video_is_shown(tmp_path):
    from typer.testing import CliRunner

    from opensora_core.cli import app

    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "anamorphic.mp4", Fraction(3, 2))
    _write(raw / "square.mp4", Fraction(1))
    result = CliRunner().invoke(app, ["data", "raw-videos", "--input", str(raw), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # (the console wraps long lines)
    assert "anamorphic.mp4 h264 144x64 (as shown: pixels 3:2) 48 frames" in output
    assert "square.mp4 h264 96x64 48 frames" in output


def test_an_implausible_pixel_aspect_is_taken_as_square_and_noted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "broken header.mp4", Fraction(20))  # 96 columns "shown" 1920 wide: a broken header
    summary = curate(raw, tmp_path / "out", _config())
    out = Storage(tmp_path / "out")
    key = next(p.name for p in (tmp_path / "out" / "partitions").iterdir())
    probe = partitions.read_manifest(out, key, "raw")["probe"]
    assert (probe["width"], probe["pixel_aspect"]) == (96, None) and summary.kept == 2
    assert any("pixel aspect 20:1 in the header is not one footage has" in n for n in probe["notes"])


def test_a_palette_frame_is_made_square_in_yuv420p():
    """swscale cannot write a palette: the resampled frame is in the clips' format."""
    from opensora_core.data.frame_arrays import square_pixels

    frame = av.VideoFrame(48, 32, "pal8")
    np.frombuffer(frame.planes[1], np.uint32)[:] = 0xFF2080C0  # every entry one colour (ARGB)
    square = square_pixels(frame, Fraction(2))
    assert (square.format.name, square.width, square.height) == ("yuv420p", 96, 32)
    rgb = square.to_ndarray(format="rgb24").reshape(-1, 3).astype(int)
    assert np.abs(rgb - (0x20, 0x80, 0xC0)).max() <= 3


@pytest.mark.parametrize("aspect", [Fraction(3, 2), None])
def test_a_full_range_source_keeps_its_blacks_and_whites_when_encoded(tmp_path, aspect):
    """Full-range (yuvj420p, "pc") video, as MJPEG capture and some phones write it: a
    re-encoded clip is limited range, tagged so; its values were left full-range under a
    limited tag, which clips near-black and near-white when read."""
    from opensora_core.curation.scenes.cutter import cut_scenes

    path = tmp_path / "full.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuvj420p"
        stream.options = {"crf": "8", "bf": "0", "g": "5"}
        if aspect is not None:
            stream.codec_context.sample_aspect_ratio = aspect
        for index in range(24):
            array = np.zeros((64, 96, 3), np.uint8)
            array[:, :48], array[:, 48:] = 250, 6
            array[:8, index * 2 : index * 2 + 8] = 128
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24").reformat(
                format="yuvj420p", dst_color_range=2)))
        container.mux(stream.encode())
    clips = _config().clips.model_copy(update={"stream_copy": False})  # encoded, square pixels too
    cut = cut_scenes(path, tmp_path / "clips", "f", _config().scenes, clips)
    assert cut.clips and not any(clip.stream_copy for clip in cut.clips)
    for clip in cut.clips:
        with av.open(str(tmp_path / "clips" / clip.file)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
        assert abs(frame[40, 10].mean() - 250) <= 3 and abs(frame[40, -10].mean() - 6) <= 3, clip.file
