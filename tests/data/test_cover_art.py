"""Files whose first video stream is not the video: a music file's cover art (an
attached picture) and a thumbnail track ahead of the real one."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pandas as pd

from opensora_core.curation.config import CurationConfig
from opensora_core.curation.runner import curate
from opensora_core.data.video_io import read_frames
from tests.data.corpus import mux_silence


def _config() -> CurationConfig:
    return CurationConfig.model_validate({
        "scenes": {"min_frames": 8, "max_frames": 64},
        "scorers": {"flow": {"enabled": False}, "ocr": {"enabled": False}, "quality": {"samples": 2}}})


def _add_picture(container, attached: bool):
    """A 32x32 mjpeg stream: cover art when `attached`, else a track (streams are all
    added before anything is written)."""
    stream = container.add_stream("mjpeg")
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
    if attached:
        stream.disposition = av.stream.Disposition.attached_pic
    return stream


def _write_picture(container, stream) -> None:
    frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
    frame.pts = 0
    for packet in [*stream.encode(frame), *stream.encode()]:
        container.mux(packet)


def _song(path: Path) -> None:
    """Audio with cover art, named .mp4 (an .m4a renamed)."""
    with av.open(str(path), "w") as container:
        picture = _add_picture(container, attached=True)
        audio = container.add_stream("aac", rate=16000)
        _write_picture(container, picture)
        mux_silence(container, audio, 16)


def _thumbnail_first(path: Path) -> np.ndarray:
    """An mkv whose first track is a one-frame 32x32 picture, the second 24 frames of
    64x48 video (returned)."""
    frames = np.zeros((24, 48, 64, 3), np.uint8)
    frames[..., 0] = np.arange(24)[:, None, None] * 8
    with av.open(str(path), "w") as container:
        picture = _add_picture(container, attached=False)
        video = container.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        _write_picture(container, picture)
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
    return frames


def test_cover_art_is_not_the_video(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _song(raw / "song.mp4")
    frames = _thumbnail_first(raw / "thumbnail_first.mkv")
    with av.open(str(raw / "song.mp4")) as container:  # FFmpeg shows the cover as a video stream
        (cover,) = container.streams.video
        assert cover.disposition & av.stream.Disposition.attached_pic and len(container.streams.audio) == 1

    summary = curate(raw, tmp_path / "out", _config())
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv").set_index("path")
    song = rejected.loc[str(raw / "song.mp4")]
    assert (song["step"], song["reason"]) == ("raw_videos", "no video stream (only a cover picture, audio)")
    meta = pd.read_csv(tmp_path / "out" / "meta.csv")
    assert summary.kept == 1 and meta[["num_frames", "width", "height"]].values.tolist() == [[24, 64, 48]]
    read = read_frames(raw / "thumbnail_first.mkv", 24)
    assert read.shape == (24, 48, 64, 3) and np.abs(read.astype(int) - frames).mean() < 4
