"""Synthetic captioned data: coloured shapes moving over plain backgrounds, and still
images of shapes.

Used where no real footage is available (a user's machine without the shared test
videos) and as the demo dataset, whose prompts ("a red circle moving left") can be
checked from pixels alone: the object's colour by its hue, its direction by where it
goes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
# Dark neutral greys: an object's colour is the only saturated thing in the frame, and
# every colour stays brighter than the background in luma (optical flow reads luma).
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((24, 24, 32), (40, 40, 40), (12, 12, 12), (32, 28, 24))


# `make demo`'s training set: every (colour, shape, direction) but the held-out ones
# that the evaluation prompts name, twice over, in clips short enough for fast motion
# (pixels per frame at 64 px) to stay in the frame, and stills of every colour and
# shape. bench/prompt_following.py measures the choices.
DEMO_DATASET = {"videos": 112, "images": 21, "num_frames": 10, "speed": (3.5, 5.0), "hold_out": True}


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean `[side, side]` footprint of `shape` inscribed in its bounding square."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        r = side / 2
        return (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(xx - side / 2) <= yy / 2
    raise ValueError(f"unknown shape {shape!r}; choose from {list(SHAPES)}")


def _check(color: str, direction: str | None, shape: str) -> None:
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; choose from {sorted(COLORS)}")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose from {sorted(DIRECTIONS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {list(SHAPES)}")


def moving_shape_clip(
    num_frames: int = 16,
    height: int = 64,
    width: int = 64,
    color: str = "red",
    direction: str = "right",
    shape: str = "square",
    speed: float = 2.0,
    background: tuple[int, int, int] = (24, 24, 32),
    seed: int = 0,
) -> np.ndarray:
    """uint8 RGB frames `[T, H, W, 3]` of a `color` `shape` moving `direction`."""
    _check(color, direction, shape)
    rng = np.random.default_rng(seed)
    side = max(4, min(height, width) // 4)
    mask = _shape_mask(shape, side)
    dy, dx = DIRECTIONS[direction]
    travel = speed * (num_frames - 1)
    # Start where the whole path stays inside the frame.
    y0 = rng.uniform(max(0, -dy * travel), height - side - max(0, dy * travel)) if height > side + abs(dy) * travel else 0
    x0 = rng.uniform(max(0, -dx * travel), width - side - max(0, dx * travel)) if width > side + abs(dx) * travel else 0
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = background
    for t in range(num_frames):
        top = round(y0 + dy * speed * t)
        left = round(x0 + dx * speed * t)
        # Clip the footprint to the frame when the path had to leave it.
        y_lo, x_lo = max(top, 0), max(left, 0)
        y_hi, x_hi = min(top + side, height), min(left + side, width)
        if y_hi <= y_lo or x_hi <= x_lo:
            continue
        part = mask[y_lo - top : y_hi - top, x_lo - left : x_hi - left]
        frames[t, y_lo:y_hi, x_lo:x_hi][part] = COLORS[color]
    return frames


def moving_square_clip(
    num_frames: int = 16,
    height: int = 64,
    width: int = 64,
    color: str = "red",
    direction: str = "right",
    speed: float = 2.0,
    background: tuple[int, int, int] = (24, 24, 32),
    seed: int = 0,
) -> np.ndarray:
    """uint8 RGB frames `[T, H, W, 3]` of a square of `color` moving `direction`."""
    return moving_shape_clip(num_frames, height, width, color, direction, "square", speed, background, seed)


def shape_image(
    height: int = 64,
    width: int = 64,
    color: str = "red",
    shape: str = "circle",
    background: tuple[int, int, int] = (24, 24, 32),
    seed: int = 0,
) -> np.ndarray:
    """uint8 RGB `[H, W, 3]`: one `color` `shape` at a random place on a plain background."""
    _check(color, None, shape)
    rng = np.random.default_rng(seed)
    side = max(4, min(height, width) // 3)
    mask = _shape_mask(shape, side)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = background
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    image[top : top + side, left : left + side][mask] = COLORS[color]
    return image


@dataclass(frozen=True)
class SyntheticSample:
    """One written sample: its file, caption and the attributes the caption names."""

    path: str
    text: str
    color: str
    shape: str
    direction: str | None  # None for still images


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def video_caption(color: str, shape: str, direction: str) -> str:
    return f"{_article(color)} {color} {shape} moving {direction}"


def image_caption(color: str, shape: str) -> str:
    return f"{_article(color)} {color} {shape}"


def held_out_combinations() -> list[tuple[str, str, str]]:
    """The (colour, shape, direction) combinations the demo never trains on: one shape
    for every (colour, direction) pair, 28 in all, rotating through the shapes. Each
    held-out combination's colour + direction, colour + shape and shape + direction
    still occur in training with other third words, so samples of them measure
    composition, not memory."""
    colors, directions = list(COLORS), list(DIRECTIONS)
    return [(color, SHAPES[(ci + di) % len(SHAPES)], direction)
            for ci, color in enumerate(colors) for di, direction in enumerate(directions)]


def training_combinations(hold_out: bool = True) -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction), less `held_out_combinations()` when `hold_out`,
    in an order whose every short run varies all three (colour i % 7, shape i // 2 % 3,
    direction i % 4 for i = 0, 1, ...), so a small dataset still covers them."""
    held = set(held_out_combinations()) if hold_out else set()
    colors, directions = list(COLORS), list(DIRECTIONS)
    cycle = len(colors) * len(SHAPES) * len(directions)
    order = dict.fromkeys((colors[i % len(colors)], SHAPES[(i // 2) % len(SHAPES)], directions[i % len(directions)])
                          for i in range(4 * cycle))
    return [combo for combo in order if combo not in held]


def held_out_prompts() -> list[str]:
    """Captions of the held-out combinations: the demo's evaluation prompts."""
    return [video_caption(c, s, d) for c, s, d in held_out_combinations()]


def synth(
    out: str | Path,
    videos: int = 24,
    images: int = 8,
    seed: int = 0,
    num_frames: int = 16,
    height: int = 64,
    width: int = 64,
    fps: float = 8.0,
    speed: tuple[float, float] = (1.0, 2.5),
    hold_out: bool = False,
) -> list[SyntheticSample]:
    """Write a captioned synthetic dataset: `videos` mp4 clips and `images` png stills,
    each with a sidecar `.txt` caption, plus `synthetic.json` listing every sample.

    Video attributes cycle through the (colour, shape, direction) combinations before
    repeating, all of them or, with `hold_out`, all but `held_out_combinations()`; the
    speed (pixels per frame at 64 px, scaled with the size) is drawn from `speed`.
    Stills cycle through every (colour, shape): they name no direction.
    """
    from opensora_core.data.video_io import write_image, write_video
    from opensora_core.utils.atomic import write_text_atomic

    if not 0 < speed[0] <= speed[1]:
        raise ValueError(f"speed must be a range 0 < low <= high, got {speed}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    combos = training_combinations(hold_out)
    samples: list[SyntheticSample] = []
    for i in range(videos):
        color, shape, direction = combos[i % len(combos)]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        pixels_per_frame = float(rng.uniform(*speed)) * min(height, width) / 64
        frames = moving_shape_clip(num_frames, height, width, color, direction, shape, pixels_per_frame, background,
                                   seed=int(rng.integers(2**31)))
        path = out / f"video_{i:04d}_{color}_{shape}_{direction}.mp4"
        write_video(path, frames, fps=fps)
        text = video_caption(color, shape, direction)
        write_text_atomic(path.with_suffix(".txt"), text + "\n")
        samples.append(SyntheticSample(path.name, text, color, shape, direction))
    for i in range(images):
        color, shape = colors[(i * 3) % len(colors)], SHAPES[i % len(SHAPES)]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        image = shape_image(height, width, color, shape, background, seed=int(rng.integers(2**31)))
        path = out / f"image_{i:04d}_{color}_{shape}.png"
        write_image(path, image)
        text = image_caption(color, shape)
        write_text_atomic(path.with_suffix(".txt"), text + "\n")
        samples.append(SyntheticSample(path.name, text, color, shape, None))
    write_text_atomic(out / "synthetic.json", json.dumps([asdict(s) for s in samples], indent=1) + "\n")
    return samples
