"""Decoding a video stream past damaged packets, with every frame numbered by its place
in the source.

A packet that fails to decode loses its frame, and the frames that depend on it: up
to the next keyframe, what the decoder gives is predicted from a lost reference and
concealed (copies of the frame before the damage, unflagged), so those count as lost
too. Decoding goes on with the next packet, so the good part after the damage is kept;
it stops once `MAX_FAILED_PACKETS` packets in a row fail (what is left is no longer
video data).

Frames are numbered in output order, so a clean file's frame n is the n-th frame
decoded. Once a packet has failed, the lost frames are counted in, so that a frame
keeps its number on either side of the damage, and the frames on either side of a gap
are known not to be neighbours (:class:`Gap`):

- by timestamp where the container's can be trusted: a frame whose timestamp is more
  than one frame duration after the previous one's follows lost frames, one whose
  timestamp is not after it is a frame from before the damage that the decoder let
  out late (H.264 with B-frames reorders wrongly after a failure), and is dropped;
- by how much the decoder's backlog grew (packets sent less frames out) where frames
  carry no timestamps (an elementary stream);
- in AVI (`POSITION_FORMATS`), whose timestamps cannot be trusted, decoding stops at
  the first packet that fails (the scenes before it are kept): the backlog numbers plain
  MPEG-4 right but XviD's packed B-frames (N-VOPs) one frame off after a damaged
  keyframe, enough for a clip to start with the last frame of the scene before.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import av.filter

MAX_FAILED_PACKETS = 32  # in a row: decoding stops there
# Containers whose n-th packet carries the n-th frame but whose timestamps cannot be
# trusted (AVI: one chunk per frame, N-VOPs included; empty chunks repeat a frame).
POSITION_FORMATS = {"avi"}


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The container's video: the video stream FFmpeg finds best (`av_find_best_stream`,
    as its player picks: not the first of several when a thumbnail track comes first),
    never an attached picture (the cover art of a music or podcast file, which FFmpeg
    shows as a one-frame video stream); None when there is no other."""
    def picture(stream) -> bool:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)

    best = container.streams.best("video")
    if best is not None and not picture(best):
        return best
    return next((stream for stream in container.streams.video if not picture(stream)), None)


# FFmpeg's AVFieldOrder values of interlaced video: tt, bb, tb, bt.
INTERLACED_FIELD_ORDERS = frozenset({2, 3, 4, 5})


def field_order_interlaced(stream: av.video.stream.VideoStream) -> bool:
    """Whether `stream`'s codec says its frames are interlaced (its field order)."""
    return int(getattr(stream.codec_context, "field_order", 0) or 0) in INTERLACED_FIELD_ORDERS


