"""Synthetic clips: a coloured square moving over a plain background.

Used where no real footage is available (a user's machine without the shared test
videos) and as the demo dataset whose prompts ("a red square moving left") can be
checked from pixels alone.
"""

from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


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
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; choose from {sorted(COLORS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose from {sorted(DIRECTIONS)}")
    rng = np.random.default_rng(seed)
    side = max(4, min(height, width) // 4)
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
        frames[t, max(top, 0) : top + side, max(left, 0) : left + side] = COLORS[color]
    return frames
