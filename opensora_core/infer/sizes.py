"""Target sizes for sampling: a named resolution plus an aspect ratio, or explicit pixels."""

from __future__ import annotations

import math

from opensora_core.config import RESOLUTION_AREAS

# Open-Sora writes aspect ratios as height:width ("9:16" is 240x426 at 240p).


def parse_aspect_ratio(text: str) -> float:
    """`"9:16"` (height:width) or `"0.56"` -> height / width."""
    try:
        if ":" in text:
            height, width = (float(part) for part in text.split(":"))
            ratio = height / width
        else:
            ratio = float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"aspect ratio {text!r}: expected height:width like 9:16, or a number like 0.56") from None
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"aspect ratio {text!r} must be positive")
    return ratio


def image_size(resolution: str, aspect_ratio: str, multiple: int = 16) -> tuple[int, int]:
    """(height, width) with the resolution's pixel area and the given ratio, each side
    rounded to a multiple of `multiple` (VAE downsampling x patch size)."""
    if resolution not in RESOLUTION_AREAS:
        raise ValueError(f"unknown resolution {resolution!r} (known: {', '.join(RESOLUTION_AREAS)})")
    area = RESOLUTION_AREAS[resolution]
    ratio = parse_aspect_ratio(aspect_ratio)
    height = max(multiple, round(math.sqrt(area * ratio) / multiple) * multiple)
    width = max(multiple, round(math.sqrt(area / ratio) / multiple) * multiple)
    return height, width
