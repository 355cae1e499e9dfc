"""Decoding videos with PyAV into uint8 frames and fitting them to a target size."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from opensora_core.data.decoding import Deinterlacer, video_stream
from opensora_core.data.frame_arrays import pixel_aspect, upright_array


class VideoDecodeError(RuntimeError):
    """A video could not be decoded (missing, corrupt, or no video stream)."""


def read_frames(path: str | Path, num_frames: int, start: int = 0, stride: int = 1) -> np.ndarray:
    """Frames `start, start+stride, ...` as uint8 RGB `[T, H, W, 3]`, as players and the
    curated clips show them: interlaced frames deinterlaced, non-square pixels made
    square, the display matrix (a phone's rotation, a mirror) applied.

    Decoding stops after `num_frames` frames, and where the frame size changes (a
    broadcast recording switching resolution: the frames of one size are one video). A
    file that ends early returns the frames it had; a file that yields none raises
    `VideoDecodeError`.
    """
    if num_frames < 1:
        raise ValueError(f"need num_frames >= 1 (got {num_frames})")
    return np.stack(list(islice(iter_frames(path, start, stride), num_frames)))


def iter_frames(path: str | Path, start: int = 0, stride: int = 1) -> Iterator[np.ndarray]:
    """`read_frames` one frame at a time, so long spans need not be held at source size."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such file")
    if stride < 1 or start < 0:
        raise ValueError(f"need stride >= 1, start >= 0 (got {stride}, {start})")
    shape = None
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container)
            if stream is None:
                raise VideoDecodeError(f"{path}: no video stream")
            stream.thread_type = "AUTO"
            aspect = pixel_aspect(stream)
            for index, frame in Deinterlacer(stream).frames(enumerate(container.decode(stream))):
                if index >= start and (index - start) % stride == 0:
                    array = upright_array(frame, aspect=aspect)
                    if shape is not None and array.shape != shape:
                        return
                    shape = array.shape
                    yield array
    except av.FFmpegError as err:
        if shape is None:
            raise VideoDecodeError(f"{path}: {err}") from err
    if shape is None:
        raise VideoDecodeError(f"{path}: no decodable frames from frame {start}")


def frames_to_tensor(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 `[T, H, W, 3]` -> float `[3, T, height, width]` in [-1, 1]: resized so the
    target is covered (aspect kept), then center-cropped."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)  # [3, T, H, W]
    src_h, src_w = video.shape[2:]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    video = F.interpolate(video.transpose(0, 1), size=(new_h, new_w), mode="bilinear", antialias=True,
                          align_corners=False).transpose(0, 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return video[:, :, top : top + height, left : left + width].clamp(-1.0, 1.0)
