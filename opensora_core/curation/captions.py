"""Captions (`text`), in order of preference: a sidecar file beside the raw video
(`clip.mp4` -> `clip.txt`, or `clip.json` with a "text" or "caption" key), a row of an
imported caption table (Open-Sora's `path,text` CSV, or Panda-70M's
`videoID,timestamp,caption` with one caption per timestamp range), or a local
image-text-to-text model (transformers) captioning the clip's middle frame.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np

from opensora_core.curation.storage import FileList, Storage

SIDECAR_SUFFIXES = (".txt", ".json")


def sidecar_paths(path: str) -> list[str]:
    """Where the sidecar captions of raw file `path` (a relative path or a URL) would be,
    in the order of :data:`SIDECAR_SUFFIXES`: the same name with their suffixes."""
    stem = path[: len(path) - len(PurePosixPath(path).suffix)]  # (PurePosixPath folds a URL's "//")
    return [stem + suffix for suffix in SIDECAR_SUFFIXES]


def read_sidecar(storage: Storage | FileList, path: str) -> str | None:
    """The caption beside raw file `path` (relative to `storage`, or a listed file's
    path or URL), or None. A URL with a query (a signed link) has no "beside"."""
    if "://" in path and urlsplit(path).query:
        return None
    for suffix, candidate in zip(SIDECAR_SUFFIXES, sidecar_paths(path), strict=True):
        if not storage.exists(candidate):
            continue
        raw = storage.read_text(candidate).strip()
        if suffix == ".json":
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                continue
            raw = str(data.get("text") or data.get("caption") or "").strip() if isinstance(data, dict) else ""
        if raw:
            return " ".join(raw.split())
    return None


def _seconds(stamp: str) -> float:
    parts = [float(p) for p in str(stamp).strip().split(":")]
    total = 0.0
    for part in parts:
        total = total * 60 + part
    return total


# Columns that make a CSV a caption table, by layout.
_LAYOUTS = {"opensora": ("path", "text"), "panda70m": ("videoID", "timestamp", "caption")}
_EXPECTED = "columns path,text (Open-Sora) or videoID,timestamp,caption (Panda-70M)"


def _layout(path: str | Path, columns) -> str:
    """The layout whose columns `columns` has; ValueError naming both otherwise."""
    for layout, needed in _LAYOUTS.items():
        if set(needed) <= set(columns):
            return layout
    raise ValueError(f"{path}: not a caption table: expected {_EXPECTED}, got {', '.join(map(str, columns)) or 'none'}")


def caption_table_problem(path: str) -> str | None:
    """What keeps `path` from being read as a caption table (checked from its header
    line), or None."""
    import pandas as pd

    try:
        columns = pd.read_csv(path, nrows=0).columns
    except FileNotFoundError:
        return f"{path}: no such file; expected a CSV with {_EXPECTED}"
    except UnicodeDecodeError as err:  # some pandas versions decode the header line already
        return f"{path}: not UTF-8 text ({err})"
    except (OSError, ValueError) as err:  # a folder, no header, not text
        return f"{path}: not readable as CSV ({type(err).__name__}: {err})"
    try:
        _layout(path, columns)
    except ValueError as err:
        return str(err)
    return None


@dataclass
class CaptionTable:
    """An imported caption CSV, looked up by source file and time range."""

    layout: str  # "opensora" | "panda70m"
    by_name: dict[str, list[tuple[float, float, str]]]

    @classmethod
    def from_csv(cls, path: str | Path) -> CaptionTable:
        import pandas as pd

        try:
            frame = pd.read_csv(path)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err})") from None
        except pd.errors.ParserError as err:
            raise ValueError(f"{path}: not a readable CSV ({err})") from None
        layout = _layout(path, frame.columns)
        by_name: dict[str, list[tuple[float, float, str]]] = {}
        if layout == "opensora":
            for p, text in zip(frame["path"], frame["text"]):
                if isinstance(text, str) and text.strip():
                    by_name.setdefault(PurePosixPath(str(p)).name, []).append((0.0, float("inf"), text.strip()))
        else:
            rows = zip(frame["videoID"], frame["timestamp"], frame["caption"])
            for row, (video_id, stamps, captions) in enumerate(rows, start=1):
                try:
                    stamps, captions = ast.literal_eval(str(stamps)), ast.literal_eval(str(captions))
                    ranges = [(_seconds(start), _seconds(end)) for start, end in stamps]
                except (ValueError, SyntaxError, TypeError) as err:
                    raise ValueError(f"{path}: row {row}: timestamp and caption must be Python lists as "
                                     f"Panda-70M writes them, [['0:00:01.000', '0:00:04.000']] and ['a caption'] "
                                     f"({type(err).__name__}: {err})") from None
                for (start, end), text in zip(ranges, captions):
                    by_name.setdefault(str(video_id), []).append((start, end, str(text).strip()))
        return cls(layout, by_name)

    def lookup(self, source_path: str, clip_file: str, start_s: float, end_s: float) -> str | None:
        """The caption for a clip: by clip or source file name (Open-Sora), or the
        Panda-70M range of the source video (its videoID is the file stem) that overlaps
        the clip the most."""
        if self.layout == "opensora":
            for name in (PurePosixPath(clip_file).name, PurePosixPath(source_path).name):
                if name in self.by_name:
                    return self.by_name[name][0][2]
            return None
        best, best_overlap = None, 0.0
        for start, end, text in self.by_name.get(PurePosixPath(source_path).stem, []):
            overlap = min(end, end_s) - max(start, start_s)
            if overlap > best_overlap:
                best, best_overlap = text, overlap
        return best


class ModelCaptioner:
    """A local image-text-to-text model (transformers) captioning one frame per clip."""

    def __init__(self, path: str, prompt: str, max_new_tokens: int) -> None:
        from transformers import pipeline

        self.pipe = pipeline("image-text-to-text", model=path, local_files_only=True)
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    def __call__(self, frames: list[np.ndarray]) -> list[str]:
        from PIL import Image

        messages = [[{"role": "user", "content": [{"type": "image", "image": Image.fromarray(f)},
                                                   {"type": "text", "text": self.prompt}]}] for f in frames]
        outputs = self.pipe(text=messages, max_new_tokens=self.max_new_tokens, return_full_text=False)
        return [" ".join(str(o[0]["generated_text"]).split()) for o in outputs]
