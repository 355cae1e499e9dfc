"""Step 2, `scene_clips` / `opensora data scenes`: detect scenes with PySceneDetect's
adaptive detector and cut them into clips, in one decoding pass.

Each decoded frame goes to the detector (downscaled, as PySceneDetect itself does) and,
once the detector can no longer put a cut before it (it decides `event_buffer_length`
frames late), to the encoder of the clip it belongs to. Clips are re-encoded (codec
from `clips.codec`) so cuts are frame-accurate: a clip holds exactly the frames of its
scene piece. Encoding runs on a background thread (the codecs release the GIL), so it
overlaps with decoding and detection.

Where it is exact (`clips.stream_copy`), a piece is copied instead of encoded, which
costs no encoding and loses nothing:

- mp4/mov sources (`COPY_FORMATS`): a piece that starts on a keyframe (there a clean
  random-access point) and whose frames are one unbroken run of packets, which is what
  encoders write at scene cuts, is copied into an mp4. A piece that turns out not to be
  one run (a B-frame across its end) is encoded from its frames, kept while they fit in
  `COPY_BUFFER_BYTES`, else decoded again from its keyframe.
- AVI sources (`POSITION_FORMATS`): the n-th packet carries the n-th frame, but
  keyframe flags and timestamps cannot be trusted. A piece starting on a flagged packet
  is copied by position into an AVI and decoded on the encoder thread; it is kept only
  when it gives the piece's frames again (same count, same `frame_signature` for each),
  else decoded again from the source and encoded, and nothing more is copied from it.

Scenes longer than `max_frames` are split into
consecutive pieces; a piece shorter than `min_frames` is dropped (and recorded) before
any encoding is spent on it.

A video with a display matrix (phone footage: coded sideways, shown turned; or
mirrored), with non-square pixels (DVD, DV and HDV footage: 720x480 shown 854x480) or
interlaced (DV, broadcast 1080i) is cut as a player shows it: each frame is
deinterlaced, resampled to square pixels and laid out by the matrix before detection,
scoring and encoding, and nothing is copied from it (a copy holds the coded frames and
the tags, which training's decoding does not apply).

Packets that fail to decode are skipped (:class:`FrameDecoder`): the frames lost are a
hard boundary, like a cut, so no clip holds frames from both sides of the damage and
each clip's frames are consecutive source frames. Nothing is copied from a video past
its first damage.

Given a :class:`Sampler`, the cutter also keeps each frame's luma (about
`Sampler.size` px at most) until its piece ends, then hands the frames at the sampler's
positions to `Sampler.take`: the weights-free scorers score a clip without decoding it
again. Memory is bounded by `min_frames` plus the detector's delay and the encoder's
queue in full frames, `COPY_BUFFER_BYTES` of frames of a piece to copy, plus
`max_frames` small luma frames with a sampler, whatever the video length.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import queue
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector

from opensora_core.data.config import ClipsConfig, ScenesConfig
from opensora_core.data.decoding import (
    POSITION_FORMATS,
    Deinterlacer,
    FrameDecoder,
    Gap,
    video_stream,
)
from opensora_core.data.frame_arrays import (
    Orientation,
    display_orientation,
    frame_array,
    pixel_aspect,
    square_pixels,
)
from opensora_core.data.scoring.base import ClipSamples, frame_luma, full_range, plane_view
from opensora_core.utils.atomic import atomic_path

log = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 160
ENCODE_QUEUE = 16  # frames waiting for the encoder thread at most
# Decoded frames kept while a piece may be copied, so that one whose packets turn out
# not to be one run (B-frames across its end) is encoded without decoding it again.
COPY_BUFFER_BYTES = 64 << 20
# Containers whose keyframe flags are clean random-access points (ISO BMFF sync samples)
# and whose packets carry presentation timestamps; codecs mp4 can hold.
COPY_FORMATS = {"mov", "mp4"}
COPY_CODECS = {"h264", "hevc", "mpeg4", "av1"}
# From containers whose n-th packet carries the n-th frame but whose keyframe flags and
# timestamps cannot be trusted (`POSITION_FORMATS`, AVI), a piece starting on a flagged
# packet is copied by position into the same container, any codec, and kept only when
# decoding the copy gives the frames the source gave (see `frame_signature`).
SIGNATURE_ROWS = 8  # a frame signature reads every 8th row of each plane


@dataclass
class Sampler:
    """What the cutter keeps for scoring: the luma of each frame, about `size` px on its
    longer side at most (:func:`frame_luma`), and for a finished clip of `n` frames the
    frames at `positions(n)`, passed with the clip to `take`."""

    size: int
    positions: Callable[[int], set[int]]
    take: Callable[[Clip, ClipSamples], None]
    # Called once the last clip was taken, before waiting for the encoder to finish.
    done: Callable[[], None] | None = None


@dataclass
class Clip:
    clip_id: str
    file: str  # name inside the partition's clip folder
    scene: int
    start_frame: int  # in the source, inclusive
    end_frame: int  # in the source, exclusive
    num_frames: int
    height: int
    width: int
    fps: float
    thumbnail: str
    stream_copy: bool = False  # packets copied from the source, not re-encoded


@dataclass
class SceneCut:
    """Outcome of cutting one video."""

    clips: list[Clip] = field(default_factory=list)
    scenes: list[tuple[int, int]] = field(default_factory=list)  # detected, [start, end)
    dropped: list[dict] = field(default_factory=list)  # pieces not written, with reasons
    decoded_frames: int = 0
    gaps: list[Gap] = field(default_factory=list)  # source frames lost to damage
    decode_error: str | None = None  # what was lost and why decoding stopped, if anything


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


class _EncodeThread:
    """Runs the clip writers' encoding calls, in order, on one background thread; the
    bounded queue keeps decoding at most `ENCODE_QUEUE` frames ahead of encoding."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=ENCODE_QUEUE)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="clip-encoder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error, drain without working
                try:
                    item[0](*item[1:])
                except BaseException as err:  # noqa: BLE001 - re-raised on the caller's thread
                    self.error = err

    def submit(self, *call) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(call)

    def finish(self) -> None:
        """Wait for every submitted call; re-raise the first error."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _open_stream(container: av.container.OutputContainer, rate: Fraction, width: int, height: int,
                 clips: ClipsConfig) -> av.video.stream.VideoStream:
    stream = container.add_stream(clips.codec, rate=rate)
    # 4:2:0 needs even sides; the encoder's scaler drops the odd pixel.
    stream.width, stream.height = width - width % 2, height - height % 2
    stream.pix_fmt = "yuv420p"
    # One encoder thread: encoding already runs beside decoding and scoring, and the
    # codec's own worker threads only add switching (Megamind.avi: ~6% less wall time,
    # ~10% less CPU than the codec's automatic thread count).
    stream.codec_context.thread_count = 1
    if clips.codec == "libx264":
        stream.options = {"crf": str(clips.crf), "preset": clips.preset}
    else:  # mpeg4: a constant quantiser (qmin = qmax pins it whatever the frame's own quality)
        context = stream.codec_context
        context.qscale = True
        context.qmin = context.qmax = context.global_quality = clips.qscale
        context.gop_size = clips.gop
    return stream


class _ClipWriter:
    """Clip writer fed with decoded frames, encoding on the `_EncodeThread`; the file is
    written under a temporary name and renamed once complete."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, clips: ClipsConfig,
                 encoder: _EncodeThread) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = _open_stream(self.container, rate, width, height, clips)
        self.time_base = 1 / rate
        self.encoder = encoder
        self.reformatter = VideoReformatter()  # on the encoder thread
        self.count = 0
        self.height, self.width = self.stream.height, self.stream.width

    stream_copy = False

    def write(self, frame: av.VideoFrame) -> None:
        self.encoder.submit(self._encode, frame, self.count)
        self.count += 1

    def write_all(self, frames: list[av.VideoFrame]) -> None:
        """Frames already held in memory, as one item of the encoder's queue (so that
        handing them over does not wait for the encoder)."""
        self.encoder.submit(self._encode_all, frames, self.count)
        self.count += len(frames)

    def _encode_all(self, frames: Iterable[av.VideoFrame], first: int) -> None:
        for pts, frame in enumerate(frames, first):
            self._encode(frame, pts)

    def _encode(self, frame: av.VideoFrame, pts: int) -> None:
        if frame.format.name != "yuv420p" or frame.color_range == ColorRange.JPEG:
            # Into the clip's format at limited range, as the clip is tagged (the encoder
            # would keep full-range values under a limited-range tag: blacks and whites clipped).
            frame = self.reformatter.reformat(frame, format="yuv420p", dst_color_range=ColorRange.MPEG)
        frame.pts = pts
        frame.time_base = self.time_base
        frame.pict_type = 0  # let the encoder choose frame types, not copy the source's
        self.container.mux(self.stream.encode(frame))

    def close(self, keep: bool) -> None:
        self.encoder.submit(self._close, keep)

    def _close(self, keep: bool) -> None:
        try:
            if keep:
                self.container.mux(self.stream.encode())
        finally:
            self.container.close()
        if keep:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """After a failure, on the caller's thread once the encoder has stopped."""
        with contextlib.suppress(Exception):  # a half-written file is removed either way
            self.container.close()
        self.tmp.unlink(missing_ok=True)


