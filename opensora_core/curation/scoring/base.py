"""The scorer interface, and the frames scorers look at.

A scorer has a name, a version and the columns it writes; it scores a batch of clips
from a few frames sampled across each clip. Where a scorer cannot run (a missing
binary, no weights configured) it says why, and its columns are left out rather than
filled with a stand-in.

Frames reach scorers two ways:

- while a video is cut into clips (:func:`opensora_core.curation.scenes.cutter.cut_scenes`), the
  cutter keeps each frame's luma at :func:`sample_size` and hands every finished clip's
  sample positions to the scorers that work on luma alone (`flow`, `ocr`, `quality`),
  so scoring costs no second decode; the scores are stored with the clips;
- on their own (`opensora data scored-clips`, changed scorer settings, or the colour scorers
  `aes` and `match`), :func:`read_samples` decodes the sampled frames of a clip file.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from opensora_core.data.decoding import video_stream
from opensora_core.data.frame_arrays import frame_array
from opensora_core.data.images import read_image_rgb

# Planar 8-bit YUV layouts whose first plane is the luma, full range ("j") or not.
_FULL_RANGE_YUV = {"yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p"}
_LIMITED_RANGE_YUV = {"yuv420p", "yuv422p", "yuv444p", "yuv440p", "yuv411p", "yuv410p", "nv12", "nv21"}


@functools.cache
def _expand_range() -> np.ndarray:
    """Limited-range luma (16-235) -> the grey that decoding to RGB (swscale, as
    :func:`read_samples` does) and OpenCV's RGB->grey give for it: measured on a grey
    ramp rather than computed, so both routes agree to the rounding."""
    ramp = np.arange(256, dtype=np.uint8).repeat(2)[None].repeat(2, axis=0)  # [2, 512]
    frame = av.VideoFrame.from_ndarray(np.concatenate([ramp, np.full((1, 512), 128, np.uint8)]), format="yuv420p")
    return np.ascontiguousarray(cv2.cvtColor(frame.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)[0, ::2])


@dataclass
class ClipSamples:
    """Frames sampled from one clip (or the image itself): uint8 RGB `[H, W, 3]`, or
    uint8 luma `[H, W]` where only the luma was kept (see :func:`gray`)."""

    clip_id: str
    num_frames: int
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # clip frame index -> frame
    text: str | None = None

    def spread(self, n: int) -> list[np.ndarray]:
        """`n` frames evenly spread over the clip (fewer for short clips)."""
        return [self.frames[i] for i in spread_positions(self.num_frames, n)]

    def pairs(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """`n` pairs of consecutive frames spread over the clip (none for one frame)."""
        return [(self.frames[i], self.frames[i + 1]) for i in pair_positions(self.num_frames, n)]


def spread_frames(batch: list, samples: int) -> tuple[list, list[int]]:
    """Every clip's `samples` spread frames in one list, with the index of the clip each
    came from, so a scorer can run one batched call over the whole batch."""
    frames, owners = [], []
    for index, clip in enumerate(batch):
        for frame in clip.spread(samples):
            frames.append(frame)
            owners.append(index)
    return frames, owners


def spread_positions(num_frames: int, n: int) -> list[int]:
    n = max(1, min(n, num_frames))
    return sorted({min(num_frames - 1, int((i + 0.5) * num_frames / n)) for i in range(n)})


def pair_positions(num_frames: int, n: int) -> list[int]:
    if num_frames < 2:
        return []
    return spread_positions(num_frames - 1, n)


def gray(frame: np.ndarray) -> np.ndarray:
    """A sample as uint8 grey `[H, W]`: luma samples (already the grey of their RGB
    frame, see :func:`full_range`) as they are, RGB through OpenCV's RGB->grey."""
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def shrink(image: np.ndarray, max_size: int) -> np.ndarray:
    """`image` resized so its longer side is at most `max_size` (never enlarged):
    area-averaged by the whole factor, then bilinear for the rest (< 2x, no aliasing),
    several times cheaper than one non-integer area resize."""
    h, w = image.shape[:2]
    if max(h, w) <= max_size:
        return image
    whole = max(h, w) // max_size
    if whole >= 2:
        image = cv2.resize(image, (max(1, w // whole), max(1, h // whole)), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
        if max(h, w) <= max_size:
            return image
    scale = max_size / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)


def plane_view(frame: av.VideoFrame, index: int) -> np.ndarray:
    """Plane `index` of an 8-bit planar frame as a uint8 `[h, w]` view of the decoder's
    buffer (no copy: copy what is kept beyond the frame's use)."""
    plane = frame.planes[index]
    rows = np.frombuffer(plane, np.uint8)
    return rows[: plane.height * plane.line_size].reshape(plane.height, plane.line_size)[:, : plane.width]


def frame_luma(frame: av.VideoFrame, max_size: int) -> tuple[np.ndarray, bool]:
    """The luma of a decoded frame, and whether it is limited range (16-235;
    :func:`full_range` expands it). Planar YUV gives its first plane without any colour
    conversion; other layouts go through RGB. Frames up to 1.25x `max_size` on their
    longer side are kept as they are (the scorers shrink the few they read, as they
    would a decoded frame), larger ones are shrunk to `max_size` (see :func:`shrink`).

    A luma kept as it is is a view of the decoder's buffer, not a copy: the view holds
    its plane, which holds the frame, so the buffer lives as long as the view (copying
    every frame's luma cost Megamind.avi's cutting ~0.03 CPU-s)."""
    name = frame.format.name
    if name in _LIMITED_RANGE_YUV or name in _FULL_RANGE_YUV:
        luma, limited = plane_view(frame, 0), name in _LIMITED_RANGE_YUV and frame.color_range != 2  # 2: JPEG
    else:
        luma, limited = cv2.cvtColor(frame_array(frame), cv2.COLOR_RGB2GRAY), False
    if max(luma.shape) * 4 > max_size * 5:
        luma = shrink(luma, max_size)
    return luma, limited


def full_range(luma: np.ndarray, limited: bool) -> np.ndarray:
    """Luma from :func:`frame_luma` as the grey of the decoded RGB frame."""
    return cv2.LUT(luma, _expand_range()) if limited else luma


class Scorer:
    """Base class: subclasses set `name`, `version`, `columns` and implement `score`.

    `needs_color` is False for scorers that read only the luma of their frames; those
    can score while a video is being cut (see the module docstring). `batched` scorers
    have a fixed cost per call and should get many clips at once.
    """

    name: str = ""
    version: str = "1"
    columns: tuple[str, ...] = ()
    needs_color: bool = True
    batched: bool = False
    config = None

    def unavailable(self) -> str | None:
        """Why this scorer cannot run here, or None when it can."""
        return None

    def prepare(self) -> None:
        """Load what the first `score` call would (a model): the background scorer calls
        this on its worker thread as the video starts, so the loading overlaps decoding."""

    def positions(self, num_frames: int) -> set[int]:
        """Clip frame indices this scorer reads."""
        return set()

    def sample_size(self) -> int | None:
        """Longest frame side this scorer looks at (None: whatever it is given)."""
        return None

    def fingerprint(self) -> str:
        """Name, version and settings: scores stored with this fingerprint are reusable."""
        settings = self.config.model_dump(mode="json") if self.config is not None else None
        data = json.dumps([self.name, self.version, settings], sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:12]

    def score(self, batch: list[ClipSamples]) -> list[dict[str, float | str | None]]:
        """One row of `columns` values per clip in `batch`."""
        raise NotImplementedError


def sample_size(scorers: list[Scorer]) -> int | None:
    """Luma size that serves every scorer in `scorers`; None when one wants full frames."""
    sizes = [s.sample_size() for s in scorers]
    return None if not sizes or any(v is None for v in sizes) else max(sizes)


def read_samples(path: str | Path, clip_id: str, num_frames: int, positions: set[int]) -> ClipSamples:
    """Decode `positions` of the clip (sequentially: clips are short, and stopping at the
    last wanted frame saves the rest). An image file is its own single frame."""
    path = Path(path)
    samples = ClipSamples(clip_id, num_frames)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        samples.frames[0] = read_image_rgb(path)
        return samples
    if not positions:
        return samples
    last = max(positions)
    with av.open(str(path)) as container:
        stream = video_stream(container)
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in positions:
                samples.frames[index] = frame_array(frame)
            if index >= last:
                break
    missing = positions - set(samples.frames)
    if missing:
        raise ValueError(f"{path}: frames {sorted(missing)[:5]} of {num_frames} did not decode")
    return samples
