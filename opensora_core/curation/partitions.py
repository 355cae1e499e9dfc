"""Partition bookkeeping shared by the curation steps: where a partition's step outputs
are (`partitions/<key>/<step>/`), their manifests, the fingerprints that identify
what made them, and which steps a raw file needs in a run (:func:`plan_steps`).

One partition per raw file (key from its path and content hash). Each step publishes
its folder as a whole (:meth:`Storage.staging_dir`) with `manifest.json` written last;
a step whose manifest matches the file's hash and the settings that made it (its
fingerprint) is up to date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from opensora_core.curation.config import CurationConfig
from opensora_core.curation.ingest import RawFile
from opensora_core.curation.row_tables import read_rows
from opensora_core.curation.storage import MANIFEST, Storage
from opensora_core.utils.atomic import sweep_leftovers
from opensora_core.utils.folder_lock import FolderLock, FolderLocked

PARTITIONS = "partitions"
STEPS = ("raw", "clips", "scores")
CLIPS_TABLE = "clips.parquet"
SAMPLE_SCORES = "sample_scores.parquet"
SCORES_TABLE = "scores.parquet"


# Versions of the code behind the steps' outputs, in their fingerprints: bumped when the
# same file and settings would give different outputs (not for speed), so outputs made
# before are made again.
# What each version changed is in docs/architecture.md ("Versions of curation outputs").
PROBE_VERSION = 4
CUTTER_VERSION = 4
IMAGE_VERSION = 1  # images only (videos keep theirs)


def _image_version(kind: str) -> str:
    return f"-image{IMAGE_VERSION}" if kind == "image" else ""


def raw_fingerprint(config: CurationConfig, kind: str = "video") -> str:
    return f"{config.fingerprint('video_extensions', 'image_extensions')}-probe{PROBE_VERSION}{_image_version(kind)}"


def clips_fingerprint(config: CurationConfig, kind: str = "video") -> str:
    return f"{config.fingerprint('scenes', 'clips')}-cut{CUTTER_VERSION}{_image_version(kind)}"


def step_dir(key: str, step: str) -> tuple[str, str, str]:
    return PARTITIONS, key, step


def sweep_partitions(out: Storage) -> list[Path]:
    """What killed runs left in the partition folders (staging folders, `.new`/`.old`
    of an interrupted publish), removed under each folder's lock; a folder a live run
    holds is skipped (its next write sweeps it). Returns what was removed."""
    root = out.local_path(PARTITIONS) if out.is_local else None
    if root is None or not root.is_dir():
        return []
    removed: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            with FolderLock(folder, "curation: sweeping what killed runs left"):
                removed += sweep_leftovers(folder)
        except FolderLocked:
            continue
    return removed


def read_manifest(out: Storage, key: str, step: str) -> dict | None:
    parts = (*step_dir(key, step), MANIFEST)
    return json.loads(out.read_text(*parts)) if out.exists(*parts) else None


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")


def probe_and_cut_up_to_date(out: Storage, raw: RawFile, config: CurationConfig) -> bool:
    """Whether `raw`'s probe and clips stand (same content and settings, nothing to retry):
    a changed sidecar caption then needs only :func:`refresh_caption` and scoring."""
    return (_up_to_date(out, raw, "raw", raw_fingerprint(config, raw.kind))
            and _up_to_date(out, raw, "clips", clips_fingerprint(config, raw.kind)))


def _up_to_date(out: Storage, raw: RawFile, step: str, fingerprint: str) -> bool:
    return _current(read_manifest(out, raw.key, step), raw, fingerprint)


def _current(manifest: dict | None, raw: RawFile, fingerprint: str) -> bool:
    """Whether a step's `manifest` was made from `raw` as it is, with these settings, and
    asks for no retry."""
    return (bool(manifest) and manifest.get("sha256") == raw.sha256 and manifest.get("fingerprint") == fingerprint
            and not manifest.get("retry"))


def clips_folder(out: Storage, key: str) -> str:
    """Where partition `key`'s clips are, ending in "/": a local path, or a URL in a store."""
    parts = step_dir(key, "clips")
    return (out.path(*parts) if out.is_local else f"{out.url}/{'/'.join(parts)}") + "/"


def read_step_rows(out: Storage, key: str, step: str, name: str) -> tuple[list[str], list[dict]]:
    with out.local_copy(*step_dir(key, step), name) as local:
        return read_rows(local)


def _scores_up_to_date(manifest: dict | None, raw: RawFile, fingerprint: str, ready: set[str]) -> bool:
    """Whether a partition's stored scores stand: same file and settings, nothing that
    failed, and the same scorers able to run (one skipped then, e.g. Tesseract not yet
    installed, runs once it can)."""
    return (bool(manifest) and manifest["sha256"] == raw.sha256 and manifest.get("fingerprint") == fingerprint
            and not manifest.get("retry") and set(manifest.get("scorers", {})) == ready)


@dataclass(frozen=True)
class StepPlan:
    """Which steps one raw file needs in this run."""

    probe: bool  # new or changed file, settings or probe code, or a retry
    caption: bool  # only its sidecar caption changed
    cut: bool
    score: bool


def plan_steps(out: Storage, raw: RawFile, fingerprints: dict[str, str], ready: set[str]) -> StepPlan:
    raw_manifest = read_manifest(out, raw.key, "raw")
    probe = not _current(raw_manifest, raw, fingerprints["raw"])
    caption = not probe and raw_manifest.get("sidecar", "") != raw.sidecar
    cut = probe or not _up_to_date(out, raw, "clips", fingerprints["clips"])
    score = cut or caption or not _scores_up_to_date(read_manifest(out, raw.key, "scores"), raw,
                                                     fingerprints["scores"], ready)
    return StepPlan(probe, caption, cut, score)


@dataclass
class PartitionPlan:
    """What a look at the raw folder asks of the partitions (`plan_partitions`)."""

    new: list[str]  # keys to add and curate
    gone: list[str]  # keys to remove: the file was deleted, or changed (a new hash is a new key)
    recaptioned: list[RawFile]  # known files whose sidecar caption changed: curate again, same key
    rescored: list[RawFile]  # known files to score again because the scorers changed
    kept_back: str | None = None  # why partitions that look gone are kept this time

    @property
    def empty(self) -> bool:
        return not (self.new or self.gone or self.recaptioned or self.rescored)


def plan_partitions(files: list[RawFile], known: set[str], sidecars_before: dict[str, str],
                    scorers: str, scorers_before: str | None) -> PartitionPlan:
    """Compare the raw folder (`files`) with the partitions there are (`known`), the
    sidecar stamps and the scorers' fingerprint the last look saw (none the first time:
    the first look only notes them). A file that could not be read for a transient
    reason keeps every partition that looks gone: a store's hiccup is not a deletion."""
    current = {f.key for f in files}
    new = [f.key for f in files if f.key not in known]
    gone = sorted(known - current)
    kept_back = None
    unreadable = [f.path for f in files if f.transient]
    if gone and unreadable:
        kept_back = (f"not removing {len(gone)} partitions while {len(unreadable)} raw files could not be read: "
                     f"{', '.join(unreadable[:5])}")
        gone = []
    recaptioned = [f for f in files if f.key in known and f.key in sidecars_before
                   and sidecars_before[f.key] != f.sidecar]
    rescored = [f for f in files if f.key in known and f not in recaptioned] \
        if scorers_before is not None and scorers_before != scorers else []
    return PartitionPlan(new, gone, recaptioned, rescored, kept_back)
