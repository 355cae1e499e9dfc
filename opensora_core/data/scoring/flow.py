"""`flow`: how much things move, from dense optical flow (OpenCV Farneback).

The score is the mean flow magnitude between consecutive frames, in pixels per frame
measured on frames resized so their longer side is `size` pixels, averaged over pairs
spread across the clip. It is a motion amount, not a quality: static clips score near
0, a pan across the frame in two seconds at 24 fps about `size / 48`.
"""

from __future__ import annotations

import cv2
import numpy as np

from opensora_core.data.config import FlowConfig
from opensora_core.data.scoring.base import ClipSamples, Scorer, gray, pair_positions


def _gray(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = size / max(h, w)
    return cv2.resize(gray(frame), (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)


def flow_magnitude(a: np.ndarray, b: np.ndarray, size: int = 256) -> float:
    """Mean Farneback flow magnitude from frame `a` to `b` (RGB or luma) at `size` px."""
    flow = cv2.calcOpticalFlowFarneback(_gray(a, size), _gray(b, size), None, pyr_scale=0.5, levels=3,
                                        winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    return float(np.linalg.norm(flow, axis=-1).mean())


class FlowScorer(Scorer):
    name = "flow"
    version = "farneback-1"
    columns = ("flow",)
    needs_color = False

    def __init__(self, config: FlowConfig) -> None:
        self.config = config

    def sample_size(self) -> int:
        return self.config.size

    def positions(self, num_frames: int) -> set[int]:
        return {p + d for p in pair_positions(num_frames, self.config.samples) for d in (0, 1)}

    def score(self, batch: list[ClipSamples]) -> list[dict]:
        rows = []
        for clip in batch:
            pairs = clip.pairs(self.config.samples)
            # A still image has no motion to measure; NaN keeps it apart from "static".
            value = float(np.mean([flow_magnitude(a, b, self.config.size) for a, b in pairs])) if pairs else None
            rows.append({"flow": value})
        return rows
