"""`ocr`: how much of the frame is covered by text, from Tesseract.

The score is the fraction of the frame's area inside word boxes Tesseract reads with
at least `min_confidence`, averaged over sampled frames: 0 for clean footage, a few
percent for subtitles, large for slides and title cards. Open-Sora counted detected
text regions; an area fraction is comparable across resolutions.

Tesseract runs one of two ways (`ocr.backend`):

- `library`: in-process through tesserocr (the `ocr` extra, whose wheels bundle
  libtesseract), reading the language data of the Debian package (or `ocr.tessdata`).
  Its model loads once per process (~0.13 s) and is kept in a small pool of engines;
  reading 12 film frames then costs ~0.12 s instead of ~0.3 s through the binary.
- `cli`: the `tesseract` binary through pytesseract, which loads the model on every call.

`auto` takes the library where it and the language data are found. The two read the
same boxes; their confidences can differ by a few points (library 5.5, Debian's binary
5.3), so the backend is part of the scorer's version and scores are not mixed.

Either way a batch's frames are stacked into one tall image, separated by blank bands,
read in one call, and every box is assigned back to the frame it lies in. The binary
gets the image as an uncompressed PGM file: pytesseract would PNG-compress it, which
cost more than the reading itself on film frames (12 frames of 640x469: 0.53 s with
PNG, 0.22 s with PGM; the same pixels, so the same words).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from opensora_core.curation.config import OCRConfig
from opensora_core.curation.scoring.base import (
    ClipSamples,
    Scorer,
    gray,
    shrink,
    spread_frames,
    spread_positions,
)

GAP = 24  # blank rows between stacked frames: no word box can straddle two frames
MAX_FRAMES_PER_CALL = 16
# Where packages keep Tesseract's language data, after TESSDATA_PREFIX.
TESSDATA_GLOBS = ("/usr/share/tesseract-ocr/*/tessdata", "/usr/share/tessdata", "/usr/local/share/tessdata",
                  "/opt/homebrew/share/tessdata", "/opt/local/share/tessdata")

Word = tuple[str, float, int, int, int]  # text, confidence, top, height, width


# --------------------------------------------------------------------------------------
# 1. Which Tesseract
# --------------------------------------------------------------------------------------


def tesseract_missing(lang: str | None = None) -> str | None:
    """Why the tesseract binary cannot run here (for `lang`, when given), or None."""
    try:
        import pytesseract
    except ImportError:
        return "pytesseract is not installed"
    command = shutil.which(pytesseract.pytesseract.tesseract_cmd)
    if command is None:
        return "the tesseract binary is not on PATH (Debian/Ubuntu: apt-get install tesseract-ocr)"
    if lang is not None:
        installed = _binary_languages(command)
        missing = [name for name in lang.split("+") if name not in installed]
        if missing:
            return (f"tesseract has no language data for {'+'.join(missing)} (installed: {', '.join(installed)}; "
                    f"Debian/Ubuntu: apt-get install {' '.join(f'tesseract-ocr-{m}' for m in missing)})")
    return None


@functools.cache
def _binary_languages(command: str) -> tuple[str, ...]:
    import pytesseract

    return tuple(pytesseract.get_languages(config=""))


def _import_tesserocr():
    import tesserocr

    return tesserocr


def find_tessdata(lang: str, configured: str | None = None) -> Path | None:
    """The first folder holding `<lang>.traineddata` for every language of `lang`
    (`eng+deu`): `configured`, else TESSDATA_PREFIX, else the packages' usual places."""
    if configured:
        candidates = [configured]
    else:
        candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
        candidates += sorted((p for pattern in TESSDATA_GLOBS for p in glob.glob(pattern)), reverse=True)
    for folder in map(Path, candidates):
        if all((folder / f"{name}.traineddata").is_file() for name in lang.split("+")):
            return folder
    return None


def library_missing(config: OCRConfig) -> str | None:
    """Why the in-process library cannot run here, or None."""
    try:
        _import_tesserocr()
    except ImportError:
        return "tesserocr is not installed (pip install 'opensora-mlops[ocr]')"
    if find_tessdata(config.lang, config.tessdata) is None:
        where = config.tessdata or "TESSDATA_PREFIX or " + ", ".join(TESSDATA_GLOBS)
        return f"no {config.lang}.traineddata in {where} (Debian/Ubuntu: apt-get install tesseract-ocr)"
    return None


def choose_backend(config: OCRConfig) -> tuple[str | None, str | None]:
    """(backend, None) for the backend to use, or (None, why none can run)."""
    if config.backend in ("auto", "library"):
        library = library_missing(config)
        if library is None:
            return "library", None
        if config.backend == "library":
            return None, f"ocr.backend library: {library}"
    cli = tesseract_missing(config.lang)
    if cli is None:
        return "cli", None
    if config.backend == "cli":
        return None, f"{cli}; the ocr column is left out"
    return None, f"{cli}, and {library}; the ocr column is left out"


# --------------------------------------------------------------------------------------
# 2. Reading words
# --------------------------------------------------------------------------------------

_POOL_LOCK = threading.Lock()
_IDLE_ENGINES: dict[tuple[str, str], list] = {}


