"""Target sizes for sampling: a named resolution plus an aspect ratio, or explicit pixels.

Open-Sora writes aspect ratios as height:width ("9:16" is 240x426 at 240p). Its sizes
need not be multiples of the VAE's 8 or of 8 x the patch: the latent is `side // 8`
(426 -> 53), STDiT-2 pads it to its patch and crops back, and the video comes out at
8 x the latent (240x426 -> 240x424), as Open-Sora's own does.
"""

from __future__ import annotations

import math

from opensora_core.config import RESOLUTION_AREAS
from opensora_core.data.buckets import NP_RATIOS, PIXART_RATIOS, PIXART_RESOLUTIONS
from opensora_core.models.stdit2 import VAE_DOWNSAMPLE

# A key is its ratio to two decimals (3:8 = 0.375 is "0.38"), so a ratio within this of
# a key names it.
KEY_TOLERANCE = 0.006
_BASE_KEY, _BASE_KEY_T = 0.56, 1.78  # 9:16 and 16:9, the frame an "Np" resolution is named after


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


def aspect_table(resolution: str) -> dict[float, tuple[int, int]]:
    """Open-Sora's `{height/width key: (height, width)}` for a named resolution.

    The reference gives each resolution's area and ratio keys and one entry (240p, 0.56
    -> 240x426), not the tables, so they are derived. "Np": the 9:16 key is the N x
    area/N frame the area is the product of (240 x 426 = 102240), 16:9 its transpose;
    every other key r gets sqrt(area * r) x sqrt(area / r), each side rounded to an even
    number, as Open-Sora's sides are. 256/512/1024 (PixArt's tables): the same rule with
    sides rounded to multiples of sqrt(area) / 16, PixArt's step (16, 32, 64 pixels).
    Apart from the 9:16 and 16:9 frames, entries may differ from the published tables by
    a rounding step.
    """
    if resolution not in RESOLUTION_AREAS:
        raise ValueError(f"unknown resolution {resolution!r} (known: {', '.join(RESOLUTION_AREAS)})")
    area = RESOLUTION_AREAS[resolution]
    if resolution in PIXART_RESOLUTIONS:
        step = math.isqrt(area) // 16
        return {r: (_round_to(math.sqrt(area * r), step), _round_to(math.sqrt(area / r), step)) for r in PIXART_RATIOS}
    table = {r: (_round_to(math.sqrt(area * r), 2), _round_to(math.sqrt(area / r), 2)) for r in NP_RATIOS}
    height = int(resolution.rstrip("p"))
    table[_BASE_KEY] = (height, area // height)
    table[_BASE_KEY_T] = (area // height, height)
    return table


def image_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(height, width) of the resolution's table entry for the ratio: `("240p", "9:16")`
    -> (240, 426). Ratios off the table are refused (Open-Sora samples its table's)."""
    table = aspect_table(resolution)
    ratio = parse_aspect_ratio(aspect_ratio)
    key = min(table, key=lambda k: abs(k - ratio))
    if abs(key - ratio) > KEY_TOLERANCE:
        keys = ", ".join(f"{k:.2f}" for k in table)
        raise ValueError(f"aspect ratio {aspect_ratio!r} ({ratio:.3f}) is not in {resolution}'s table "
                         f"(height/width keys: {keys}); give the height and width instead")
    return table[key]


def size_problems(height: int, width: int, downsample: int = VAE_DOWNSAMPLE) -> list[str]:
    """What is wrong with a sampling size (empty: nothing). Each side needs one latent cell;
    any larger side works (see the module docstring)."""
    return [f"{side} {value} must be at least {downsample} pixels (one latent cell of the x{downsample} VAE)"
            for side, value in (("height", height), ("width", width)) if value < downsample]


def decoded_size(height: int, width: int, downsample: int = VAE_DOWNSAMPLE) -> tuple[int, int]:
    """The size the VAE works at for a requested size: each side floored to its factor
    (the latent is side // downsample), 240x426 -> 240x424; reference frames are read at it."""
    return height // downsample * downsample, width // downsample * downsample


def _round_to(value: float, step: int) -> int:
    return max(step, round(value / step) * step)
