"""Video and image files with PyAV / Pillow: decoding into uint8 frames fitted to a target
size, and writing (atomically)."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from opensora_core.data.decoding import Deinterlacer, video_stream
from opensora_core.data.frame_arrays import pixel_aspect, upright_array
from opensora_core.utils.atomic import atomic_path


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