class _PacketLog:
    """The source's packets in decode order, kept while a piece may still be copied
    from them: from the oldest frame that may start or belong to such a piece, and every
    packet whose frame has not come out of the decoder yet. Unusable (nothing is copied
    from this video) once a packet lacks a timestamp or repeats one, or too many wait."""

    def __init__(self, limit: int) -> None:
        # decode index -> (pts, packet); the pts kept apart: a copy writer shifts its packets'.
        self.packets: dict[int, tuple[int, av.Packet]] = {}
        self.index_of: dict[int, int] = {}  # pts -> decode index
        self.unseen: set[int] = set()  # decode indices whose frame has not been output
        self.next = 0  # decode index of the next packet
        self.oldest = 0  # no packet before this decode index is kept
        self.limit = limit
        self.usable = True

    def add(self, packet: av.Packet) -> None:
        if not self.usable:
            return
        if packet.pts is None or packet.pts in self.index_of or len(self.packets) >= self.limit:
            self._give_up()
            return
        self.packets[self.next] = (packet.pts, packet)
        self.index_of[packet.pts] = self.next
        self.unseen.add(self.next)
        self.next += 1

    def seen(self, pts: int | None) -> None:
        index = self.index_of.get(pts)
        if index is not None:
            self.unseen.discard(index)

    def is_keyframe(self, pts: int | None) -> bool:
        index = self.index_of.get(pts)
        return self.usable and index is not None and self.packets[index][1].is_keyframe

    def run(self, pts: list[int]) -> list[av.Packet] | None:
        """The packets of the frames with timestamps `pts` (display order) when they are
        exactly one unbroken run in decode order that starts with the first frame's."""
        indices = [self.index_of.get(p) for p in pts]
        if not self.usable or None in indices:
            return None
        first = indices[0]
        if min(indices) != first or max(indices) != first + len(indices) - 1:
            return None
        return [self.packets[i][1] for i in range(first, first + len(indices))]

    def keep_from(self, pts: list[int | None]) -> None:
        """Forget packets older than those of `pts` and than any frame not yet output."""
        floor = min([self.index_of[p] for p in pts if p in self.index_of] + list(self.unseen), default=self.next)
        while self.oldest < floor:
            kept = self.packets.pop(self.oldest, None)
            if kept is not None:
                del self.index_of[kept[0]]
            self.oldest += 1

    def _give_up(self) -> None:
        self.usable = False
        self.packets.clear()
        self.index_of.clear()
        self.unseen.clear()


