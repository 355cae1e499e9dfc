"""Step 1, `raw_videos` / `opensora data raw-videos`: find the raw files, hash them, give each
a partition key, and probe what they really contain.

A raw file is any file under the input root whose extension is a configured video or
image extension (sidecar captions and other files are not inputs), or every entry of a
list of files (:class:`FileList`: whatever its name, the user asked for it; one that
cannot be read is recorded as rejected, with the reason). Hashes are cached in an
index keyed by (path, size, mtime), so a sensor tick or a re-run hashes only new or
changed files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath

import av

from opensora_core.curation.captions import SIDECAR_SUFFIXES, sidecar_paths
from opensora_core.curation.config import CurationConfig
from opensora_core.curation.storage import FileList, Storage, file_suffix, modified_time
from opensora_core.data.decoding import (
    MAX_FAILED_PACKETS,
    FrameDecoder,
    field_order_interlaced,
    video_stream,
)
from opensora_core.data.frame_arrays import (
    SQUARE_TOLERANCE,
    display_orientation,
    header_pixel_aspect,
    pixel_aspect,
    square_pixel_width,
)
from opensora_core.utils.hashing import stream_sha256

log = logging.getLogger(__name__)

INDEX_FILE = "inputs.json"
# Transfer characteristics (FFmpeg's AVColorTransferCharacteristic) of HDR video.
HDR_TRANSFERS = {16: "PQ transfer, SMPTE ST 2084", 18: "HLG transfer, ARIB STD-B67"}


@dataclass(frozen=True)
class RawFile:
    """A raw input: where it is (relative to the input root), its content hash and key."""

    path: str
    kind: str  # "video" | "image"
    size: int
    mtime: float
    sha256: str
    key: str
    problem: str | None = None  # why it could not be read (a listed file only); then no sha256
    sidecar: str = ""  # its sidecar captions' names, sizes and times (see `discover`); "" for none or a list's
    transient: bool = False  # the problem is the store's (a timeout, a refused connection): it may pass


def printable_path(path: str) -> str:
    """`path` as text: a name that is not valid UTF-8 (its bytes reach Python as lone
    surrogates) with those bytes written as `\\xff` escapes; any other path unchanged."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def partition_key(path: str, sha256: str) -> str:
    """`<ascii slug of the file name>-<12 hex>`: readable in the UI, unique per (path,
    content) pair, and made of characters every store and Dagster accept."""
    name = unicodedata.normalize("NFKD", PurePosixPath(path).stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40] or "file"
    digest = hashlib.sha256(f"{path}\0{sha256}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}"


def media_kind(path: str, config: CurationConfig) -> str | None:
    suffix = file_suffix(path)
    if suffix in config.video_extensions:
        return "video"
    if suffix in config.image_extensions:
        return "image"
    return None


def sha256_file(storage: Storage | FileList, path: str) -> str:
    with storage.open(path) as handle:
        return stream_sha256(handle)


def discover(source: Storage | FileList, config: CurationConfig) -> tuple[list[str], dict[str, str]]:
    """Relative POSIX paths of every raw file under `source`, sorted, and for those with
    sidecar captions (:data:`SIDECAR_SUFFIXES`) a stamp of them (name, size, time), so an
    edited caption is seen without reading it. Hidden files and folders (temporary names
    of atomic writes among them) are skipped, with a warning naming those with media
    extensions. For a list of files, its entries as listed (their sidecars are read when
    they are probed)."""
    if isinstance(source, FileList):
        return list(source.entries), {}
    found, hidden, others = [], [], {}
    for full, info in source.fs.find(source.root, detail=True).items():
        rel = PurePosixPath(str(full)).relative_to(PurePosixPath(source.root)).as_posix() if source.is_local \
            else str(full)[len(source.root.rstrip("/")) + 1 :]
        if not media_kind(rel, config):
            if file_suffix(rel) in SIDECAR_SUFFIXES:
                others[rel] = f"{PurePosixPath(rel).name}:{info.get('size')}:{modified_time(info)}"
            continue
        (hidden if any(part.startswith(".") for part in PurePosixPath(rel).parts) else found).append(rel)
    if hidden:
        log.warning("%d hidden files under %s are not inputs (names starting with '.', e.g. macOS's '._' "
                    "files): %s", len(hidden), source.url, ", ".join(printable_path(h) for h in hidden[:5]))
    sidecars = {rel: stamp for rel in found
                if (stamp := ";".join(others[p] for p in sidecar_paths(rel) if p in others))}
    return sorted(found), sidecars


def check_output_outside(source: Storage | FileList, out: Storage) -> None:
    """Refuse an output folder inside the input folder: its clips would be found as
    raw files by the next walk and curated again, clips of clips."""
    if (isinstance(source, Storage) and source.is_local and out.is_local
            and Path(out.root).resolve().is_relative_to(Path(source.root).resolve())):
        raise ValueError(f"the output folder {out.url} is inside the input folder {source.url}: its clips "
                         "would be curated as raw files; choose an output outside it")


def register_inputs(source: Storage | FileList, config: CurationConfig,
                    index: Storage | None = None) -> list[RawFile]:
    """Every raw file under `source` (or listed in it) with its hash and partition key.

    `index` (a storage root, usually the curation output) keeps `inputs.json`, the hash
    cache; without it every file is hashed. A store that gives no modification time
    (http) is hashed every time. A listed file that cannot be read gets a key from its
    path alone and its `problem`; once readable, its hash gives it a key of its own.
    """
    if index is not None:
        check_output_outside(source, index)
    cache: dict[str, dict] = {}
    if index is not None and index.exists(INDEX_FILE):
        cache = {row["path"]: row for row in json.loads(index.read_text(INDEX_FILE))}
    files = []
    found, sidecars = discover(source, config)
    for rel in found:
        # A listed file with no known extension is probed as a video (the probe names it if it is not).
        kind = media_kind(rel, config) or "video"
        shown = printable_path(rel)
        if shown != rel:  # a name no table (UTF-8 text) can hold
            files.append(RawFile(shown, kind, 0, 0.0, "", partition_key(shown, ""),
                                 f"its name is not valid UTF-8 ({shown}); rename the file"))
            continue
        try:
            size, mtime = source.info(rel)
            if math.isnan(mtime):
                mtime = 0.0
            known = cache.get(rel)
            if known and not known.get("problem") and known["size"] == size and known["mtime"] == mtime and mtime:
                sha = known["sha256"]
            else:
                sha = sha256_file(source, rel)
        except Exception as err:  # noqa: BLE001 - any store's error (aiohttp's are not OSErrors): recorded
            problem = "not found" if isinstance(err, FileNotFoundError) else f"not readable ({type(err).__name__}: {err})"
            lasting = isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError)
            files.append(RawFile(rel, kind, 0, 0.0, "", partition_key(rel, ""), problem, transient=not lasting))
            continue
        files.append(RawFile(rel, kind, size, mtime, sha, partition_key(rel, sha),
                             sidecar=sidecars.get(rel, "")))
    if index is not None:
        index.write_text(json.dumps([asdict(f) for f in files], indent=1), INDEX_FILE)
    return files


