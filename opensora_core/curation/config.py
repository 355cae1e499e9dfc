"""Schema of the data-curation configs in `configs/data/*.yaml`.

Validation, error messages (file: key: what was expected) and `${VAR}` expansion are
the project's usual ones from :mod:`opensora_core.config`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from opensora_core.config import ConfigError, _Strict, find_config, load_config
from opensora_core.utils.hashing import file_sha256

__all__ = [
    "CaptionsConfig",
    "ClipsConfig",
    "CurationConfig",
    "FiltersConfig",
    "ScenesConfig",
    "ScorersConfig",
    "content_digest",
    "load_curation_config",
    "local_file_problem",
]


class ScenesConfig(_Strict):
    """PySceneDetect's adaptive detector, and what becomes a clip."""

    threshold: float = Field(3.0, gt=0)
    # Frames that must pass after a cut before the next one (PySceneDetect's min_scene_len).
    min_scene_len: int = Field(15, ge=1)
    window_width: int = Field(2, ge=1)
    min_content_val: float = Field(15.0, ge=0)
    # Scenes shorter than this are not cut into clips.
    min_frames: int = Field(16, ge=1)
    # Longer scenes are split into pieces of at most this many frames; also bounds the
    # memory a clip needs while it is cut.
    max_frames: int = Field(256, ge=1)
    # Detection sees wider frames resized to this width, as PySceneDetect's default (256 px) does.
    analysis_width: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _check_lengths(self) -> ScenesConfig:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames: {self.min_frames} exceeds max_frames {self.max_frames}")
        return self


class ClipsConfig(_Strict):
    """How clips are written: files holding exactly the frames of their scene piece,
    copied from the source where that is exact (`stream_copy`: mp4 from mp4/mov, avi
    from AVI), else re-encoded into mp4 (readers decode with PyAV, so any codec and
    container it decodes will do).

    Encoding is the largest cost of cutting. Measured on the 2-core CPU on 720x528
    footage, against x264 `ultrafast` crf 20 (2.80 MB, 43.6 dB PSNR to the source):
    MPEG-4 Part 2 at qscale 3 gives 1.67 MB at 43.8 dB in ~0.7x the time; at qscale 2,
    2.4 MB at 45.3 dB. x264 compresses flat synthetic footage far better, and
    `veryfast` is ~3x slower than `ultrafast` for ~2x fewer bytes at the same crf:
    pick it where storage is dearer than CPU. `preset` and `crf` apply to libx264,
    `qscale` and `gop` to mpeg4.
    """

    codec: Literal["mpeg4", "libx264"] = "mpeg4"
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "ultrafast"
    crf: int = Field(20, ge=0, le=51)
    # MPEG-4 Part 2 constant quantiser: 1 (best) to 31; 2-3 is visually lossless on footage.
    qscale: int = Field(3, ge=1, le=31)
    # Frames between MPEG-4 keyframes (x264 places its own).
    gop: int = Field(12, ge=1)
    # Copy a clip's packets from the source instead of re-encoding, where that is exact:
    # an mp4/mov source (keyframes there are clean random-access points), the clip
    # starting on a keyframe and its frames being one unbroken run of packets; an AVI
    # source (one packet per frame), the clip starting on a keyframe and its copy
    # (an .avi clip) decoding to the same frames, checked on every frame. Encoders put
    # keyframes at scene cuts, so most whole scenes qualify; the clip is then
    # bit-identical to the source and costs no encoding.
    stream_copy: bool = True


class FlowConfig(_Strict):
    enabled: bool = True
    samples: int = Field(4, ge=1)
    # Frames are resized so their longer side is this many pixels before Farneback; the
    # score is reported in px/frame at 256 px whatever this is (128: ~3x cheaper than 256).
    size: int = Field(128, ge=16)


class OCRConfig(_Strict):
    enabled: bool = True
    samples: int = Field(3, ge=1)
    lang: str = "eng"
    # Words below this Tesseract confidence are noise, not text.
    min_confidence: float = Field(60.0, ge=0, le=100)
    # Frames are resized so their longer side is at most this (Tesseract time grows with area).
    max_size: int = Field(640, ge=64)
    # How Tesseract runs: `library` in-process through tesserocr (the `ocr` extra; its
    # model loads once per process), `cli` the tesseract binary through pytesseract (its
    # model loads on every call, ~0.1 s), `auto` the library where it and the language
    # data are found, else the binary.
    backend: Literal["auto", "library", "cli"] = "auto"
    # Folder holding `<lang>.traineddata` for the library backend (default: TESSDATA_PREFIX,
    # then where the tesseract binary and the usual packages keep it).
    tessdata: str | None = None


class QualityConfig(_Strict):
    enabled: bool = True
    samples: int = Field(3, ge=1)


