"""Pieces copied from the source's packets instead of encoded, where that is exact:
mp4/mov sources by timestamp (:class:`_PacketLog`), AVI sources by position
(:class:`_PositionLog`, each copy verified by :func:`frame_signature`); see the
package docstring."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from opensora_core.curation.config import ClipsConfig, ScenesConfig
from opensora_core.curation.scenes.encoding import _ClipWriter, _EncodeThread
from opensora_core.data.decoding import POSITION_FORMATS, video_stream

log = logging.getLogger(__name__)

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


def _copy_source(video: str | Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 scenes: ScenesConfig, clips: ClipsConfig) -> _CopySource | None:
    """Where pieces of `video` may be copied from (`clips.stream_copy`), or None."""
    formats, limit = set(container.format.name.split(",")), 2 * scenes.max_frames + 64
    if clips.stream_copy and formats & COPY_FORMATS and stream.codec_context.name in COPY_CODECS:
        return _CopySource(Path(video), stream, _PacketLog(limit))
    if clips.stream_copy and formats & POSITION_FORMATS:
        return _CopySource(Path(video), stream, _PositionLog(limit), by_position=True)
    return None
