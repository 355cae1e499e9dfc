"""The scorer interface, and decoding the frames scorers look at.

A scorer has a name, a version and the columns it writes; it scores a batch of clips
from a few frames sampled across each clip (all scorers share one decode per clip).
Where a scorer cannot run (a missing binary, no weights configured) it says why, and
its columns are left out rather than filled with a stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image


@dataclass
class ClipSamples:
    """Frames sampled from one clip (or the image itself), uint8 RGB `[H, W, 3]`."""

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


def spread_positions(num_frames: int, n: int) -> list[int]:
    n = max(1, min(n, num_frames))
    return sorted({min(num_frames - 1, int((i + 0.5) * num_frames / n)) for i in range(n)})


def pair_positions(num_frames: int, n: int) -> list[int]:
    if num_frames < 2:
        return []
    return spread_positions(num_frames - 1, n)


class Scorer:
    """Base class: subclasses set `name`, `version`, `columns` and implement `score`."""

    name: str = ""
    version: str = "1"
    columns: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this scorer cannot run here, or None when it can."""
        return None

    def positions(self, num_frames: int) -> set[int]:
        """Clip frame indices this scorer reads."""
        return set()

    def score(self, batch: list[ClipSamples]) -> list[dict[str, float | str | None]]:
        """One row of `columns` values per clip in `batch`."""
        raise NotImplementedError


def read_samples(path: str | Path, clip_id: str, num_frames: int, positions: set[int]) -> ClipSamples:
    """Decode `positions` of the clip (sequentially: clips are short, and stopping at the
    last wanted frame saves the rest). An image file is its own single frame."""
    path = Path(path)
    samples = ClipSamples(clip_id, num_frames)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        with Image.open(path) as image:
            samples.frames[0] = np.asarray(image.convert("RGB"))
        return samples
    if not positions:
        return samples
    last = max(positions)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in positions:
                samples.frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    missing = positions - set(samples.frames)
    if missing:
        raise ValueError(f"{path}: frames {sorted(missing)[:5]} of {num_frames} did not decode")
    return samples
