"""Step 2, `scene_clips` / `opensora data scenes`: detect scenes with PySceneDetect's
adaptive detector and cut them into clips, in one decoding pass.

Each decoded frame goes to the detector (downscaled, as PySceneDetect itself does) and,
once the detector can no longer put a cut before it (it decides `event_buffer_length`
frames late), to the encoder of the clip it belongs to. Clips are re-encoded with
libx264 so cuts are frame-accurate: a clip holds exactly the frames of its scene piece.
Scenes longer than `max_frames` are split into consecutive pieces; a piece shorter
than `min_frames` is dropped (and recorded) before any encoding is spent on it.
Memory is bounded by `min_frames` plus the detector's delay, whatever the video length.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector

from opensora_core.data.config import ClipsConfig, ScenesConfig
from opensora_core.utils.atomic import atomic_path

THUMBNAIL_WIDTH = 160


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


def detection_frame(frame: av.VideoFrame, factor: int) -> np.ndarray:
    """The frame as small BGR for the detector, shrunk by `factor` in each direction.

    For yuv420p (most sources) the planes are subsampled directly and converted at the
    small size, several times cheaper than converting the full frame to RGB first.
    """
    h, w = frame.height, frame.width
    if frame.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0 and factor > 1:
        planes = frame.to_ndarray()  # Y on top, then U and V: [H * 3 / 2, W]
        y = planes[:h, :]
        u = planes[h : h + h // 4].reshape(h // 2, w // 2)
        v = planes[h + h // 4 :].reshape(h // 2, w // 2)
        ys, us, vs = y[::factor, ::factor], u[::factor, ::factor], v[::factor, ::factor]
        sh = min(ys.shape[0], 2 * us.shape[0]) // 4 * 4
        sw = min(ys.shape[1], 2 * us.shape[1]) // 2 * 2
        if sh >= 4 and sw >= 2:
            i420 = np.concatenate(
                [ys[:sh, :sw], us[: sh // 2, : sw // 2].reshape(-1, sw), vs[: sh // 2, : sw // 2].reshape(-1, sw)]
            )
            return cv2.cvtColor(np.ascontiguousarray(i420), cv2.COLOR_YUV2BGR_I420)
    bgr = frame.to_ndarray(format="bgr24")
    if factor > 1:
        bgr = cv2.resize(bgr, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    return bgr


class _ClipWriter:
    """H.264 mp4 writer fed with decoded frames; written under a temporary name."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, clips: ClipsConfig) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=rate)
        # 4:2:0 needs even sides; the encoder's scaler drops the odd pixel.
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(clips.crf), "preset": clips.preset}
        self.time_base = 1 / rate
        self.count = 0

    def write(self, frame: av.VideoFrame) -> None:
        frame.pts = self.count
        frame.time_base = self.time_base
        frame.pict_type = 0  # let x264 choose frame types, not copy the source's
        self.container.mux(self.stream.encode(frame))
        self.count += 1

    def close(self, keep: bool) -> None:
        if keep:
            self.container.mux(self.stream.encode())
        self.container.close()
        if keep:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class _Cutter:
    """Routes frames into scene pieces: buffers the first `min_frames` of a piece (a
    shorter piece costs no encoding), then encodes the rest as it arrives."""

    def __init__(self, out_dir: Path, prefix: str, rate: Fraction, scenes: ScenesConfig, clips: ClipsConfig,
                 result: SceneCut) -> None:
        self.out_dir, self.prefix, self.rate = out_dir, prefix, rate
        self.scenes_cfg, self.clips_cfg, self.result = scenes, clips, result
        self.scene_index = 0
        self.scene_start = 0
        self.piece_start = 0
        self.buffer: list[av.VideoFrame] = []
        self.writer: _ClipWriter | None = None
        self.thumbnail: np.ndarray | None = None

    def add(self, index: int, frame: av.VideoFrame) -> None:
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
        self.thumbnail = self.buffer[0].to_ndarray(format="rgb24")
        self.writer = _ClipWriter(self.out_dir / f"{self.prefix}-{n:04d}.mp4", frame.width, frame.height,
                                  self.rate, self.clips_cfg)
        for buffered in self.buffer:
            self.writer.write(buffered)
        self.buffer = []

    def _close_piece(self, end: int) -> None:
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
        self.result.clips.append(Clip(
            clip_id=name, file=f"{name}.mp4", scene=self.scene_index, start_frame=end - writer.count,
            end_frame=end, num_frames=writer.count, height=writer.stream.height, width=writer.stream.width,
            fps=float(self.rate), thumbnail=f"{name}.jpg",
        ))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close(keep=False)
            self.writer = None


def cut_scenes(video: str | Path, out_dir: str | Path, prefix: str, scenes: ScenesConfig | None = None,
               clips: ClipsConfig | None = None, fps: float | None = None) -> SceneCut:
    """Detect scenes in `video` and write one mp4 per scene piece into `out_dir`
    (`<prefix>-0000.mp4`, ... with a `.jpg` thumbnail each).

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
        detector = AdaptiveDetector(
            adaptive_threshold=scenes.threshold, min_scene_len=scenes.min_scene_len,
            window_width=scenes.window_width, min_content_val=scenes.min_content_val,
        )
        lag = detector.event_buffer_length
        cutter = _Cutter(out_dir, prefix, rate, scenes, clips, result)
        pending: deque[tuple[int, av.VideoFrame]] = deque()
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
                    pending.append((index, frame))
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
        except BaseException:
            cutter.abort()
            raise
    return result