class Deinterlacer:
    """Interlaced video (DV, broadcast 1080i: each frame two fields from two instants,
    which read as a frame comb every moving edge) deinterlaced as a player does, by
    FFmpeg's yadif, one frame out for each frame in (`send_frame`), field order from
    each frame's flags (`deint=interlaced`: frames flagged progressive pass untouched).

    Whether a video is interlaced is decided before its first frame comes out, from its
    codec's field order and the flags of its first :data:`LOOKAHEAD` frames (`active`);
    a progressive one passes through untouched. A frame flagged interlaced later still
    turns deinterlacing on from there (`active` turns true). yadif looks one frame
    ahead: each frame comes out once the next one went in, with the index, timestamp
    and time base it went in with; a change of frame size or format starts a new graph
    (the frames before it flushed first), and so does nothing else.
    """

    LOOKAHEAD = 12  # frames read before deciding

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.stream = stream
        self.active: bool | None = None  # decided before the first frame comes out
        self._graph: av.filter.Graph | None = None
        self._shape: tuple | None = None
        self._waiting: deque[tuple[int, int | None, object]] = deque()  # (index, pts, time_base) in yadif

    def _new_graph(self, frame: av.VideoFrame) -> av.filter.Graph:
        graph = av.filter.Graph()
        graph.threads = 1  # beside decoding, encoding and the scorers; its own threads only switch
        source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                  time_base=frame.time_base or self.stream.time_base)
        yadif = graph.add("yadif", "mode=send_frame:parity=auto:deint=interlaced")
        sink = graph.add("buffersink")
        source.link_to(yadif)
        yadif.link_to(sink)
        graph.configure()
        return graph

    def _out(self) -> Iterator[tuple[int, av.VideoFrame]]:
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            index, pts, time_base = self._waiting.popleft()
            frame.pts = pts
            if time_base is not None:
                frame.time_base = time_base
            yield index, frame

    def _flush(self) -> Iterator[tuple[int, av.VideoFrame]]:
        if self._graph is not None:
            self._graph.push(None)
            yield from self._out()
            self._graph = None

    def _push(self, index: int, frame: av.VideoFrame) -> Iterator[tuple[int, av.VideoFrame]]:
        shape = (frame.width, frame.height, frame.format.name)
        if self._graph is None or shape != self._shape:
            yield from self._flush()
            self._graph, self._shape = self._new_graph(frame), shape
        self._waiting.append((index, frame.pts, frame.time_base))
        self._graph.push(frame)
        yield from self._out()

    def frames(self, numbered: Iterable[tuple[int, av.VideoFrame]]) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) as `numbered` gives them, deinterlaced where the video is. An
        error reading `numbered` is raised after the frames held back came out."""
        numbered = iter(numbered)
        head: list[tuple[int, av.VideoFrame]] = []
        failure: av.FFmpegError | None = None
        try:
            head.extend(itertools.islice(numbered, self.LOOKAHEAD))
        except av.FFmpegError as err:  # the frames before it still come out
            failure = err
        self.active = field_order_interlaced(self.stream) or any(f.interlaced_frame for _, f in head)
        yield from self._deinterlaced(iter(head) if failure else itertools.chain(head, numbered))
        if failure is not None:
            raise failure

    def _deinterlaced(self, numbered: Iterator[tuple[int, av.VideoFrame]]) -> Iterator[tuple[int, av.VideoFrame]]:
        try:
            for index, frame in numbered:
                if not self.active and frame.interlaced_frame:  # interlaced from here on
                    self.active = True
                if self.active:
                    yield from self._push(index, frame)
                else:
                    yield index, frame
        except GeneratorExit:  # the consumer stopped: nothing more to give
            raise
        except Exception:  # reading failed (damage): what yadif holds comes out first
            yield from self._flush()
            raise
        yield from self._flush()


@dataclass
class Gap:
    """Source frames `[start, end)` lost to damage; `end` is None where no frame decoded
    after it (the damage ran to the end, or decoding stopped). No run of frames may
    span a gap: the frames on either side of it are not neighbours."""

    start: int
    end: int | None
    failed_packets: int
    error: str | None  # the first failure's; None where frames went missing without one

    def describe(self) -> str:
        if self.end is None:
            frames = f"frames from {self.start} on"
        elif self.end > self.start:
            frames = f"frames {self.start}-{self.end - 1}" if self.end - self.start > 1 else f"frame {self.start}"
        else:
            plural = "s" if self.failed_packets != 1 else ""
            return f"{self.failed_packets} packet{plural} failed to decode but no frame was lost ({self.error})"
        if self.failed_packets:
            plural = "s" if self.failed_packets != 1 else ""
            return f"{frames} lost to damage ({self.failed_packets} packet{plural} failed to decode: {self.error})"
        return f"{frames} lost to damage (missing from the decoder's output)"


class FrameDecoder:
    """Decodes the packets of `stream` past those that fail (see the module docstring);
    what was lost is in `gaps`, why decoding ended before the end in `stopped`."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.by_position = bool(set(stream.container.format.name.split(",")) & POSITION_FORMATS)
        rate = stream.average_rate or stream.guessed_rate
        self.step = float(1 / (rate * stream.time_base)) if rate and stream.time_base else None  # a frame, in pts
        self.start_pts = stream.start_time
        self.gaps: list[Gap] = []
        self.gap_ends: set[int] = set()  # `end` of each gap: the index of the frame right after it
        self.decoded = 0  # frames given out
        self.stopped: str | None = None

    def frames(self, packets: Iterable[av.Packet]) -> Iterator[tuple[int, av.VideoFrame]]:
        """(source index, frame) for each frame that decodes. A frame right after a gap
        is the one whose index is in `gap_ends` (`gaps[-1].end` when it comes out). An error reading the packets
        (demuxing) ends decoding like the end of the file, recorded in `stopped`.

        Long on purpose: its counters change together per packet and per frame, so
        helpers would each need all of them."""
        sent = out = 0  # packets with data given to the decoder; frames out of it
        backlog = 0  # sent - out after the last packet that decoded, before any failure since
        index = 0  # source index of the next frame
        damaged = False
        awaiting_key = False  # after a failure: frames until the next keyframe are not the source's
        pending: Gap | None = None  # failed packets whose lost frames have not been placed yet
        pending_out = 0  # frames out of the decoder when the first of them failed
        failed_in_row = 0
        last_pts, last_step = None, self.step
        demuxed = iter(packets)
        while True:
            try:
                packet = next(demuxed)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as err:
                self.stopped = f"demuxing stopped after {self.decoded} decoded frames: {err}"
                break
            if packet.size:
                sent += 1
            try:
                frames = packet.decode()
            except av.FFmpegError as err:
                damaged = awaiting_key = True
                if pending is None:
                    pending, pending_out = Gap(index, None, 0, str(err)), out
                pending.failed_packets += 1
                failed_in_row += 1
                if self.by_position:
                    self.stopped = ("decoding stopped at the first damaged packet: an AVI's frames after damage "
                                    "cannot be numbered for certain")
                    break
                if failed_in_row >= MAX_FAILED_PACKETS:
                    self.stopped = f"decoding stopped after {failed_in_row} packets in a row failed to decode"
                    break
                continue
            failed_in_row = 0
            for frame in frames:
                if awaiting_key:
                    if not frame.key_frame:  # predicted from a lost reference: concealment, not the source
                        continue
                    awaiting_key = False
                out += 1
                if damaged:
                    timed = frame.pts is not None and last_step  # (an AVI stopped at its damage)
                    if timed and last_pts is not None and frame.pts <= last_pts:
                        continue  # from before a gap, let out late
                    if timed and (last_pts is not None or self.start_pts is not None):
                        previous = last_pts if last_pts is not None else self.start_pts - last_step
                        lost = max(0, round((frame.pts - previous) / last_step) - 1)
                        place = lost > 0
                    else:
                        lost, place = max(0, sent - out - backlog), pending is not None
                    if place:
                        gap = pending or Gap(index, None, 0, None)
                        gap.start, gap.end = index, index + lost
                        self.gaps.append(gap)
                        self.gap_ends.add(gap.end)
                        pending, index = None, index + lost
                if frame.pts is not None:
                    last_pts, last_step = frame.pts, frame.duration or self.step
                self.decoded += 1
                yield index, frame
                index += 1
            if pending is None:
                backlog = sent - out
        if pending is not None:
            # Failed packets no lost frame was found for: to the end of the video when no frame
            # decoded after them, else a failure that cost no frame (an empty gap, at the end).
            pending.start = index
            if out > pending_out:
                pending.end = index
            self.gaps.append(pending)

    def problems(self) -> str | None:
        """What was lost and why decoding ended early, in one line; None for a clean decode."""
        parts = [gap.describe() for gap in self.gaps] + ([self.stopped] if self.stopped else [])
        return "; ".join(parts) or None