@dataclass
class Probe:
    """What a raw file contains. `rejected` is the reason it cannot be used, or None.

    `width` and `height` are the displayed size, which is the size of the clips cut
    from it (they are encoded as shown; a re-encoded clip drops an odd side's last row
    or column, as 4:2:0 needs, and meta has the clip's own size): the decoded frame's,
    its width scaled by `pixel_aspect` when pixels are not square (a DVD's 720x480 at
    32:27 is shown 854x480), then turned by `rotation` (the counterclockwise degrees of the display
    matrix, after a left-right mirror when `mirrored`; 270 for a phone's portrait video,
    coded 1920x1080 and shown 1080x1920). An image's `rotation` is its EXIF orientation's.
    """

    path: str
    kind: str
    sha256: str
    size: int
    codec: str | None = None
    fps: float | None = None
    num_frames: int = 0  # decodable frames (header count only when it agrees with the packets)
    header_frames: int | None = None
    width: int = 0
    height: int = 0
    duration: float | None = None
    rotation: int = 0
    mirrored: bool = False
    pixel_aspect: str | None = None  # "32:27": the sample aspect ratio when not square
    interlaced: bool = False  # its first frame is: clips are deinterlaced (as a player shows it)
    frame_count_source: str = "header"  # header | decoded
    rejected: str | None = None
    notes: list[str] = field(default_factory=list)


def _rate(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate)
    return None


def _count_decodable(path: Path) -> tuple[int, str | None]:
    """The frames that decode, counted as the scene cutter decodes (past packets that
    fail: :class:`FrameDecoder`), and what was lost, if anything."""
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            decoder = FrameDecoder(stream)
            for _ in decoder.frames(container.demux(stream)):
                pass
    except (av.FFmpegError, OSError) as err:
        return 0, str(err)
    return decoder.decoded, decoder.problems()


def _demux(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
           probe: Probe) -> tuple[int, av.VideoFrame | None, str | None]:
    """(packets with data, -1 where demuxing stopped (noted in `probe`); the first
    frame, or None; the first decoding error, or None)."""
    # Counting packets is a demux, no decode: cheap, and it exposes truncated files
    # whose header still claims the full length. The first frame (its true size and
    # rotation) is decoded on the way, from the first packets, in the same pass;
    # past damaged ones, as the cutter decodes.
    packets, first, error, failed = 0, None, None, 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
            if first is None and failed < MAX_FAILED_PACKETS:  # the last, empty packet drains the decoder
                try:
                    first = next(iter(packet.decode()), None)
                except av.FFmpegError as err:
                    error, failed = error or str(err), failed + 1
    except (av.FFmpegError, OSError) as err:
        probe.notes.append(f"demux stopped after {packets} packets: {err}")
        packets = -1
    return packets, first, error