class AestheticConfig(_Strict):
    """The CLIP ViT-L/14 + MLP aesthetic predictor; runs only when both paths are given."""

    clip: str | None = None  # local transformers folder of CLIP ViT-L/14
    mlp: str | None = None  # local .pth/.safetensors of the MLP head
    samples: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _both_or_none(self) -> AestheticConfig:
        if (self.clip is None) != (self.mlp is None):
            raise ValueError("aes: give both clip and mlp weights, or neither")
        return self


class MatchConfig(_Strict):
    """CLIP text-video similarity; runs only when CLIP weights are given."""

    clip: str | None = None
    samples: int = Field(3, ge=1)


class CaptionsConfig(_Strict):
    sidecar: bool = True  # `<video>.txt` or `<video>.json` with a "text"/"caption" key
    import_csv: str | None = None  # Open-Sora (path,text) or Panda-70M (videoID,timestamp,caption)
    model: str | None = None  # local image-text-to-text model folder (transformers)
    prompt: str = "Describe this video frame in one sentence."
    max_new_tokens: int = Field(48, ge=1)


class ScorersConfig(_Strict):
    flow: FlowConfig = FlowConfig()
    ocr: OCRConfig = OCRConfig()
    quality: QualityConfig = QualityConfig()
    aes: AestheticConfig = AestheticConfig()
    match: MatchConfig = MatchConfig()
    captions: CaptionsConfig = CaptionsConfig()
    batch_size: int = Field(16, ge=1)

    def local_files(self) -> dict[str, str]:
        """Config key -> each model folder, weights file and caption table these settings name."""
        named = {"scorers.aes.clip": self.aes.clip, "scorers.aes.mlp": self.aes.mlp,
                 "scorers.match.clip": self.match.clip, "scorers.captions.import_csv": self.captions.import_csv,
                 "scorers.captions.model": self.captions.model}
        return {key: path for key, path in named.items() if path is not None}


class FiltersConfig(_Strict):
    """Thresholds; null switches one off. A threshold on a column that was not computed
    is reported as a warning, never silently passed."""

    min_aes: float | None = None
    min_flow: float | None = None  # videos only: images have no motion
    max_flow: float | None = None
    max_ocr: float | None = Field(None, ge=0, le=1)
    min_match: float | None = None
    min_quality: float | None = Field(None, ge=0, le=1)
    min_frames: int | None = Field(None, ge=1)  # videos only
    max_frames: int | None = Field(None, ge=1)
    min_resolution: int | None = Field(None, ge=1)  # height * width in pixels
    require_caption: bool = False
    # An input whose content (sha256) an input earlier by path has too gives no rows: it is
    # rejected as a duplicate of that one (copies of a download, one file under two names).
    drop_duplicate_files: bool = True


