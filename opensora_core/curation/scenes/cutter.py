"""The scene cutter: :func:`cut_scenes` decodes a video once (:class:`_DecodePass`) and
:class:`_Cutter` routes its frames into scene pieces, each encoded
(:mod:`.encoding`) or copied (:mod:`.stream_copy`); see the package docstring."""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect import FrameTimecode

from opensora_core.curation.config import ClipsConfig, ScenesConfig
from opensora_core.curation.scenes.detection import (
    _Detector,
    detection_frame,
    detection_size,
    thumbnail,
    upright,
)
from opensora_core.curation.scenes.encoding import _ClipWriter, _EncodeThread
from opensora_core.curation.scenes.stream_copy import (
    _copy_source,
    _CopySource,
    _CopyWriter,
    _PieceToCopy,
)
from opensora_core.curation.scoring.base import ClipSamples, frame_luma, full_range
from opensora_core.data.decoding import Deinterlacer, FrameDecoder, Gap, video_stream
from opensora_core.data.frame_arrays import display_orientation, pixel_aspect, square_pixels
from opensora_core.utils.atomic import atomic_path


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


def _new_detector(scenes: ScenesConfig) -> _Detector:
    return _Detector(adaptive_threshold=scenes.threshold, min_scene_len=scenes.min_scene_len,
                     window_width=scenes.window_width, min_content_val=scenes.min_content_val)


class _DecodePass:
    """One decoding pass over a video: each frame is shown as a player shows it, goes to
    the detector, and, once the detector can no longer put a cut before it, to the
    cutter. Lost frames end a run of frames (:meth:`end_run`) like the end of the video."""

    def __init__(self, stream: av.video.stream.VideoStream, cutter: _Cutter, detector: _Detector,
                 scenes: ScenesConfig, sampler: Sampler | None, rate: Fraction) -> None:
        self.stream, self.cutter, self.detector = stream, cutter, detector
        self.scenes_cfg, self.sampler = scenes, sampler
        self.lag = detector.event_buffer_length
        self.decoder, self.deinterlacer = FrameDecoder(stream), Deinterlacer(stream)
        self.detector_fps = float(rate)  # the detector counts frames; a float rate makes its timecodes cheaper
        self.pending: deque[tuple] = deque()
        self.size, self.rotation, self.aspect, self.last = None, 0, None, -1
        self.resampler = VideoReformatter()  # this video's: one swscale set-up for every frame

    def run(self, container: av.container.InputContainer, progress: Callable[[int], object] | None) -> None:
        """Decode every frame of the stream and route it; the last run is left open."""
        frames = self.decoder.frames(self._logged(container.demux(self.stream)))
        for index, frame in self.deinterlacer.frames(frames):
            self._take(index, frame)
            if progress is not None:
                progress(1)

    def route(self, cuts: list[int]) -> None:
        for cut in sorted(cuts):
            while self.pending and self.pending[0][0] < cut:
                self.cutter.add(*self.pending.popleft())
            if cut > self.cutter.scene_start:
                self.cutter.end_scene(cut)

    def end_run(self, end: int, next_start: int | None = None) -> None:
        """No frame follows `end - 1` (a gap or the end of the video): the detector's
        last cuts, the frames it held back, and the scene ends."""
        self.route([c.frame_num for c in self.detector.post_process(FrameTimecode(end - 1, self.detector_fps))])
        while self.pending:
            self.cutter.add(*self.pending.popleft())
        self.cutter.end_scene(end, next_start)

    def _logged(self, demuxed: Iterable[av.Packet]) -> Iterable[av.Packet]:
        for packet in demuxed:
            if self.cutter.source is not None and packet.size:
                self.cutter.source.packets.add(packet)
            yield packet

    def _take(self, index: int, frame: av.VideoFrame) -> None:
        cutter = self.cutter
        if self.last < 0:  # the first frame: how the video is shown
            cutter.scene_start = index
            self.rotation = display_orientation(frame)  # false when shown as coded
            self.aspect = pixel_aspect(self.stream)  # None for square pixels
            if self.rotation or self.aspect or self.deinterlacer.active:
                cutter.source = None
        elif self.deinterlacer.active and cutter.source is not None and cutter.source.exact:
            cutter.source.exact = False  # interlaced from here on: no copy starts any more
        if self.last >= 0 and index in self.decoder.gap_ends:  # lost frames: a hard boundary
            self.end_run(self.last + 1, index)
            self.detector = _new_detector(self.scenes_cfg)
            if cutter.source is not None:
                cutter.source.exact = False
        if self.aspect:
            frame = square_pixels(frame, self.aspect, self.resampler)
        if self.rotation:
            frame = upright(frame, self.rotation)
        self._detect(index, frame)
        # The detector can no longer put a cut at or before index - lag.
        while self.pending and self.pending[0][0] <= index - self.lag:
            cutter.add(*self.pending.popleft())
        if cutter.source is not None:
            cutter.source.packets.seen(cutter.source.key(index, frame))
            cutter.source.packets.keep_from([cutter.oldest_needed(),
                                             cutter.source.key(*self.pending[0][:2]) if self.pending else None])
        self.last = index

    def _detect(self, index: int, frame: av.VideoFrame) -> None:
        if self.size is None:
            self.size = detection_size(frame.width, frame.height, self.scenes_cfg.analysis_width)
        small = detection_frame(frame, self.size)
        cuts = self.detector.process_frame(FrameTimecode(index, self.detector_fps), small)
        if self.sampler is None:
            self.pending.append((index, frame))
        else:
            self.pending.append((index, frame, frame_luma(frame, self.sampler.size)))
        self.route([c.frame_num for c in cuts])


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
    shows it (see the package docstring): its clips' sizes are the displayed ones.
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
        detector = _new_detector(scenes)
        source = _copy_source(video, container, stream, scenes, clips)
        cutter = _Cutter(out_dir, prefix, rate, scenes, clips, result, sampler, source)
        decoding = _DecodePass(stream, cutter, detector, scenes, sampler, rate)
        try:
            decoding.run(container, progress)
            decoder = decoding.decoder
            result.decoded_frames, result.gaps, result.decode_error = decoder.decoded, decoder.gaps, decoder.problems()
            if decoding.last >= 0:
                decoding.end_run(decoding.last + 1)
            if sampler is not None and sampler.done is not None:
                sampler.done()
            cutter.finish()
        except BaseException:
            cutter.abort()
            raise
    return result
