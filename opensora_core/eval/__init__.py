"""Prompt-following evaluation computable without downloaded models: the colour and
motion direction a synthetic prompt names ("a red circle moving left"), checked from
pixels, and the diversity of samples of one prompt across seeds."""

from opensora_core.eval.metrics import (
    PromptAttributes,
    classify_color,
    estimate_motion,
    evaluate_videos,
    parse_synthetic_prompt,
    sample_diversity,
    score_video,
)

__all__ = [
    "PromptAttributes",
    "classify_color",
    "estimate_motion",
    "evaluate_videos",
    "parse_synthetic_prompt",
    "sample_diversity",
    "score_video",
]
