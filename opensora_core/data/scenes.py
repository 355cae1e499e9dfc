"""Step 2, `scene_clips` / `opensora data scenes`: detect scenes with PySceneDetect's
adaptive detector and cut them into clips, in one decoding pass.

Each decoded frame goes to the detector (downscaled, as PySceneDetect itself does) and,
once the detector can no longer put a cut before it (it decides `event_buffer_length`
frames late), to the encoder of the clip it belongs to. Clips are re-encoded (codec
from `clips.codec`) so cuts are frame-accurate: a clip holds exactly the frames of its
scene piece. Encoding runs on a background thread (the codecs release the GIL), so it
overlaps with decoding and detection. Scenes longer than `max_frames` are split into
consecutive pieces; a piece shorter than `min_frames` is dropped (and recorded) before
any encoding is spent on it.

Given a :class:`Sampler`, the cutter also keeps each frame's luma (about
`Sampler.size` px at most) until its piece ends, then hands the frames at the sampler's
positions to `Sampler.take`: the weights-free scorers score a clip without decoding it
again. Memory is bounded by `min_frames` plus the detector's delay and the encoder's
queue in full frames, plus `max_frames` small luma frames with a sampler, whatever the
video length.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector

from opensora_core.data.config import ClipsConfig, ScenesConfig
from opensora_core.data.frame_arrays import frame_array
from opensora_core.data.scoring.base import ClipSamples, frame_luma, full_range, plane_view
from opensora_core.utils.atomic import atomic_path

THUMBNAIL_WIDTH = 160
ENCODE_QUEUE = 16  # frames waiting for the encoder thread at most


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


@dataclass
class SceneCut:
    """Outcome of cutting one video."""

    clips: list[Clip] = field(default_factory=list)
    scenes: list[tuple[int, int]] = field(default_factory=list)  # detected, [start, end)
    dropped: list[dict] = field(default_factory=list)  # pieces not written, with reasons
    decoded_frames: int = 0
    decode_error: str | None = None


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


def detection_frame(frame: av.VideoFrame, factor: int) -> np.ndarray:
    """The frame as small BGR for the detector, shrunk by `factor` in each direction.

    For yuv420p (most sources) the planes are subsampled directly (views of the
    decoder's buffers) and converted at the small size by OpenCV, several times cheaper
    than converting the full frame to RGB first; at `factor` 1 too, where PyAV's
    conversion would set up a new swscale context for every frame (~1 ms at 320x240).
    """
    h, w = frame.height, frame.width
    if frame.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0:
        y, u, v = (plane_view(frame, i) for i in range(3))
        ys, us, vs = y[::factor, ::factor], u[::factor, ::factor], v[::factor, ::factor]
        sh = min(ys.shape[0], 2 * us.shape[0]) // 4 * 4
        sw = min(ys.shape[1], 2 * us.shape[1]) // 2 * 2
        if sh >= 4 and sw >= 2:
            i420 = np.concatenate(
                [ys[:sh, :sw], us[: sh // 2, : sw // 2].reshape(-1, sw), vs[: sh // 2, : sw // 2].reshape(-1, sw)]
            )
            return cv2.cvtColor(np.ascontiguousarray(i420), cv2.COLOR_YUV2BGR_I420)
    if frame.format.name == "rgb24":  # swscale's rgb24 -> bgr24 is a slow generic path
        bgr = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_RGB2BGR)
    else:
        bgr = frame_array(frame, "bgr24")
    if factor > 1:
        bgr = cv2.resize(bgr, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    return bgr


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
        self.count = 0

    def write(self, frame: av.VideoFrame) -> None:
        self.encoder.submit(self._encode, frame, self.count)
        self.count += 1

    def _encode(self, frame: av.VideoFrame, pts: int) -> None:
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


class _Cutter:
    """Routes frames into scene pieces: buffers the first `min_frames` of a piece (a
    shorter piece costs no encoding), then encodes the rest as it arrives. With a
    sampler, keeps every frame's luma until the piece ends."""

    def __init__(self, out_dir: Path, prefix: str, rate: Fraction, scenes: ScenesConfig, clips: ClipsConfig,
                 result: SceneCut, sampler: Sampler | None = None) -> None:
        self.out_dir, self.prefix, self.rate = out_dir, prefix, rate
        self.scenes_cfg, self.clips_cfg, self.result = scenes, clips, result
        self.sampler = sampler
        self.scene_index = 0
        self.scene_start = 0
        self.piece_start = 0
        self.buffer: list[av.VideoFrame] = []
        self.lumas: list[tuple[np.ndarray, bool]] = []  # the current piece's, with a sampler
        self.writer: _ClipWriter | None = None
        self.writers: list[_ClipWriter] = []
        self.encoder = _EncodeThread()
        self.thumbnail: np.ndarray | None = None

    def add(self, index: int, frame: av.VideoFrame, luma: tuple[np.ndarray, bool] | None = None) -> None:
        if luma is not None:
            self.lumas.append(luma)
        if self.writer is None:
            if not self.buffer:
                self.piece_start = index
            self.buffer.append(frame)
            if len(self.buffer) >= self.scenes_cfg.min_frames:
                self._open(frame)
        else:
            self.writer.write(frame)
        if self._piece_length() >= self.scenes_cfg.max_frames:
            self._close_piece(index + 1)

    def end_scene(self, end: int) -> None:
        self._close_piece(end)
        self.result.scenes.append((self.scene_start, end))
        self.scene_index += 1
        self.scene_start = end

    def _piece_length(self) -> int:
        return self.writer.count if self.writer is not None else len(self.buffer)

    def _open(self, frame: av.VideoFrame) -> None:
        n = len(self.result.clips)
        self.thumbnail = frame_array(self.buffer[0])
        self.writer = _ClipWriter(self.out_dir / f"{self.prefix}-{n:04d}.mp4", frame.width, frame.height,
                                  self.rate, self.clips_cfg, self.encoder)
        self.writers.append(self.writer)
        for buffered in self.buffer:
            self.writer.write(buffered)
        self.buffer = []

    def _close_piece(self, end: int) -> None:
        lumas, self.lumas = self.lumas, []
        if self.writer is None:
            if self.buffer:
                self.result.dropped.append({
                    "scene": self.scene_index, "start_frame": self.piece_start, "end_frame": end,
                    "reason": f"{len(self.buffer)} frames < min_frames {self.scenes_cfg.min_frames}",
                })
            self.buffer = []
            return
        writer, self.writer = self.writer, None
        writer.close(keep=True)
        n = len(self.result.clips)
        name = f"{self.prefix}-{n:04d}"
        thumb = self.thumbnail
        scale = THUMBNAIL_WIDTH / thumb.shape[1]
        thumb = cv2.resize(thumb, (THUMBNAIL_WIDTH, max(1, round(thumb.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
        with atomic_path(self.out_dir / f"{name}.jpg") as tmp:
            tmp.write_bytes(jpeg.tobytes())
        clip = Clip(
            clip_id=name, file=f"{name}.mp4", scene=self.scene_index, start_frame=end - writer.count,
            end_frame=end, num_frames=writer.count, height=writer.stream.height, width=writer.stream.width,
            fps=float(self.rate), thumbnail=f"{name}.jpg",
        )
        self.result.clips.append(clip)
        if self.sampler is not None:
            # The piece's lumas are its last `count` frames (the buffered ones included).
            lumas = lumas[len(lumas) - clip.num_frames :]
            samples = ClipSamples(name, clip.num_frames, {
                p: full_range(*lumas[p]) for p in sorted(self.sampler.positions(clip.num_frames))})
            self.sampler.take(clip, samples)

    def finish(self) -> None:
        """Wait until every clip file is written."""
        self.encoder.finish()

    def abort(self) -> None:
        with contextlib.suppress(BaseException):  # the original error is the one to report
            self.encoder.finish()
        for writer in self.writers:
            if not writer.path.exists():
                writer.discard()
        self.writer = None


def cut_scenes(video: str | Path, out_dir: str | Path, prefix: str, scenes: ScenesConfig | None = None,
               clips: ClipsConfig | None = None, fps: float | None = None,
               sampler: Sampler | None = None) -> SceneCut:
    """Detect scenes in `video` and write one mp4 per scene piece into `out_dir`
    (`<prefix>-0000.mp4`, ... with a `.jpg` thumbnail each). With a `sampler`, each
    clip's sample frames go to `sampler.take` as soon as its piece ends (its file may
    still be being encoded; all are complete when this returns).

    A decoding error ends the video there: the frames before it are cut as usual and
    the error is recorded (`decode_error`), so a partly decodable file keeps its good
    scenes with their true frame counts.
    """
    scenes = scenes or ScenesConfig()
    clips = clips or ClipsConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = SceneCut()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = Fraction(fps).limit_denominator(1001) if fps else (stream.average_rate or Fraction(24))
        rate = Fraction(rate).limit_denominator(1001)
        detector = _Detector(
            adaptive_threshold=scenes.threshold, min_scene_len=scenes.min_scene_len,
            window_width=scenes.window_width, min_content_val=scenes.min_content_val,
        )
        lag = detector.event_buffer_length
        cutter = _Cutter(out_dir, prefix, rate, scenes, clips, result, sampler)
        pending: deque[tuple] = deque()
        factor = 0

        def route(cuts: list[int]) -> None:
            for cut in sorted(cuts):
                while pending and pending[0][0] < cut:
                    cutter.add(*pending.popleft())
                if cut > cutter.scene_start:
                    cutter.end_scene(cut)

        index = -1
        try:
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if not factor:
                        factor = max(1, frame.width // scenes.analysis_width)
                    small = detection_frame(frame, factor)
                    cuts = detector.process_frame(FrameTimecode(index, rate), small)
                    if sampler is None:
                        pending.append((index, frame))
                    else:
                        pending.append((index, frame, frame_luma(frame, sampler.size)))
                    route([c.frame_num for c in cuts])
                    # The detector can no longer put a cut at or before index - lag.
                    while pending and pending[0][0] <= index - lag:
                        cutter.add(*pending.popleft())
            except (av.FFmpegError, OSError) as err:
                result.decode_error = f"decoding stopped after frame {index + 1}: {err}"
            result.decoded_frames = index + 1
            if index >= 0:
                route([c.frame_num for c in detector.post_process(FrameTimecode(index, rate))])
                while pending:
                    cutter.add(*pending.popleft())
                cutter.end_scene(index + 1)
            if sampler is not None and sampler.done is not None:
                sampler.done()
            cutter.finish()
        except BaseException:
            cutter.abort()
            raise
    return result
