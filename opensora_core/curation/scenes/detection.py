"""Scene detection: PySceneDetect's adaptive detector with a fast per-frame score, and
the frames it sees (downscaled, upright) and the clips' thumbnails."""

from __future__ import annotations

import av
import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector

from opensora_core.curation.scoring.base import plane_view
from opensora_core.data.frame_arrays import Orientation, frame_array

THUMBNAIL_WIDTH = 160


class _Detector(AdaptiveDetector):
    """PySceneDetect's adaptive detector with its per-frame score (mean absolute HSV
    difference to the previous frame) computed by OpenCV in one pass instead of NumPy
    per channel: the same numbers (integer sums, exact in float64), ~5x cheaper. Any
    setting the fast path does not cover (edge weights, a stats manager) takes
    PySceneDetect's own code."""

    _previous_hsv: np.ndarray | None = None

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        weights = getattr(self, "_weights", None)
        if weights is None or weights.delta_edges != 0.0 or self.stats_manager is not None:
            return super()._calculate_frame_score(timecode, frame_img)
        hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)
        previous, self._previous_hsv = self._previous_hsv, hsv
        if previous is None:
            return 0.0
        pixels = float(hsv.shape[0] * hsv.shape[1])
        hue, sat, lum = cv2.sumElems(cv2.absdiff(hsv, previous))[:3]
        components = (hue / pixels, sat / pixels, lum / pixels, 0.0)
        return sum(c * w for c, w in zip(components, weights, strict=True)) / sum(abs(w) for w in weights)


def detection_size(width: int, height: int, analysis_width: int) -> tuple[int, int]:
    """The size the detector sees a `width` x `height` video at: PySceneDetect's
    downscaling, i.e. frames at least `analysis_width` wide resized to that width (its
    factor `width / analysis_width`, height to match), narrower ones as they are. The
    height is then rounded down to a multiple of 4 and the width to one of 2, as the
    4:2:0 conversion of :func:`detection_frame` needs (720x528 -> 256x188)."""
    if width <= analysis_width:
        return width, height
    factor = width / analysis_width
    return max(2, round(width / factor) // 2 * 2), max(4, round(height / factor) // 4 * 4)


def detection_frame(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """The frame as BGR at `size` (width, height; default its own) for the detector.

    For yuv420p (most sources) the planes are resized (bilinear, as PySceneDetect
    resizes) and converted at the small size by OpenCV, several times cheaper than
    converting the full frame first; at full size too, where PyAV's conversion would
    set up a new swscale context for every frame (~1 ms at 320x240). At 720x528 ->
    256x188: ~0.26 ms a frame with the HSV conversion after it, against ~0.35 ms for
    subsampling by 2 (360x264, twice PySceneDetect's pixels).
    """
    h, w = frame.height, frame.width
    tw, th = size or (w, h)
    if frame.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0:
        y, u, v = (plane_view(frame, i) for i in range(3))
        if (tw, th) != (w, h):
            tw, th = tw // 2 * 2, th // 4 * 4
            if tw >= 2 and th >= 4:
                planes = [cv2.resize(y, (tw, th), interpolation=cv2.INTER_LINEAR)]
                planes += [cv2.resize(p, (tw // 2, th // 2), interpolation=cv2.INTER_LINEAR).reshape(-1, tw)
                           for p in (u, v)]
                return cv2.cvtColor(np.concatenate(planes), cv2.COLOR_YUV2BGR_I420)
        else:
            sh, sw = min(h, 2 * u.shape[0]) // 4 * 4, min(w, 2 * u.shape[1]) // 2 * 2
            if sh >= 4 and sw >= 2:
                i420 = np.concatenate(
                    [y[:sh, :sw], u[: sh // 2, : sw // 2].reshape(-1, sw), v[: sh // 2, : sw // 2].reshape(-1, sw)]
                )
                return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    if frame.format.name == "rgb24":  # swscale's rgb24 -> bgr24 is a slow generic path
        bgr = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_RGB2BGR)
    else:
        bgr = frame_array(frame, "bgr24")
    if (tw, th) != (w, h):
        bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_LINEAR)
    return bgr


def thumbnail(frame: av.VideoFrame) -> np.ndarray:
    """The frame as BGR `THUMBNAIL_WIDTH` px wide, through the detector's conversion
    (OpenCV from the YUV planes: a swscale context set up for one frame costs several
    milliseconds)."""
    bgr = detection_frame(frame)
    height = max(1, round(bgr.shape[0] * THUMBNAIL_WIDTH / bgr.shape[1]))
    return cv2.resize(bgr, (THUMBNAIL_WIDTH, height), interpolation=cv2.INTER_AREA)


def upright(frame: av.VideoFrame, orientation: Orientation) -> av.VideoFrame:
    """`frame` laid out as `orientation` shows it (mirrored left to right, then turned
    counterclockwise), plane by plane (~0.3 ms at 720x528). Layouts whose chroma is not
    subsampled alike both ways are converted to yuv420p first (what the clips are
    encoded in anyway)."""
    if frame.format.name not in _TURNABLE_FORMATS:
        frame = frame.reformat(format="yuv420p")
    turn = orientation.turn
    width, height = (frame.width, frame.height) if turn in (0, 180) else (frame.height, frame.width)
    turned = av.VideoFrame(width, height, frame.format.name)
    for index in range(len(frame.planes)):
        plane = plane_view(frame, index)
        if orientation.mirrored:
            plane = cv2.flip(plane, 1)
        plane_view(turned, index)[:] = cv2.rotate(plane, _TURNS[turn]) if turn else plane
    turned.pts, turned.time_base = frame.pts, frame.time_base
    turned.color_range, turned.colorspace = frame.color_range, frame.colorspace
    return turned


_TURNS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
# 8-bit planar layouts whose planes turn as they are (chroma subsampled alike both ways).
_TURNABLE_FORMATS = {"yuv420p", "yuvj420p", "yuv444p", "yuvj444p", "gray"}