class CurationConfig(_Strict):
    video_extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"]
    )
    image_extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp"])
    scenes: ScenesConfig = ScenesConfig()
    clips: ClipsConfig = ClipsConfig()
    scorers: ScorersConfig = ScorersConfig()
    filters: FiltersConfig = FiltersConfig()

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections (all when none): a partition's outputs are
        reused only while the settings that made them are unchanged."""
        data = self.model_dump(mode="json")
        chosen = {k: data[k] for k in sections} if sections else data
        if "scorers" in chosen and (files := self.scorers.local_files()):
            # What the files hold, not only where: weights or captions replaced in place score again.
            chosen["scorer_files"] = {key: content_digest(path) for key, path in files.items()}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]

    def check_local_files(self) -> None:
        """Fail before any file is processed when a model folder, weights file or caption
        table the scorers name is missing or not what its key expects (see
        :func:`local_file_problem`): whoever named one wants it used, so it is never
        skipped. Keys left null are not checked; their scorer is left out. Raises
        :class:`ConfigError` with one line per problem."""
        problems = [f"{key}: {problem}" for key, path in self.scorers.local_files().items()
                    if (problem := local_file_problem(key, path)) is not None]
        if problems:
            raise ConfigError("\n".join(problems), problems)


def _clip_folder_problem(path: str) -> str | None:
    from opensora_core.utils.clip import check_clip_folder

    try:
        check_clip_folder(path)
    except (FileNotFoundError, ValueError) as err:
        return str(err)
    return None


def _head_problem(path: str) -> str | None:
    if Path(path).is_file():
        return None
    what = "not a file" if Path(path).exists() else "no such file"
    return f"{path}: {what}; expected the aesthetic predictor's MLP state dict (.pth or .safetensors)"


def _caption_model_problem(path: str) -> str | None:
    folder = Path(path)
    expected = "a local transformers image-text-to-text model folder (config.json, weights, processor files)"
    if not folder.is_dir():
        return f"{path}: {'not a folder' if folder.exists() else 'no such folder'}; expected {expected}"
    if not (folder / "config.json").is_file():
        return f"{path}: no config.json; expected {expected}"
    return None


def _caption_table_problem(path: str) -> str | None:
    from opensora_core.curation.captions import caption_table_problem

    return caption_table_problem(path)


_FILE_CHECKS = {"scorers.aes.clip": _clip_folder_problem, "scorers.aes.mlp": _head_problem,
                "scorers.match.clip": _clip_folder_problem, "scorers.captions.import_csv": _caption_table_problem,
                "scorers.captions.model": _caption_model_problem}


def local_file_problem(key: str, path: str) -> str | None:
    """What is wrong with `path`, given for `key` (one of :meth:`ScorersConfig.local_files`),
    or None when it is what the key expects; read from names and headers, not by loading."""
    return _FILE_CHECKS[key](path)


# Weights of other frameworks, which transformers does not load here: left out of a
# folder's digest, as are PyTorch `.bin` weights where safetensors (which it prefers) exist.
_NOT_LOADED_SUFFIXES = (".h5", ".msgpack", ".onnx", ".ot")


def digest_cache_file() -> Path:
    """Where file digests are kept across processes: `OPENSORA_DIGEST_CACHE`, else
    `$XDG_CACHE_HOME/opensora/file_digests.json` (`~/.cache/...`)."""
    if os.environ.get("OPENSORA_DIGEST_CACHE"):
        return Path(os.environ["OPENSORA_DIGEST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opensora" / "file_digests.json"


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """sha256 of `path`, from the cross-process cache while its path, size and times stay
    (a Dagster run per partition would otherwise hash multi-GB weights each time; the
    change time is in the key because copies that keep size and mtime, `cp -p`, change it)."""
    import fcntl

    from opensora_core.utils.atomic import atomic_path

    cache_file, entry = digest_cache_file(), f"{Path(path).resolve()}\0{size}\0{mtime_ns}\0{ctime_ns}"

    def read() -> dict:
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            return {}
        return cache if isinstance(cache, dict) else {}

    if entry in (cached := read()):
        return cached[entry]
    digest = file_sha256(path)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(cache_file.with_name(cache_file.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read, add, replace: one process at a time
            live = {k: v for k, v in read().items() if Path(k.split("\0", 1)[0]).exists()}  # forget files gone
            with atomic_path(cache_file) as tmp:
                tmp.write_text(json.dumps({**live, entry: digest}, indent=0))
    except OSError:  # a read-only home: hashed again next process
        pass
    return digest


def content_digest(path: str) -> str:
    """Short sha256 of what the local file `path` holds, or a model folder's files (names
    and contents; see :data:`_NOT_LOADED_SUFFIXES`). Each file is read once while its
    path, size and modification time stay (cached in the process and in
    :func:`digest_cache_file`): sha256 ran at 1.2 GB/s from the page cache on the 2-core
    CPU, ~1.5 s for CLIP ViT-L/14's 1.7 GB. A URL (a caption table in an object store
    or on a web server) stands for the store's own stamp of it (:func:`remote_stamp`); a
    path that does not exist stands for itself."""
    if "://" in path:
        return remote_stamp(path)
    root = Path(path)
    if not root.exists():
        return path
    files = [root] if root.is_file() else sorted(
        f for f in root.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix not in _NOT_LOADED_SUFFIXES)
    if any(f.suffix == ".safetensors" for f in files):
        files = [f for f in files if f.suffix != ".bin"]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}\0{_file_digest(str(file), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)}\n"
                      .encode())
    return digest.hexdigest()[:12]


# What a store says of one version of a file (S3, GCS, Azure, HTTP and others' names).
_VERSION_FIELDS = ("size", "ETag", "etag", "VersionId", "version_id", "generation", "md5Hash", "crc32c",
                   "LastModified", "last_modified", "mtime", "updated", "Last-Modified", "Content-MD5", "Digest")


def remote_stamp(url: str) -> str:
    """Short hash of `url` and what its store says of the current version of it (size,
    ETag, version, modification time: :data:`_VERSION_FIELDS`), asked afresh (not from a
    listing the process made earlier, which may be another shape and goes stale), so a
    table edited in place reads as new without downloading it. When the store cannot
    be asked, the URL alone (reading the table then fails with the store's error)."""
    from opensora_core.curation.storage import filesystem

    try:
        fs, inner = filesystem(url)
        fs.invalidate_cache(inner)
        info = fs.info(inner)
    except Exception as err:  # noqa: BLE001 - any store's error: the URL stands for itself
        logging.getLogger(__name__).warning("%s: could not read its version from the store (%s: %s); "
                                            "changes to it in place are not seen", url, type(err).__name__, err)
        return url
    version = {field: info[field] for field in _VERSION_FIELDS if info.get(field) is not None}
    return hashlib.sha256(f"{url}\0{json.dumps(version, sort_keys=True, default=str)}".encode()).hexdigest()[:12]


def load_curation_config(name_or_path: str | os.PathLike[str] | None = None) -> CurationConfig:
    """A config by stem under `configs/data` (`default`) or by path; None gives the
    schema's defaults (the settings of `configs/data/default.yaml`, without filters)."""
    if name_or_path is None:
        return CurationConfig()
    return load_config(find_config("data", name_or_path), CurationConfig)
