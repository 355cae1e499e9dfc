"""Decoded frames as NumPy arrays, with one swscale context per thread, and as a
player shows them (display matrix: :func:`display_orientation`; non-square pixels:
:func:`pixel_aspect`).

`av.VideoFrame.to_ndarray(format="rgb24")` sets up a new swscale context for every
frame, which costs more than decoding the frame on small videos (320x240 mp4: ~1 ms a
frame against ~0.35 ms to decode it). A reformatter kept per thread reuses its context
while the frame geometry and format stay the same; the pixels are identical.
"""

from __future__ import annotations

import math
import struct
import threading
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.sidedata.sidedata import Type
from av.video.reformatter import ColorRange, VideoReformatter

_PER_THREAD = threading.local()


def _reformatter() -> VideoReformatter:
    reformatter = getattr(_PER_THREAD, "reformatter", None)
    if reformatter is None:
        reformatter = _PER_THREAD.reformatter = VideoReformatter()
    return reformatter


def frame_array(frame: av.VideoFrame, format: str = "rgb24") -> np.ndarray:
    """`frame` as a uint8 array in `format` (`rgb24` `[H, W, 3]`, `bgr24`, `gray`, ...)."""
    if frame.format.name == format:
        return frame.to_ndarray()
    return _reformatter().reformat(frame, format=format).to_ndarray()


@dataclass(frozen=True)
class Orientation:
    """How a player lays a coded frame out: mirrored left to right if `mirrored`, then
    turned counterclockwise by `turn` degrees (0, 90, 180 or 270): the eight ways a
    frame fits the pixel grid. False for a frame shown as coded."""

    turn: int = 0
    mirrored: bool = False

    def __bool__(self) -> bool:
        return bool(self.turn or self.mirrored)


def display_orientation(frame: av.VideoFrame) -> Orientation:
    """The orientation `frame` is shown in: its display matrix (FFmpeg's
    `AV_FRAME_DATA_DISPLAYMATRIX`, `a b u c d v x y w`) to the nearest quarter turn.

    The matrix takes a coded pixel (p, q), rows counted downwards, to the shown one
    (a p + c q + x, b p + d q + y). When its determinant a d - b c is negative it holds
    a mirror, undone by mirroring first (negating a and b); what remains is a turn,
    -atan2(b, a) counterclockwise (PyAV's `VideoFrame.rotation` of an unmirrored matrix;
    a phone's portrait video reads -90, i.e. 270). FFmpeg's own autorotation comes to
    the same: a matrix that mirrors left to right (a < 0, d > 0), which
    `VideoFrame.rotation` reads as a turn of 180, is shown mirrored and unturned; one
    that mirrors top to bottom (a > 0, d < 0), read as no turn, is mirrored and turned
    180; one that swaps the axes (b = c = 1) is the transpose, mirrored and turned 90.
    """
    matrix = frame.side_data.get(Type.DISPLAYMATRIX)
    if matrix is None:
        return Orientation()
    a, b, _, c, d = struct.unpack_from("=5i", matrix)  # native-endian int32, a b c d in 16.16
    mirrored = a * d < b * c
    if mirrored:
        a, b = -a, -b
    turn = round(-math.degrees(math.atan2(b, a)) / 90) % 4 * 90
    return Orientation(turn, mirrored)


# Sample aspect ratios within this of 1:1 are square (headers round, e.g. 1001:1000).
SQUARE_TOLERANCE = 0.01
# Ratios outside these are a broken header, not footage (the widest in use, 2:1, is
# anamorphic film scanned to square frames): taken as square, and the probe says so.
PLAUSIBLE_PIXEL_ASPECT = (Fraction(1, 4), Fraction(4))


def header_pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The sample (pixel) aspect ratio `stream`'s header gives: the container's first
    (mp4 `pasp`, mkv display size), then the codec's, as FFmpeg guesses it; None when
    neither gives one (0:1)."""
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if ratio is not None and ratio > 0:
            return Fraction(ratio)
    return None


def pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The width-to-height ratio of one of `stream`'s pixels when they are not square,
    else None: a DVD's 720x480 at 32:27 is shown 854x480, HDV's 1440x1080 at 4:3 as
    1920x1080. Unknown, within :data:`SQUARE_TOLERANCE` of 1:1 or outside
    :data:`PLAUSIBLE_PIXEL_ASPECT` is square."""
    ratio = header_pixel_aspect(stream)
    if ratio is None or abs(ratio - 1) <= SQUARE_TOLERANCE:
        return None
    low, high = PLAUSIBLE_PIXEL_ASPECT
    return ratio if low <= ratio <= high else None


def square_pixel_width(width: int, aspect: Fraction | None) -> int:
    """The width a `width`-pixel row is shown at with pixels of `aspect` (even, as 4:2:0
    needs; the height is kept, as players keep it)."""
    if aspect is None:
        return width
    return max(2, round(width * aspect / 2) * 2)


def square_pixels(frame: av.VideoFrame, aspect: Fraction | None, reformatter: VideoReformatter | None = None
                  ) -> av.VideoFrame:
    """`frame` resampled to square pixels (:func:`square_pixel_width`, bilinear), in
    limited-range yuv420p (what clips are encoded in; swscale cannot write every
    source's format, e.g. a palette); `frame` itself when `aspect` is None. Pass a `reformatter` kept for
    the whole video: a new one sets up swscale for every frame."""
    if aspect is None:
        return frame
    width = square_pixel_width(frame.width, aspect)
    square = (reformatter or _reformatter()).reformat(frame, width=width, height=frame.height, format="yuv420p",
                                                      interpolation="BILINEAR", dst_color_range=ColorRange.MPEG)
    square.pts = frame.pts
    if frame.time_base is not None:
        square.time_base = frame.time_base
    return square


def upright_array(frame: av.VideoFrame, format: str = "rgb24", aspect: Fraction | None = None) -> np.ndarray:
    """`frame` as :func:`frame_array` gives it, laid out as a player shows it: pixels
    of `aspect` (its stream's :func:`pixel_aspect`) made square, then
    :func:`display_orientation` applied."""
    if aspect is None:
        array = frame_array(frame, format)
    else:  # resampled and converted in one pass
        array = _reformatter().reformat(frame, width=square_pixel_width(frame.width, aspect), height=frame.height,
                                        format=format, interpolation="BILINEAR").to_ndarray()
    orientation = display_orientation(frame)
    if not orientation:
        return array
    if orientation.mirrored:
        array = array[:, ::-1]
    return np.ascontiguousarray(np.rot90(array, k=orientation.turn // 90))
