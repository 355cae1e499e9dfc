"""Conditioned generation scored from pixels: image-to-video and extension on synthetic
combinations, built from fresh clips the model never saw.

- image-to-video: the first frame of a clip as the reference, mask strategy "0"; the
  sample is right when its object keeps the prompted colour and moves the prompted way
  (a sample that stays still moves no way).
- extension: the last `context` frames of a clip as the first frames of the sample,
  mask strategy "0,0,-context,0,context"; right when the generated frames (from the last
  given one on) keep moving the clip's way in its colour.

Every reference leaves room for the motion it asks for: the object's path over the whole
sample (for extension, the given frames and the continuation) stays inside the frame at
`room_speed` pixels a frame, as every training clip's does. An object already at the edge
it is asked to move toward could only stop or leave, which scores the evaluator, not the
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opensora_core.data.synthetic import BACKGROUNDS, SHAPES, moving_shape_clip, video_caption
from opensora_core.eval.metrics import classify_color, estimate_motion, parse_synthetic_prompt
from opensora_core.infer.mask_strategy import named_mask_strategy

CONDITIONING_KINDS = ("i2v", "extend")


def combination_of(prompt: str) -> tuple[str, str, str] | None:
    """(colour, shape, direction) a synthetic prompt names, or None when it lacks one."""
    wanted = parse_synthetic_prompt(prompt)
    shape = next((word for word in prompt.lower().split() if word in SHAPES), None)
    if wanted.color is None or wanted.direction is None or shape is None:
        return None
    return wanted.color, shape, wanted.direction


@dataclass(frozen=True)
class ConditionedCase:
    kind: str  # "i2v" or "extend"
    prompt: str
    reference: str
    mask_strategy: str
    color: str
    direction: str
    first_generated: int  # first frame scored for motion


def build_cases(
    kind: str, combinations: list[tuple[str, str, str]], folder: str | Path, num_frames: int = 8,
    height: int = 64, width: int = 64, speed: float = 4.0, context: int = 4, seed: int = 0,
    room_speed: float = 5.0,
) -> list[ConditionedCase]:
    """One case per (colour, shape, direction), its reference written under `folder`.

    `speed` (pixels a frame at 64 px) is the reference clip's motion; `room_speed` the
    fastest motion an image-to-video sample may take without leaving the frame."""
    from opensora_core.data.video_io import write_image, write_video

    if kind not in CONDITIONING_KINDS:
        raise ValueError(f"unknown conditioning kind {kind!r}; choose from {CONDITIONING_KINDS}")
    if kind == "extend" and not 1 <= context < num_frames:
        raise ValueError(f"context must be in [1, {num_frames}), got {context}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    cases = []
    for index, (color, shape, direction) in enumerate(combinations):
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        scale = min(height, width) / 64
        # The clip spans the reference and what the sample adds after it, so that path fits.
        length, clip_speed = (num_frames, room_speed) if kind == "i2v" else (2 * num_frames - context, speed)
        frames = moving_shape_clip(length, height, width, color, direction, shape, clip_speed * scale,
                                   background, seed=int(rng.integers(2**31)))
        stem = folder / f"{kind}_{index:03d}_{color}_{shape}_{direction}"
        if kind == "i2v":
            reference, first = write_image(stem.with_suffix(".png"), frames[0]), 0
            strategy = named_mask_strategy("image-to-video", num_frames, tail=1)
        else:
            reference = write_video(stem.with_suffix(".mp4"), frames[:num_frames], fps=8)
            strategy, first = named_mask_strategy("extend", num_frames, tail=context), context - 1
        cases.append(ConditionedCase(kind, video_caption(color, shape, direction), str(reference), strategy,
                                     color, direction, first))
    return cases


def score_case(video, case: ConditionedCase) -> dict:
    """Colour over the whole sample, direction over the frames from `first_generated` on."""
    from opensora_core.eval.metrics import as_uint8_frames

    frames = as_uint8_frames(video)
    color, _ = classify_color(frames[case.first_generated:])
    direction, (dx, dy) = estimate_motion(frames[case.first_generated:])
    return {"kind": case.kind, "prompt": case.prompt, "reference": case.reference,
            "mask_strategy": case.mask_strategy, "predicted_color": color, "color_correct": color == case.color,
            "predicted_direction": direction, "direction_correct": direction == case.direction,
            "flow_dx": dx, "flow_dy": dy}


def summarize(rows: list[dict]) -> dict[str, float]:
    """`{kind}_direction_accuracy` and `{kind}_color_accuracy` per kind present."""
    metrics = {}
    for kind in CONDITIONING_KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            metrics[f"{kind}_direction_accuracy"] = float(np.mean([r["direction_correct"] for r in mine]))
            metrics[f"{kind}_color_accuracy"] = float(np.mean([r["color_correct"] for r in mine]))
    return metrics
