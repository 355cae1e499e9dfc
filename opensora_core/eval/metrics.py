"""Prompt-following metrics for synthetic prompts, from pixels alone.

- colour: pixels that differ clearly from the frame's median (background) colour are
  classified to the nearest named colour of `COLORS` by RGB distance; the sample is
  correct when the prompted colour gets the most votes over all frames.
- direction: dense optical flow (OpenCV Farneback) between consecutive frames,
  averaged over the pixels that belong to the object in either frame; the mean flow's
  dominant axis and sign is the direction. Mean motion below `MIN_MOTION_PX` pixels per
  frame counts as static, which matches no direction.
- diversity: mean pairwise RMS distance (on the [-1, 1] scale, halved so it lies in
  [0, 1]) between samples of the same prompt, averaged over prompts with >= 2 samples.

Videos are `[3, T, H, W]` float tensors in [-1, 1] (what `VideoGenerator.generate`
returns) or uint8 frames `[T, H, W, 3]` (numpy or torch). Prompts that name no colour
(no direction) are skipped from that metric and counted as skipped.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from opensora_core.data.synthetic import COLORS, DIRECTIONS

# A pixel is foreground when its RGB distance to the frame's median colour exceeds this.
BACKGROUND_DISTANCE = 60.0
# Colour is read from the object's core: pixels at least this share as far from the
# background as the clip's most distinct ones (see classify_color).
CORE_FRACTION = 0.7
# Mean flow (pixels per frame) below which a clip counts as static.
MIN_MOTION_PX = 0.25

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[name] for name in _COLOR_NAMES], dtype=np.float32)  # [K, 3]
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class PromptAttributes:
    color: str | None
    direction: str | None


def parse_synthetic_prompt(prompt: str) -> PromptAttributes:
    """The first colour word of `COLORS` and the first direction word of `DIRECTIONS`
    in `prompt` (None where it names none): "a red circle moving left" -> (red, left)."""
    words = _WORD.findall(prompt.lower())
    color = next((w for w in words if w in COLORS), None)
    direction = next((w for w in words if w in DIRECTIONS), None)
    return PromptAttributes(color, direction)


def as_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 `[T, H, W, 3]` from a `[3, T, H, W]` tensor in [-1, 1] or uint8 frames."""
    if isinstance(video, torch.Tensor):
        if video.dtype == torch.uint8:
            array = video.detach().cpu().numpy()
            if array.ndim == 4 and array.shape[0] == 3 and array.shape[-1] != 3:
                array = array.transpose(1, 2, 3, 0)
        else:
            if video.ndim != 4 or video.shape[0] != 3:
                raise ValueError(f"expected a video [3, T, H, W], got {tuple(video.shape)}")
            scaled = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            array = scaled.permute(1, 2, 3, 0).cpu().numpy()
    else:
        array = np.asarray(video)
        if array.dtype != np.uint8:
            raise ValueError(f"numpy frames must be uint8 [T, H, W, 3], got {array.dtype}")
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got {array.shape}")
    return np.ascontiguousarray(array)