class _PositionLog:
    """The source's packets by position, for containers whose n-th packet carries the
    n-th frame (`POSITION_FORMATS`): kept from the oldest frame that may start or
    belong to a piece to copy, and every packet whose frame has not come out of the
    decoder yet. Unusable (nothing is copied from this video) once too many wait."""

    def __init__(self, limit: int) -> None:
        self.packets: dict[int, av.Packet] = {}
        self.next = 0  # position of the next packet
        self.oldest = 0  # no packet before this position is kept
        self.output = 0  # frames out of the decoder so far
        self.limit = limit
        self.usable = True

    def add(self, packet: av.Packet) -> None:
        if not self.usable:
            return
        if len(self.packets) >= self.limit:
            self.usable = False
            self.packets.clear()
            return
        self.packets[self.next] = packet
        self.next += 1

    def seen(self, index: int) -> None:
        self.output = max(self.output, index + 1)

    def is_keyframe(self, index: int) -> bool:
        return self.usable and index in self.packets and self.packets[index].is_keyframe

    def run(self, indices: list[int]) -> list[av.Packet] | None:
        """The packets at the positions of frames `indices` (consecutive)."""
        if not self.usable or any(i not in self.packets for i in indices):
            return None
        return [self.packets[i] for i in indices]

    def keep_from(self, indices: list[int | None]) -> None:
        """Forget packets before the frames `indices` and before any frame not yet output."""
        floor = min([i for i in indices if i is not None], default=self.output)
        while self.oldest < min(floor, self.output):
            self.packets.pop(self.oldest, None)
            self.oldest += 1


