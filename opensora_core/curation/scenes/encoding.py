"""Clips re-encoded from decoded frames (codec from `clips.codec`), on one background
thread so that encoding overlaps with decoding and detection."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import ColorRange, VideoReformatter

from opensora_core.curation.config import ClipsConfig

ENCODE_QUEUE = 16  # frames waiting for the encoder thread at most


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