def _to_float(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """float32 `[T, H, W, 3]` in [-1, 1]."""
    if isinstance(video, torch.Tensor) and video.dtype != torch.uint8:
        if video.ndim != 4 or video.shape[0] != 3:
            raise ValueError(f"expected a video [3, T, H, W], got {tuple(video.shape)}")
        return video.detach().float().clamp(-1, 1).permute(1, 2, 3, 0).cpu().numpy()
    return as_uint8_frames(video).astype(np.float32) / 127.5 - 1.0


def _background_distance(pixels: np.ndarray) -> np.ndarray:
    """`[T, H, W]` RGB distance of every pixel from its frame's median colour."""
    background = np.median(pixels.reshape(len(pixels), -1, 3), axis=1)  # [T, 3]
    return np.linalg.norm(pixels - background[:, None, None, :], axis=-1)


def foreground_masks(frames: np.ndarray, threshold: float = BACKGROUND_DISTANCE) -> np.ndarray:
    """Boolean `[T, H, W]`: pixels far (RGB distance) from their frame's median colour."""
    return _background_distance(frames.astype(np.float32)) > threshold


def classify_color(video: torch.Tensor | np.ndarray) -> tuple[str | None, dict[str, int]]:
    """The named colour most of the object's core pixels are nearest to (None without
    foreground), and the vote count of every colour.

    The core is the foreground pixels at least `CORE_FRACTION` as far from the background
    as the clip's most distinct ones (its 95th percentile, so a stray pixel does not set
    the scale). Edge pixels are mixtures of object and background: a codec that blurs
    chroma (the embedded block-DCT keeps one chroma value per 8x8 block) makes a dark
    yellow read as green and a dark orange as red, so voting over every foreground pixel
    misjudged 25-40% of true yellow, orange and cyan clips after an encode-decode."""
    frames = as_uint8_frames(video)
    pixels = frames.astype(np.float32)
    distance = _background_distance(pixels)
    mask = distance > BACKGROUND_DISTANCE
    votes = dict.fromkeys(_COLOR_NAMES, 0)
    if not mask.any():
        return None, votes
    core = mask & (distance >= CORE_FRACTION * np.percentile(distance[mask], 95))
    nearest = np.argmin(((pixels[core][:, None, :] - _PALETTE[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(_COLOR_NAMES))
    votes = {name: int(c) for name, c in zip(_COLOR_NAMES, counts)}
    return _COLOR_NAMES[int(np.argmax(counts))], votes


def estimate_motion(video: torch.Tensor | np.ndarray) -> tuple[str | None, tuple[float, float]]:
    """Mean Farneback flow `(dx, dy)` in pixels per frame over the object (the whole
    frame when nothing stands out from the background), and the direction it points:
    the dominant axis and its sign, or None when the clip is static (or one frame)."""
    import cv2

    frames = as_uint8_frames(video)
    if len(frames) < 2:
        return None, (0.0, 0.0)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    masks = foreground_masks(frames)
    sums, weight = np.zeros(2, dtype=np.float64), 0
    for t in range(len(frames) - 1):
        flow = cv2.calcOpticalFlowFarneback(gray[t], gray[t + 1], None, pyr_scale=0.5, levels=3, winsize=9,
                                            iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
        region = masks[t] | masks[t + 1]
        if not region.any():
            region = np.ones(region.shape, dtype=bool)
        sums += flow[region].sum(axis=0)
        weight += int(region.sum())
    dx, dy = (sums / max(weight, 1)).tolist()
    if math.hypot(dx, dy) < MIN_MOTION_PX:
        return None, (dx, dy)
    if abs(dx) >= abs(dy):
        return ("right" if dx > 0 else "left"), (dx, dy)
    return ("down" if dy > 0 else "up"), (dx, dy)


def _rms_distance(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"samples of one prompt differ in shape: {a.shape} vs {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)) / 2.0)


def sample_diversity(videos: list[torch.Tensor | np.ndarray]) -> float:
    """Mean pairwise RMS distance (in [0, 1]) between samples of one prompt; NaN for
    fewer than two samples."""
    if len(videos) < 2:
        return float("nan")
    arrays = [_to_float(v) for v in videos]
    return float(np.mean([_rms_distance(a, b) for a, b in itertools.combinations(arrays, 2)]))


def score_video(video: torch.Tensor | np.ndarray, prompt: str) -> dict:
    """Per-sample result: the prompt's attributes, what the pixels show, and whether
    they match (None where the prompt names no colour / direction)."""
    wanted = parse_synthetic_prompt(prompt)
    color, _ = classify_color(video)
    direction, (dx, dy) = estimate_motion(video)
    return {
        "prompt": prompt,
        "prompt_color": wanted.color,
        "predicted_color": color,
        "color_correct": None if wanted.color is None else color == wanted.color,
        "prompt_direction": wanted.direction,
        "predicted_direction": direction,
        "flow_dx": dx,
        "flow_dy": dy,
        "direction_correct": None if wanted.direction is None else direction == wanted.direction,
    }


def evaluate_videos(
    videos: list[torch.Tensor | np.ndarray], prompts: list[str], details: list[dict] | None = None
) -> dict[str, float]:
    """`color_accuracy`, `direction_accuracy` (NaN when no prompt names one), `diversity`
    (over prompts with >= 2 samples; NaN when none has), and the counts behind them.
    Pass a list as `details` to receive the per-sample results of `score_video`."""
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
    scored = [score_video(v, p) for v, p in zip(videos, prompts)]
    if details is not None:
        details.extend(scored)
    color = [s["color_correct"] for s in scored if s["color_correct"] is not None]
    direction = [s["direction_correct"] for s in scored if s["direction_correct"] is not None]
    groups: dict[str, list] = {}
    for video, prompt in zip(videos, prompts):
        groups.setdefault(prompt, []).append(video)
    per_prompt = [sample_diversity(group) for group in groups.values() if len(group) >= 2]
    return {
        "color_accuracy": float(np.mean(color)) if color else float("nan"),
        "direction_accuracy": float(np.mean(direction)) if direction else float("nan"),
        "diversity": float(np.mean(per_prompt)) if per_prompt else float("nan"),
        "num_samples": float(len(scored)),
        "color_counted": float(len(color)),
        "color_skipped": float(len(scored) - len(color)),
        "direction_counted": float(len(direction)),
        "direction_skipped": float(len(scored) - len(direction)),
        "diversity_prompts": float(len(per_prompt)),
    }