def frame_signature(frame: av.VideoFrame) -> int:
    """A checksum of a decoded frame: CRC-32 of every `SIGNATURE_ROWS`-th row of each
    plane, whole (one row in every band of 8, the block height of the codecs; ~40 us a
    frame at 720x528). Decoders are bit-exact, so the same packets give the same
    signature; a frame decoded without its references (a copy that does not start on a
    clean random-access point) or a frame that moved to another position differs across
    its whole picture."""
    crc = zlib.crc32(f"{frame.format.name} {frame.width}x{frame.height}".encode())
    sizes = _bytes_per_pixel(frame.format.name)
    for index, plane in enumerate(frame.planes):  # a palette is a plane too (pal8)
        size = sizes[index] if index < len(sizes) else 4
        data = np.frombuffer(plane, np.uint8)[: plane.height * plane.line_size].reshape(plane.height, plane.line_size)
        crc = zlib.crc32(np.ascontiguousarray(data[::SIGNATURE_ROWS, : min(plane.width * size, plane.line_size)]), crc)
    return crc


@functools.lru_cache(maxsize=64)
def _bytes_per_pixel(pixel_format: str) -> tuple[int, ...]:
    """Bytes a pixel takes in each plane of `pixel_format` (1 at least)."""
    components = av.VideoFormat(pixel_format).components
    planes = max(c.plane for c in components) + 1
    return tuple(sum((c.bits + 7) // 8 for c in components if c.plane == i) or 1 for i in range(planes))


def _decoded_signatures(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        stream = video_stream(container)
        stream.codec_context.thread_count = 1  # on the encoder thread, beside decoding and scoring
        return [frame_signature(frame) for frame in container.decode(stream)]


class _CopyWriter:
    """A clip written from the source's packets (on the `_EncodeThread`, in order with
    the encoded clips), timestamps shifted to start at zero; renamed once complete.

    For a source copied by position (`_CopySource.by_position`) the copy is decoded and
    kept only when it gives the frames of the piece (`signatures`, one per frame, from
    the first decode); otherwise, or when the container refuses the packets, the piece
    is decoded again from the source and encoded (`reencode`), and the source copies
    nothing more (its packets evidently do not map to frames one to one). A piece whose
    frames are not one run of packets (`packets` None) is decoded again and encoded
    the same way, here too on the encoder thread rather than holding up decoding."""

    def __init__(self, path: Path, source: _CopySource, packets: list[av.Packet] | None, start: int, count: int,
                 height: int, width: int, encoder: _EncodeThread, signatures: list[int] | None,
                 reencode: Callable[[], _ClipWriter]) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.count, self.height, self.width = count, height, width
        self.stream_copy = True
        self.source, self.signatures, self.reencode = source, signatures, reencode
        self.fallback: _ClipWriter | None = None
        encoder.submit(self._write, packets, start)

    def _write(self, packets: list[av.Packet] | None, start: int) -> None:
        if packets is None:
            log.debug("%s: its frames are not one run of packets; decoded again and encoded", self.path.name)
        elif self.signatures is None:
            self._mux(packets, start)
            os.replace(self.tmp, self.path)
            return
        else:
            problem = self._verify(packets, start)
            if problem is None:
                os.replace(self.tmp, self.path)
                return
            self.tmp.unlink(missing_ok=True)
            self.source.exact = False
            log.info("%s: %s; decoded again and encoded, and nothing more copied from %s",
                     self.path.name, problem, self.source.path.name)
        self.fallback = self.reencode()
        self.path, self.stream_copy = self.fallback.path, False
        self.height, self.width = self.fallback.height, self.fallback.width

    def _verify(self, packets: list[av.Packet], start: int) -> str | None:
        """Write the copy; what is wrong with it, if anything."""
        try:
            self._mux(packets, start)
            decoded = _decoded_signatures(self.tmp)
        except av.FFmpegError as err:
            return f"the copy could not be written or read: {err}"
        if len(decoded) != len(self.signatures):
            return f"the copy decodes to {len(decoded)} frames, not {len(self.signatures)}"
        if decoded != self.signatures:
            first = next(i for i, (a, b) in enumerate(zip(decoded, self.signatures, strict=True)) if a != b)
            return f"frame {first} of the copy differs from the source's"
        return None

    def _mux(self, packets: list[av.Packet], start: int) -> None:
        with av.open(str(self.tmp), mode="w", format=self.source.muxer) as container:
            stream = container.add_stream_from_template(self.source.stream)
            for packet in packets:
                if packet.pts is not None:
                    packet.pts -= start
                if packet.dts is not None:
                    packet.dts -= start
                packet.stream = stream
                container.mux(packet)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        if self.fallback is not None:
            self.fallback.discard()


@dataclass
class _CopySource:
    """What copying needs of the source: its path (to decode a piece again when it
    cannot be copied), its video stream, the packet log, and how pieces map to packets:
    by timestamp (mp4/mov) or by position (`POSITION_FORMATS`, copies verified)."""

    path: Path
    stream: av.video.stream.VideoStream
    packets: _PacketLog | _PositionLog
    by_position: bool = False
    # False once packets may not map to frames as counted: a copy by position did not
    # decode to its piece, or a packet failed to decode.
    exact: bool = True

    @property
    def muxer(self) -> str:
        return "avi" if self.by_position else "mp4"

    def key(self, index: int, frame: av.VideoFrame) -> int | None:
        """What identifies a frame's packet: its position or its timestamp."""
        return index if self.by_position else frame.pts

    def starts_copy(self, key: int | None) -> bool:
        return self.exact and self.packets.is_keyframe(key)

    def decode_again(self, keys: list[int]):
        """The frames `keys` (timestamps, or positions for a source copied by position),
        decoded again."""
        if self.by_position:
            yield from self._decode_positions(keys[0], keys[-1] + 1)
        else:
            yield from self._decode_timestamps(keys)

    def _decode_positions(self, start: int, end: int):
        """Frames `start` to `end` (exclusive), decoded from the start of the file (where
        timestamps cannot be trusted, neither can seeking)."""
        found = 0
        with av.open(str(self.path)) as container:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index >= start:
                    found += 1
                    yield frame
                    if index + 1 >= end:
                        return
        raise RuntimeError(f"{self.path}: {end - start - found} frames of a piece did not decode a second time")

    def _decode_timestamps(self, pts: list[int]):
        """The frames with timestamps `pts`, decoded again from the keyframe before them
        (from the start of the file where seeking fails or lands past the first of them)."""
        wanted, found = set(pts), 0
        for seek in (True, False):
            with av.open(str(self.path)) as container:
                stream = video_stream(container)
                stream.thread_type = "AUTO"
                frames = container.decode(stream)
                if seek:
                    try:
                        container.seek(pts[0], stream=stream, backward=True)
                        first = next(frames, None)
                    except av.FFmpegError:
                        continue
                    if first is None or first.pts is None or first.pts > pts[0]:
                        continue
                else:
                    first = next(frames, None)
                for frame in itertools.chain([first] if first is not None else [], frames):
                    if frame.pts in wanted:
                        found += 1
                        yield frame
                        if found == len(wanted):
                            return
            break
        raise RuntimeError(f"{self.path}: {len(wanted) - found} frames of a piece did not decode a second time")


@dataclass
class _PieceToCopy:
    """The current piece while it may be copied: its frames' keys (`_CopySource.key`),
    their signatures where the copy is to be verified, and the frames themselves while
    they fit in `COPY_BUFFER_BYTES` where it is not (a piece that turns out not to be
    one run of packets is encoded from them)."""

    height: int
    width: int
    verify: bool
    keys: list[int] = field(default_factory=list)
    signatures: list[int] | None = None
    frames: list[av.VideoFrame] | None = None
    frame_bytes: int = 0

    def __post_init__(self) -> None:
        if self.verify:
            self.signatures = []
        else:
            self.frames = []

    def add(self, key: int, frame: av.VideoFrame) -> None:
        self.keys.append(key)
        if self.signatures is not None:
            self.signatures.append(frame_signature(frame))
        if self.frames is not None:
            self.frame_bytes += sum(plane.buffer_size for plane in frame.planes)
            if self.frame_bytes <= COPY_BUFFER_BYTES:
                self.frames.append(frame)
            else:  # too large to keep: decoded again if it cannot be copied
                self.frames = None


class _Cutter:
    """Routes frames into scene pieces: buffers the first `min_frames` of a piece (a
    shorter piece costs no encoding), then encodes the rest as it arrives. A piece that
    starts on a keyframe of a copyable source (`source`) only notes its frames' keys
    (and signatures, where the copy is to be verified) and is copied when it ends. With
    a sampler, keeps every frame's luma until the piece ends. A clip's file, size and
    whether it was copied are final once `finish` returns (a copy that fails its
    verification is encoded instead)."""

    def __init__(self, out_dir: Path, prefix: str, rate: Fraction, scenes: ScenesConfig, clips: ClipsConfig,
                 result: SceneCut, sampler: Sampler | None = None, source: _CopySource | None = None) -> None:
        self.out_dir, self.prefix, self.rate = out_dir, prefix, rate
        self.scenes_cfg, self.clips_cfg, self.result = scenes, clips, result
        self.sampler = sampler
        self.source = source
        self.scene_index = 0
        self.scene_start = 0
        self.piece_start = 0
        self.buffer: list[av.VideoFrame] = []
        self.to_copy: _PieceToCopy | None = None  # the current piece, while it is to be copied
        self.lumas: list[tuple[np.ndarray, bool]] = []  # the current piece's, with a sampler
        self.writer: _ClipWriter | None = None
        self.writers: list[_ClipWriter | _CopyWriter] = []
        self.written: list[tuple[Clip, _ClipWriter | _CopyWriter]] = []
        self.encoder = _EncodeThread()
        self.thumbnail: np.ndarray | None = None  # BGR, of the current piece's first frame

    def add(self, index: int, frame: av.VideoFrame, luma: tuple[np.ndarray, bool] | None = None) -> None:
        if luma is not None:
            self.lumas.append(luma)
        if self.writer is None and self.to_copy is None and not self.buffer:  # a piece starts
            self.piece_start = index
            if self.source is not None and self.source.starts_copy(self.source.key(index, frame)):
                self.to_copy = _PieceToCopy(frame.height, frame.width, verify=self.source.by_position)
                self.thumbnail = thumbnail(frame)
        if self.to_copy is not None:
            self.to_copy.add(self.source.key(index, frame), frame)
        elif self.writer is None:
            self.buffer.append(frame)
            if len(self.buffer) >= self.scenes_cfg.min_frames:
                self._open(frame)
        else:
            self.writer.write(frame)
        if self._piece_length() >= self.scenes_cfg.max_frames:
            self._close_piece(index + 1)

    def end_scene(self, end: int, next_start: int | None = None) -> None:
        """End the scene at `end`; the next one starts there, or at `next_start` where
        frames were lost in between."""
        self._close_piece(end)
        self.result.scenes.append((self.scene_start, end))
        self.scene_index += 1
        self.scene_start = end if next_start is None else next_start

    def _piece_length(self) -> int:
        if self.to_copy is not None:
            return len(self.to_copy.keys)
        return self.writer.count if self.writer is not None else len(self.buffer)

    def _clip_path(self, suffix: str = ".mp4") -> Path:
        return self.out_dir / f"{self.prefix}-{len(self.result.clips):04d}{suffix}"

    def _open(self, frame: av.VideoFrame) -> None:
        self.thumbnail = thumbnail(self.buffer[0])
        self.writer = _ClipWriter(self._clip_path(), frame.width, frame.height, self.rate, self.clips_cfg,
                                  self.encoder)
        self.writers.append(self.writer)
        self.writer.write_all(self.buffer)
        self.buffer = []

    def _copy(self, piece: _PieceToCopy) -> _ClipWriter | _CopyWriter:
        """Copy `piece`; when its packets are not one run, it is encoded from its frames
        where they were kept, else decoded again."""
        keys, height, width = piece.keys, piece.height, piece.width
        packets = self.source.packets.run(keys)
        if packets is None and piece.frames is not None:
            writer = _ClipWriter(self._clip_path(), width, height, self.rate, self.clips_cfg, self.encoder)
            self.writers.append(writer)
            writer.write_all(piece.frames)
            writer.close(keep=True)
            return writer
        start = keys[0]
        if packets is not None and self.source.by_position:  # shift to the first packet's decode time
            start = next((t for t in (packets[0].dts, packets[0].pts) if t is not None), 0)
        reencode = functools.partial(self._encode_again, self._clip_path(), keys, height, width)
        writer = _CopyWriter(self._clip_path(f".{self.source.muxer}"), self.source, packets, start, len(keys),
                             height, width, self.encoder, piece.signatures, reencode)
        self.writers.append(writer)
        return writer

    def _encode_again(self, path: Path, keys: list[int], height: int, width: int) -> _ClipWriter:
        """On the encoder thread: the piece `keys` decoded again and encoded into `path`."""
        writer = _ClipWriter(path, width, height, self.rate, self.clips_cfg, self.encoder)
        try:
            writer._encode_all(self.source.decode_again(keys), 0)
            writer.count = len(keys)
            writer._close(keep=True)
        except BaseException:
            writer.discard()
            raise
        return writer

    def _close_piece(self, end: int) -> None:
        lumas, self.lumas = self.lumas, []
        piece, self.to_copy = self.to_copy, None
        if piece is not None and len(piece.keys) >= self.scenes_cfg.min_frames:
            writer = self._copy(piece)
        elif piece is None and self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close(keep=True)
        else:  # too short: no clip
            length = len(piece.keys) if piece is not None else len(self.buffer)
            if length:
                self.result.dropped.append({
                    "scene": self.scene_index, "start_frame": self.piece_start, "end_frame": end,
                    "reason": f"{length} frames < min_frames {self.scenes_cfg.min_frames}",
                })
            self.buffer = []
            return
        n = len(self.result.clips)
        name = f"{self.prefix}-{n:04d}"
        _, jpeg = cv2.imencode(".jpg", self.thumbnail)
        with atomic_path(self.out_dir / f"{name}.jpg") as tmp:
            tmp.write_bytes(jpeg.tobytes())
        clip = Clip(
            clip_id=name, file=writer.path.name, scene=self.scene_index, start_frame=end - writer.count,
            end_frame=end, num_frames=writer.count, height=writer.height, width=writer.width,
            fps=float(self.rate), thumbnail=f"{name}.jpg", stream_copy=writer.stream_copy,
        )
        self.result.clips.append(clip)
        self.written.append((clip, writer))
        if self.sampler is not None:
            # The piece's lumas are its last `count` frames (the buffered ones included).
            lumas = lumas[len(lumas) - clip.num_frames :]
            samples = ClipSamples(name, clip.num_frames, {
                p: full_range(*lumas[p]) for p in sorted(self.sampler.positions(clip.num_frames))})
            self.sampler.take(clip, samples)

    def oldest_needed(self) -> int | None:
        """The key of the frame from which the current piece may still be copied."""
        return self.to_copy.keys[0] if self.to_copy is not None and self.to_copy.keys else None

    def finish(self) -> None:
        """Wait until every clip file is written; each clip then names what its writer
        ended with."""
        self.encoder.finish()
        for clip, writer in self.written:
            clip.file, clip.stream_copy = writer.path.name, writer.stream_copy
            clip.height, clip.width = writer.height, writer.width

    def abort(self) -> None:
        with contextlib.suppress(BaseException):  # the original error is the one to report
            self.encoder.finish()
        for writer in self.writers:
            if not writer.path.exists():
                writer.discard()
        self.writer = None


def cut_scenes(video: str | Path, out_dir: str | Path, prefix: str, scenes: ScenesConfig | None = None,
               clips: ClipsConfig | None = None, fps: float | None = None,
               sampler: Sampler | None = None, progress: Callable[[int], object] | None = None) -> SceneCut:
    """Detect scenes in `video` and write one mp4 per scene piece into `out_dir`
    (`<prefix>-0000.mp4`, ... with a `.jpg` thumbnail each). With a `sampler`, each
    clip's sample frames go to `sampler.take` as soon as its piece ends (its file may
    still be being encoded; all are complete when this returns).

    A packet that fails to decode is skipped: the frames lost with it end the scene
    (no clip spans them; start and end frames count them in), the good scenes on both
    sides are kept, and what was lost, where, is recorded (`gaps`, and `decode_error`
    in words, with why decoding stopped early, if it did). A video is cut as a player
    shows it (see the module docstring): its clips' sizes are the displayed ones.
    `progress` is called with 1 for each frame decoded (a progress bar's `update`).
    """
    scenes = scenes or ScenesConfig()
    clips = clips or ClipsConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = SceneCut()
    with av.open(str(video)) as container:
        stream = video_stream(container)
        stream.thread_type = "AUTO"
        rate = Fraction(fps).limit_denominator(1001) if fps else (stream.average_rate or Fraction(24))
        rate = Fraction(rate).limit_denominator(1001)
        def new_detector() -> _Detector:
            return _Detector(adaptive_threshold=scenes.threshold, min_scene_len=scenes.min_scene_len,
                             window_width=scenes.window_width, min_content_val=scenes.min_content_val)

        detector = new_detector()
        lag = detector.event_buffer_length
        source = None
        formats, limit = set(container.format.name.split(",")), 2 * scenes.max_frames + 64
        if clips.stream_copy and formats & COPY_FORMATS and stream.codec_context.name in COPY_CODECS:
            source = _CopySource(Path(video), stream, _PacketLog(limit))
        elif clips.stream_copy and formats & POSITION_FORMATS:
            source = _CopySource(Path(video), stream, _PositionLog(limit), by_position=True)
        cutter = _Cutter(out_dir, prefix, rate, scenes, clips, result, sampler, source)
        decoder, deinterlacer = FrameDecoder(stream), Deinterlacer(stream)
        detector_fps = float(rate)  # the detector counts frames; a float rate makes its timecodes cheaper
        pending: deque[tuple] = deque()
        size, rotation, aspect, last = None, 0, None, -1
        resampler = VideoReformatter()  # this video's: one swscale set-up for every frame

        def route(cuts: list[int]) -> None:
            for cut in sorted(cuts):
                while pending and pending[0][0] < cut:
                    cutter.add(*pending.popleft())
                if cut > cutter.scene_start:
                    cutter.end_scene(cut)

        def end_run(end: int, next_start: int | None = None) -> None:
            """No frame follows `end - 1` (a gap or the end of the video): the detector's
            last cuts, the frames it held back, and the scene ends."""
            route([c.frame_num for c in detector.post_process(FrameTimecode(end - 1, detector_fps))])
            while pending:
                cutter.add(*pending.popleft())
            cutter.end_scene(end, next_start)

        def logged(demuxed: Iterable[av.Packet]) -> Iterable[av.Packet]:
            for packet in demuxed:
                if cutter.source is not None and packet.size:
                    cutter.source.packets.add(packet)
                yield packet

        try:
            for index, frame in deinterlacer.frames(decoder.frames(logged(container.demux(stream)))):
                if last < 0:  # the first frame: how the video is shown
                    cutter.scene_start = index
                    rotation = display_orientation(frame)  # false when shown as coded
                    aspect = pixel_aspect(stream)  # None for square pixels
                    if rotation or aspect or deinterlacer.active:
                        cutter.source = None
                elif deinterlacer.active and cutter.source is not None and cutter.source.exact:
                    cutter.source.exact = False  # interlaced from here on: no copy starts any more
                if last >= 0 and index in decoder.gap_ends:  # lost frames: a hard boundary
                    end_run(last + 1, index)
                    detector = new_detector()
                    if cutter.source is not None:
                        cutter.source.exact = False
                if aspect:
                    frame = square_pixels(frame, aspect, resampler)
                if rotation:
                    frame = upright(frame, rotation)
                if size is None:
                    size = detection_size(frame.width, frame.height, scenes.analysis_width)
                small = detection_frame(frame, size)
                cuts = detector.process_frame(FrameTimecode(index, detector_fps), small)
                if sampler is None:
                    pending.append((index, frame))
                else:
                    pending.append((index, frame, frame_luma(frame, sampler.size)))
                route([c.frame_num for c in cuts])
                # The detector can no longer put a cut at or before index - lag.
                while pending and pending[0][0] <= index - lag:
                    cutter.add(*pending.popleft())
                if cutter.source is not None:
                    cutter.source.packets.seen(cutter.source.key(index, frame))
                    cutter.source.packets.keep_from([cutter.oldest_needed(),
                                                     cutter.source.key(*pending[0][:2]) if pending else None])
                last = index
                if progress is not None:
                    progress(1)
            result.decoded_frames, result.gaps, result.decode_error = decoder.decoded, decoder.gaps, decoder.problems()
            if last >= 0:
                end_run(last + 1)
            if sampler is not None and sampler.done is not None:
                sampler.done()
            cutter.finish()
        except BaseException:
            cutter.abort()
            raise
    return result