def _count_frames(local: Path, probe: Probe, packets: int) -> None:
    """`probe.num_frames`: the packets where they are the frames the header gives, else
    the frames that decode (the duration then theirs)."""
    if probe.header_frames and packets == probe.header_frames:
        probe.num_frames = packets
    else:
        probe.num_frames, lost = _count_decodable(local)
        probe.frame_count_source = "decoded"
        if probe.fps:  # the header's duration may be that of frames that are not there
            probe.duration = probe.num_frames / probe.fps
        if probe.header_frames and probe.num_frames != probe.header_frames:
            probe.notes.append(f"header says {probe.header_frames} frames, {probe.num_frames} decode"
                               + (f" ({lost})" if lost else ""))
        elif lost:
            probe.notes.append(lost)


def probe_video(local: Path, probe: Probe) -> Probe:
    try:
        container = av.open(str(local))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        probe.rejected = f"not a readable media file: {err}"
        return probe
    with container:
        stream = video_stream(container)
        if stream is None:
            kinds = sorted({"a cover picture" if s.type == "video" else s.type for s in container.streams})
            probe.rejected = "no video stream" + (f" (only {', '.join(kinds)})" if kinds else "")
            return probe
        probe.codec = stream.codec_context.name
        rate = _rate(stream)
        probe.fps = float(rate) if rate else None
        probe.width, probe.height = stream.codec_context.width, stream.codec_context.height
        probe.header_frames = stream.frames or None
        if stream.duration is not None and stream.time_base:
            probe.duration = float(stream.duration * stream.time_base)
        elif container.duration:
            probe.duration = container.duration / av.time_base
        packets, first, error = _demux(container, stream, probe)
        aspect, header_aspect = pixel_aspect(stream), header_pixel_aspect(stream)  # (the codec's: once a frame decoded)
        interlaced_order = field_order_interlaced(stream)
        if aspect is None and header_aspect is not None and abs(header_aspect - 1) > SQUARE_TOLERANCE:
            probe.notes.append(f"pixel aspect {header_aspect.numerator}:{header_aspect.denominator} in the header "
                               "is not one footage has; taken as square")
    if first is None:
        probe.rejected = "no decodable video frame" + (f": {error}" if error else "")
        return probe
    if (transfer := HDR_TRANSFERS.get(int(first.color_trc or 0))) is not None:
        probe.notes.append(f"HDR video ({transfer}): decoded and cut without tone mapping, so its clips "
                           "read as SDR look flat and pale")
    probe.interlaced = bool(first.interlaced_frame) or interlaced_order
    orientation = display_orientation(first)
    probe.rotation, probe.mirrored = orientation.turn, orientation.mirrored
    probe.pixel_aspect = f"{aspect.numerator}:{aspect.denominator}" if aspect else None
    width = square_pixel_width(first.width, aspect)
    # A quarter turn: shown the other way round.
    probe.width, probe.height = (first.height, width) if orientation.turn in (90, 270) else (width, first.height)
    _count_frames(local, probe, packets)
    if probe.fps is None:
        probe.fps = probe.num_frames / probe.duration if probe.duration else None
    if probe.duration is None and probe.fps:
        probe.duration = probe.num_frames / probe.fps
    return probe


def probe_image(local: Path, probe: Probe) -> Probe:
    """An image's format and its size as a viewer shows it (turned by its EXIF
    orientation, whose turn is `rotation`; see :mod:`opensora_core.data.images`). An
    animated image is a sample of its first frame, noted. One larger than PIL's guard
    against decompression bombs (`Image.MAX_IMAGE_PIXELS`, twice over) is rejected."""
    from PIL import Image, UnidentifiedImageError

    from opensora_core.data import images

    try:
        with Image.open(local) as image:
            image.load()
            probe.codec = (image.format or "").lower() or None
            probe.width, probe.height = images.displayed_size(image)
            probe.rotation, probe.mirrored = images.display_rotation(image), images.display_mirrored(image)
            if (frames := images.frame_count(image)) > 1:
                probe.notes.append(f"animated image with {frames} frames: its first frame is the sample")
    except Image.DecompressionBombError as err:
        probe.rejected = f"image too large to decode safely ({err})"
        return probe
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        probe.rejected = f"not a readable image: {err}"
        return probe
    probe.num_frames = 1
    return probe


def probe_file(local: str | Path, raw: RawFile) -> Probe:
    """Probe one raw file (a local copy of it)."""
    local = Path(local)
    probe = Probe(path=raw.path, kind=raw.kind, sha256=raw.sha256, size=raw.size)
    if raw.size == 0:
        probe.rejected = "empty file (0 bytes)"
        return probe
    probe = probe_video(local, probe) if raw.kind == "video" else probe_image(local, probe)
    if probe.rejected is None and (probe.width < 2 or probe.height < 2):
        probe.rejected = f"degenerate frame size {probe.width}x{probe.height}"
    if probe.rejected is None and probe.kind == "video" and probe.fps is not None and not math.isfinite(probe.fps):
        probe.fps = None
    return probe