@contextlib.contextmanager
def library_engine(tessdata: Path, lang: str) -> Iterator:
    """A tesserocr engine for `lang`, from the process's pool (created on first use; an
    engine serves one thread at a time, so concurrent callers get one each)."""
    key = (str(tessdata), lang)
    with _POOL_LOCK:
        idle = _IDLE_ENGINES.setdefault(key, [])
        engine = idle.pop() if idle else None
    if engine is None:
        tesserocr = _import_tesserocr()
        # Page segmentation as the binary's default (fully automatic).
        engine = tesserocr.PyTessBaseAPI(path=str(tessdata) + os.sep, lang=lang, psm=tesserocr.PSM.AUTO)
    try:
        yield engine
    finally:
        engine.Clear()
        with _POOL_LOCK:
            _IDLE_ENGINES[key].append(engine)


def _read_library(image: np.ndarray, config: OCRConfig, tessdata: Path) -> list[Word]:
    tesserocr = _import_tesserocr()
    level = tesserocr.RIL.WORD
    words: list[Word] = []
    with library_engine(tessdata, config.lang) as engine:
        height, width = image.shape
        engine.SetImageBytes(image.tobytes(), width, height, 1, width)
        engine.Recognize()  # without the GIL
        iterator = engine.GetIterator()
        if iterator is not None:
            for word in tesserocr.iterate_level(iterator, level):
                box = word.BoundingBox(level)
                if box is not None:
                    left, top, right, bottom = box
                    words.append((word.GetUTF8Text(level) or "", word.Confidence(level), top, bottom - top,
                                  right - left))
    return words


def _read_cli(image: np.ndarray, config: OCRConfig) -> list[Word]:
    import pytesseract

    with tempfile.TemporaryDirectory(prefix="opensora-ocr-") as tmp:
        path = str(Path(tmp) / "frames.pgm")
        cv2.imwrite(path, image)
        data = pytesseract.image_to_data(path, lang=config.lang, output_type=pytesseract.Output.DICT)
    return [(str(t), float(c), y, h, w)
            for t, c, y, h, w in zip(data["text"], data["conf"], data["top"], data["height"], data["width"])]


# --------------------------------------------------------------------------------------
# 3. Text coverage
# --------------------------------------------------------------------------------------


def _ocr_image(frame: np.ndarray, max_size: int) -> np.ndarray:
    # `shrink`: 0.2 ms for 720x528 -> 640x469, against 1.5 ms for one area resize.
    return shrink(gray(frame), max_size)


def text_coverage(frames: list[np.ndarray], config: OCRConfig, backend: str | None = None,
                  tessdata: Path | None = None) -> list[float]:
    """Fraction of each frame's (RGB or luma) area covered by confident word boxes;
    `backend` as :func:`choose_backend` picks it and `tessdata` as :func:`find_tessdata`
    finds it when not given."""
    if backend is None:
        backend, missing = choose_backend(config)
        if backend is None:
            raise RuntimeError(missing)
    if backend == "library":
        read = functools.partial(_read_library, tessdata=tessdata or find_tessdata(config.lang, config.tessdata))
    else:
        read = _read_cli
    grays = [_ocr_image(f, config.max_size) for f in frames]
    coverage: list[float] = []
    for start in range(0, len(grays), MAX_FRAMES_PER_CALL):
        chunk = grays[start : start + MAX_FRAMES_PER_CALL]
        width = max(g.shape[1] for g in chunk)
        tops, rows = [], []
        top = 0
        for image in chunk:
            # Padding with the frame's own median adds no edge that could read as text.
            padded = np.full((image.shape[0] + GAP, width), int(np.median(image)), dtype=np.uint8)
            padded[: image.shape[0], : image.shape[1]] = image
            tops.append(top)
            rows.append(padded)
            top += padded.shape[0]
        covered = [0.0] * len(chunk)
        for text, conf, y, h, w in read(np.ascontiguousarray(np.concatenate(rows)), config):
            if conf < config.min_confidence or sum(ch.isalnum() for ch in text) < 2:
                continue
            centre = y + h / 2
            index = max(i for i, t in enumerate(tops) if t <= centre)
            covered[index] += w * h
        coverage += [min(1.0, c / (g.shape[0] * g.shape[1])) for c, g in zip(covered, chunk)]
    return coverage


class OCRScorer(Scorer):
    name = "ocr"
    columns = ("ocr",)
    needs_color = False

    def __init__(self, config: OCRConfig) -> None:
        self.config = config
        self.backend, self._missing = choose_backend(config)
        self.tessdata = find_tessdata(config.lang, config.tessdata) if self.backend == "library" else None
        self.version = f"tesseract-coverage-2-{self.backend}"  # 2: frames reduced by `shrink`
        # The binary's start-up costs about as much as reading a frame: give it many
        # clips per call. The library has no cost per call: each clip as it ends.
        self.batched = self.backend == "cli"

    def sample_size(self) -> int:
        return self.config.max_size

    def unavailable(self) -> str | None:
        return self._missing

    def prepare(self) -> None:
        """Load the library's model ahead of the first batch (on the scoring thread,
        while the video is still being decoded)."""
        if self.backend == "library":
            with library_engine(self.tessdata, self.config.lang):
                pass

    def positions(self, num_frames: int) -> set[int]:
        return set(spread_positions(num_frames, self.config.samples))

    def score(self, batch: list[ClipSamples]) -> list[dict]:
        frames, owners = spread_frames(batch, self.config.samples)
        coverage = text_coverage(frames, self.config, self.backend, self.tessdata) if frames else []
        per_clip: list[list[float]] = [[] for _ in batch]
        for owner, value in zip(owners, coverage):
            per_clip[owner].append(value)
        return [{"ocr": float(np.mean(v)) if v else None} for v in per_clip]
