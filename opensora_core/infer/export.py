"""Writing videos and images with PyAV / Pillow, atomically."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from opensora_core.utils.atomic import atomic_path


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """`[3, T, H, W]` in [-1, 1] -> uint8 `[T, H, W, 3]`."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, T, H, W], got {tuple(video.shape)}")
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def write_video(path: str | Path, frames: np.ndarray, fps: float = 24.0, crf: int = 18) -> Path:
    """Write uint8 `[T, H, W, 3]` frames as H.264 mp4 (yuv420p; odd sizes are padded
    by one pixel because 4:2:0 needs even sides)."""
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_image(path: str | Path, frame: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")
    return path
