"""The curation pipeline, one function per step; the same names are the Dagster asset
keys and the `opensora data` subcommands:

| step | function | writes (under the output root) |
| --- | --- | --- |
| ingest/probe | :func:`raw_videos` | `partitions/<key>/raw/manifest.json` |
| scene cuts | :func:`scene_clips` | `partitions/<key>/clips/` (mp4 + jpg, `clips.parquet`, `sample_scores.parquet`) |
| scores, captions | :func:`scored_clips` | `partitions/<key>/scores/scores.parquet` |
| filters, merge | :func:`training_dataset` | `meta.csv`, `meta.parquet`, `rejected.csv`, `filtered.csv` (+ `merged_scores.parquet`, a cache) |

One partition per raw file (key from its path and content hash). Each step publishes
its folder as a whole (:meth:`Storage.staging_dir`) with `manifest.json` written last,
so re-running one partition touches no other and a crash leaves no half-written step.
A bad file never stops the pipeline: its step records the reason in the manifest and
the merge lists it in `rejected.csv`. :func:`curate` runs everything, skipping steps
whose manifest matches the file's hash and the settings that made it.

The video is decoded once: while :func:`scene_clips` cuts it, the weights-free scorers
(`flow`, `ocr`, `quality`) score each clip from frames the cutter already has, on a
background thread, into `sample_scores.parquet`, each recorded in the manifest with
its fingerprint (name, version, settings). :func:`scored_clips` takes those columns
as they are while the fingerprints match, and decodes clips only for the rest
(changed scorer settings, the CLIP scorers, a captioning model).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from opensora_core.config import ConfigError
from opensora_core.data import images
from opensora_core.data.captions import CaptionTable, ModelCaptioner, read_sidecar
from opensora_core.data.config import CurationConfig
from opensora_core.data.ingest import Probe, RawFile, probe_file, register_inputs
from opensora_core.data.row_tables import read_rows, write_rows
from opensora_core.data.scenes import Sampler, cut_scenes
from opensora_core.data.scoring import BackgroundScorer, ClipSamples, build_scorers, read_samples
from opensora_core.data.storage import MANIFEST, FileList, Storage, file_suffix, open_source
from opensora_core.utils.hashing import file_sha256
from opensora_core.utils.opencv_threads import opencv_threads

log = logging.getLogger(__name__)

PARTITIONS = "partitions"
OPENSORA_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution",
                    "aes", "flow", "ocr", "match")
OUR_COLUMNS = ("clip_id", "partition", "source", "source_sha256", "start_frame", "end_frame", "sha256",
               "media", "text_source", "quality", "quality_sharpness", "quality_exposure", "quality_contrast")
# Columns every training row must have filled (fps only for videos: images have none).
REQUIRED_COLUMNS = ("path", "num_frames", "height", "width", "aspect_ratio", "resolution", "clip_id", "source",
                    "sha256")
# Columns every clip has from the cut itself (filters on them never lack a value).
GEOMETRY_COLUMNS = ("num_frames", "resolution")
STEPS = ("raw", "clips", "scores")
# OpenCV's threads while cutting and scoring, which run on threads of their own.
CURATION_OPENCV_THREADS = 1
CLIPS_TABLE = "clips.parquet"
SAMPLE_SCORES = "sample_scores.parquet"
SCORES_TABLE = "scores.parquet"
# Every partition's scores as last merged: a cache of `training_dataset` (see `_MergedScores`).
MERGED_SCORES = "merged_scores.parquet"


# Versions of the code behind the steps' outputs, in their fingerprints: bumped when the
# same file and settings would give different outputs (not for speed), so outputs made
# before are made again.
PROBE_VERSION = 4  # 2: displayed (rotated) sizes; frames counted past damaged packets. 3: AVI stops at damage.
# 4: mirrored display matrices, non-square pixels in the displayed size
CUTTER_VERSION = 4  # 2: rotated videos cut upright; scenes kept past damage. 3: AVI stops at damage, one gap
# per damaged packet among B-frames. 4: mirrors applied as players do, non-square pixels made square
IMAGE_VERSION = 1  # images only (videos keep theirs): 1: EXIF orientation, 16-bit, transparency, animation


def _image_version(kind: str) -> str:
    return f"-image{IMAGE_VERSION}" if kind == "image" else ""


def raw_fingerprint(config: CurationConfig, kind: str = "video") -> str:
    return f"{config.fingerprint('video_extensions', 'image_extensions')}-probe{PROBE_VERSION}{_image_version(kind)}"


def clips_fingerprint(config: CurationConfig, kind: str = "video") -> str:
    return f"{config.fingerprint('scenes', 'clips')}-cut{CUTTER_VERSION}{_image_version(kind)}"


def _step_dir(key: str, step: str) -> tuple[str, str, str]:
    return PARTITIONS, key, step


def read_manifest(out: Storage, key: str, step: str) -> dict | None:
    parts = (*_step_dir(key, step), MANIFEST)
    return json.loads(out.read_text(*parts)) if out.exists(*parts) else None


def _write_manifest(folder: Path, manifest: dict) -> None:
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


# --------------------------------------------------------------------------------------
# Step 1: raw_videos
# --------------------------------------------------------------------------------------


def _read_caption(source: Storage | FileList, path: str, notes: list[str]) -> tuple[str | None, bool]:
    """(sidecar caption of raw file `path` or None, whether to read it again next run);
    a problem is added to `notes`."""
    try:
        return read_sidecar(source, path), False
    except UnicodeDecodeError as err:  # the file's own: ignored until it changes
        notes.append(f"sidecar caption is not UTF-8 text, ignored ({err})")
        return None, False
    except Exception as err:  # noqa: BLE001 - a store's error, as for the raw file: retried
        notes.append(f"sidecar caption could not be read ({type(err).__name__}: {err})")
        return None, True


def refresh_caption(source: Storage | FileList, out: Storage, raw: RawFile) -> dict:
    """Read again the sidecar caption of a probed file whose sidecar changed (`raw.sidecar`
    differs from the manifest's): the probe stands, only the caption and its notes change."""
    manifest = read_manifest(out, raw.key, "raw")
    notes = [n for n in manifest["probe"]["notes"] if not n.startswith("sidecar caption")]
    if manifest["rejected"] is None:
        manifest["caption"], manifest["retry"] = _read_caption(source, raw.path, notes)
    manifest["probe"]["notes"], manifest["sidecar"] = notes, raw.sidecar
    with out.staging_dir(*_step_dir(raw.key, "raw")) as folder:
        _write_manifest(folder, manifest)
    return manifest


def raw_videos(source: Storage | FileList, out: Storage, raw: RawFile, config: CurationConfig) -> dict:
    """Probe one raw file and read its sidecar caption; publish the probe manifest.

    A file that could not be read (a listed file missing or its store unreachable) is
    rejected with the reason, and marked `retry`: :func:`curate` reads it again next time;
    so is a file whose sidecar caption could not be read (noted, not rejected).
    """
    probe, caption, retry = Probe(path=raw.path, kind=raw.kind, sha256=raw.sha256, size=raw.size), None, False
    if raw.problem:
        probe.rejected, retry = raw.problem, True
    else:
        staged = False
        try:
            with source.local_copy(raw.path) as local:
                staged = True
                probe = probe_file(local, raw)
        except Exception as err:  # a store's error (network, permissions): recorded, retried
            if staged:  # the probe's own: a bug, not the file's
                raise
            probe.rejected, retry = f"could not be read ({type(err).__name__}: {err})", True
        if probe.rejected is None:
            caption, retry = _read_caption(source, raw.path, probe.notes)
    manifest = {
        "step": "raw_videos", "key": raw.key, "source": source.url_of(raw.path), "path": raw.path,
        "sha256": raw.sha256, "fingerprint": raw_fingerprint(config, raw.kind),
        "probe": asdict(probe), "caption": caption, "sidecar": raw.sidecar, "rejected": None, "retry": retry,
    }
    if probe.rejected:
        manifest["rejected"] = {"step": "raw_videos", "reason": probe.rejected}
    with out.staging_dir(*_step_dir(raw.key, "raw")) as folder:
        _write_manifest(folder, manifest)
    return manifest


# --------------------------------------------------------------------------------------
# Step 2: scene_clips
# --------------------------------------------------------------------------------------


def _clips_folder(out: Storage, key: str) -> str:
    """Where partition `key`'s clips are, ending in "/": a local path, or a URL in a store."""
    parts = _step_dir(key, "clips")
    return (out.path(*parts) if out.is_local else f"{out.url}/{'/'.join(parts)}") + "/"


def _clip_location(out: Storage, key: str, file: str) -> str:
    """Where clip `file` of partition `key` is."""
    return _clips_folder(out, key) + file


def _clip_row(out: Storage, key: str, file: str, probe: dict, source_manifest: dict, clip_path: Path,
              **fields) -> dict:
    height, width = fields["height"], fields["width"]
    return {
        "path": _clip_location(out, key, file),
        "aspect_ratio": height / width, "resolution": height * width,
        "partition": key, "source": source_manifest["source"], "source_sha256": source_manifest["sha256"],
        "sha256": file_sha256(clip_path), "media": probe["kind"], **fields,
    }


def _cut_and_score(video: Path, folder: Path, key: str, fps: float | None, config: CurationConfig,
                   progress=None) -> tuple:
    """Cut `video` into `folder` while the scorers that read luma alone score each clip
    from the cutter's frames; their columns go to `sample_scores.parquet`. Returns the
    cut and what the manifest records of those scores (scorer -> version, fingerprint,
    columns). `progress`: see :func:`cut_scenes`."""
    scorers = [s for s in build_scorers(config.scorers)[0] if not s.needs_color]
    if not scorers:
        return cut_scenes(video, folder, key, config.scenes, config.clips, fps=fps, progress=progress), {}
    background = BackgroundScorer(scorers, config.scorers.batch_size)
    try:
        cut = cut_scenes(video, folder, key, config.scenes, config.clips, fps=fps, progress=progress,
                         sampler=Sampler(background.size, background.positions, background.take, background.flush))
        scores = background.results()
    finally:
        background.close()
    for name, error in background.failed.items():
        log.warning("partition %s: scorer %s failed while cutting (%s); scored_clips will decode for it",
                    key, name, error)
    scored = [s for s in scorers if s.name not in background.failed]
    if not cut.clips or not scored:
        return cut, {}
    columns = [c for s in scored for c in s.columns]
    write_rows(folder / SAMPLE_SCORES, [{"clip_id": c.clip_id, **scores[c.clip_id]} for c in cut.clips],
               ["clip_id", *columns])
    return cut, {s.name: {"version": s.version, "fingerprint": s.fingerprint(), "columns": list(s.columns)}
                 for s in scored}


def _image_sample(local: Path, folder: Path, key: str, suffix: str) -> tuple[str, str | None]:
    """Write the one-frame sample of image `local` into `folder`: the file itself, or,
    where a plain reader would see it otherwise (EXIF orientation, 16-bit, transparency,
    animation: :func:`images.rewrite_reason`), the picture as a viewer shows it
    (:func:`images.write_upright`). Returns (file name, why it was rewritten or None)."""
    from PIL import Image

    with Image.open(local) as image:
        reason = images.rewrite_reason(image)
        if reason is not None:
            return images.write_upright(image, folder, f"{key}-0000"), reason
    file = f"{key}-0000{suffix}"
    shutil.copyfile(local, folder / file)
    return file, None


def scene_clips(source: Storage | FileList, out: Storage, key: str, config: CurationConfig,
                progress: bool = False) -> dict:
    """Cut one raw video into scene clips (an image becomes a one-frame sample); the
    weights-free scores are computed on the way (see the module docstring). With
    `progress`, a bar counts the video's frames as they are cut."""
    from tqdm.auto import tqdm

    raw_manifest = read_manifest(out, key, "raw")
    if raw_manifest is None:
        raise FileNotFoundError(f"partition {key}: raw_videos has not been materialized (no probe manifest)")
    probe = raw_manifest["probe"]
    manifest = {"step": "scene_clips", "key": key, "source": raw_manifest["source"],
                "sha256": raw_manifest["sha256"], "fingerprint": clips_fingerprint(config, probe["kind"]),
                "clips": 0, "rejected": raw_manifest["rejected"], "notes": list(probe.get("notes") or [])}
    rows: list[dict] = []
    with out.staging_dir(*_step_dir(key, "clips")) as folder:
        if manifest["rejected"] is None and probe["kind"] == "image":
            with source.local_copy(raw_manifest["path"]) as local:
                file, manifest["rewritten"] = _image_sample(local, folder, key, file_suffix(raw_manifest["path"]))
            rows.append(_clip_row(out, key, file, probe, raw_manifest, folder / file, clip_id=f"{key}-0000",
                                  num_frames=1, height=probe["height"], width=probe["width"], fps=float("nan"),
                                  start_frame=0, end_frame=1, scene=0, thumbnail=file))
        elif manifest["rejected"] is None:
            started = time.perf_counter()
            try:
                with source.local_copy(raw_manifest["path"]) as local, opencv_threads(CURATION_OPENCV_THREADS), \
                        tqdm(total=probe["num_frames"] or None, desc=f"cutting {PurePosixPath(raw_manifest['path']).name}",
                             unit="frame", disable=not progress, leave=False) as bar:
                    cut, manifest["sample_scores"] = _cut_and_score(local, folder, key, probe["fps"], config,
                                                                    progress=bar.update if progress else None)
            except Exception as err:  # one file the codecs cannot handle must not stop the rest
                log.warning("partition %s: cutting %s failed", key, raw_manifest["path"], exc_info=True)
                for written in folder.iterdir():  # no half of a cut is published
                    shutil.rmtree(written) if written.is_dir() else written.unlink()
                manifest["rejected"] = {"step": "scene_clips",
                                        "reason": f"cutting failed ({type(err).__name__}: {err})"}
                manifest["retry"] = True
                write_rows(folder / CLIPS_TABLE, [], _clip_columns([]))
                _write_manifest(folder, manifest)
                return manifest
            manifest.update(scenes=[list(s) for s in cut.scenes], dropped=cut.dropped,
                            decoded_frames=cut.decoded_frames, seconds=round(time.perf_counter() - started, 3),
                            stream_copied=sum(c.stream_copy for c in cut.clips))
            if cut.decode_error:
                manifest["notes"].append(cut.decode_error)
            if probe["num_frames"] and cut.decoded_frames != probe["num_frames"]:
                manifest["notes"].append(f"{cut.decoded_frames} of {probe['num_frames']} probed frames decoded")
            for clip in cut.clips:
                rows.append(_clip_row(out, key, clip.file, probe, raw_manifest, folder / clip.file,
                                      clip_id=clip.clip_id, num_frames=clip.num_frames, height=clip.height,
                                      width=clip.width, fps=clip.fps, start_frame=clip.start_frame,
                                      end_frame=clip.end_frame, scene=clip.scene, thumbnail=clip.thumbnail))
            if not rows:
                if cut.decoded_frames == 0:
                    reason = "no frame decoded" + (f" ({cut.decode_error})" if cut.decode_error else "")
                else:
                    longest = max((e - s for s, e in cut.scenes), default=0)
                    reason = (f"no scene of at least {config.scenes.min_frames} frames (scenes.min_frames): "
                              f"{len(cut.scenes)} scenes, longest {longest} of {cut.decoded_frames} frames")
                manifest["rejected"] = {"step": "scene_clips", "reason": reason}
        manifest["clips"] = len(rows)
        write_rows(folder / CLIPS_TABLE, rows, _clip_columns(rows))
        _write_manifest(folder, manifest)
    return manifest


def _clip_columns(rows: list[dict]) -> list[str]:
    return list(rows[0]) if rows else ["path", "clip_id", "num_frames", "height", "width", "fps"]


def clip_origins(out: Storage, keys: list[str]) -> tuple[int, int]:
    """(clips copied from their source video, clips re-encoded) over the partitions
    `keys` whose scenes are cut (images and rejected files count in neither)."""
    copied = encoded = 0
    for key in keys:
        manifest = read_manifest(out, key, "clips") or {}
        if "stream_copied" in manifest:
            copied += manifest["stream_copied"]
            encoded += manifest["clips"] - manifest["stream_copied"]
    return copied, encoded


def read_clips(out: Storage, key: str) -> pd.DataFrame:
    with out.local_copy(*_step_dir(key, "clips"), CLIPS_TABLE) as local:
        return pd.read_parquet(local)


def _read_step_rows(out: Storage, key: str, step: str, name: str) -> tuple[list[str], list[dict]]:
    with out.local_copy(*_step_dir(key, step), name) as local:
        return read_rows(local)


def _stored_scores(out: Storage, key: str, clips_manifest: dict, scorers: list, clip_ids: list[str]) -> dict:
    """clip id -> stored columns of the scorers in `scorers` whose scores `scene_clips`
    computed with the same fingerprint (and for every clip); empty when none."""
    stored = clips_manifest.get("sample_scores") or {}
    names = [s.name for s in scorers if stored.get(s.name, {}).get("fingerprint") == s.fingerprint()]
    if not names or not clip_ids or not out.exists(*_step_dir(key, "clips"), SAMPLE_SCORES):
        return {}
    table_columns, table = _read_step_rows(out, key, "clips", SAMPLE_SCORES)
    if not set(clip_ids) <= {row["clip_id"] for row in table}:
        return {}
    columns = [c for s in scorers if s.name in names for c in s.columns if c in table_columns]
    return {"names": names, "rows": {row["clip_id"]: {c: row[c] for c in columns} for row in table}}


# --------------------------------------------------------------------------------------
# Step 3: scored_clips
# --------------------------------------------------------------------------------------


@dataclass
class Captioning:
    """Caption sources beyond sidecars, built once per run (a model is expensive)."""

    table: CaptionTable | None = None
    model: ModelCaptioner | None = None

    @classmethod
    def from_config(cls, config: CurationConfig, load_model: bool = True) -> Captioning:
        """The configured table (read now: a malformed one is a ConfigError naming it) and,
        with `load_model`, the captioning model (else :meth:`load_model` when needed)."""
        config.check_local_files()
        cap = config.scorers.captions
        table = None
        if cap.import_csv:
            try:
                table = CaptionTable.from_csv(cap.import_csv)
            except (OSError, ValueError) as err:
                raise ConfigError(f"scorers.captions.import_csv: {err}") from None
        captioning = cls(table=table)
        return captioning.load_model(config) if load_model else captioning

    def load_model(self, config: CurationConfig) -> Captioning:
        cap = config.scorers.captions
        if cap.model and self.model is None:
            self.model = ModelCaptioner(cap.model, cap.prompt, cap.max_new_tokens)
        return self


def scored_clips(out: Storage, key: str, config: CurationConfig, captioning: Captioning | None = None,
                 progress: bool = False, scorers_fingerprint: str | None = None) -> dict:
    """Caption and score every clip of one partition. `scorers_fingerprint` is
    `config.fingerprint("scorers")` where the caller has it (a run over many files asks
    an object store for a caption table's version once, not once per file)."""
    from tqdm.auto import tqdm

    captioning = captioning or Captioning()
    clips_manifest = read_manifest(out, key, "clips")
    raw_manifest = read_manifest(out, key, "raw")
    if clips_manifest is None or raw_manifest is None:
        raise FileNotFoundError(f"partition {key}: scene_clips has not been materialized")
    scorers, skipped = build_scorers(config.scorers)
    for name, reason in skipped.items():
        if reason != "no local weights configured" and reason != "disabled in config":
            log.warning("scorer %s skipped: %s", name, reason)
    clip_columns, rows = _read_step_rows(out, key, "clips", CLIPS_TABLE)
    texts, text_sources = [], []
    for row in rows:
        text, origin = raw_manifest.get("caption") if config.scorers.captions.sidecar else None, "sidecar"
        if text is None and captioning.table is not None:
            fps = row["fps"] if row["fps"] and not math.isnan(row["fps"]) else 1.0
            text = captioning.table.lookup(raw_manifest["path"], row["path"], row["start_frame"] / fps,
                                           row["end_frame"] / fps)
            origin = "csv"
        texts.append(text)
        text_sources.append(origin if text else None)
    scores: list[dict] = [{} for _ in rows]
    batch_size = config.scorers.batch_size
    started = time.perf_counter()
    stored = _stored_scores(out, key, clips_manifest, scorers, [row["clip_id"] for row in rows])
    reused = stored.get("names", [])
    for i, row in enumerate(rows):
        scores[i].update(stored["rows"][row["clip_id"]] if stored else {})
    decoding = [s for s in scorers if s.name not in reused]
    bar = tqdm(total=len(rows), desc=f"scoring {key}", unit="clip", disable=not progress, leave=False)
    failures: list[str] = []  # what failed, for the manifest; those values stay empty (and are retried)

    def failed(what: str, err: Exception) -> None:
        log.warning("partition %s: %s failed", key, what, exc_info=err)
        failures.append(f"{what} failed ({type(err).__name__}: {err})")

    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch, unreadable = [], set()
        for i, row in enumerate(chunk):
            wanted = set().union(*(s.positions(int(row["num_frames"])) for s in decoding))
            if captioning.model is not None and texts[start + i] is None:
                wanted.add(int(row["num_frames"]) // 2)
            samples = ClipSamples(row["clip_id"], int(row["num_frames"]))  # every score stored: no decoding
            if wanted or row.get("media") == "image":
                try:
                    with out.local_copy(*_step_dir(key, "clips"), PurePosixPath(row["path"]).name) as local:
                        samples = read_samples(local, row["clip_id"], int(row["num_frames"]), wanted)
                except Exception as err:  # noqa: BLE001 - this clip goes unscored, the others are scored
                    failed(f"reading clip {row['clip_id']}", err)
                    unreadable.add(i)
            samples.text = texts[start + i]
            batch.append(samples)
        readable = [i for i in range(len(batch)) if i not in unreadable]
        if captioning.model is not None:
            need = [i for i in readable if batch[i].text is None]
            if need:
                try:
                    captions = captioning.model([batch[i].frames[min(batch[i].frames, key=lambda p: abs(
                        p - batch[i].num_frames // 2))] for i in need])
                except Exception as err:  # noqa: BLE001 - these clips stay uncaptioned
                    failed("the captioning model", err)
                    captions = []
                for i, caption in zip(need, captions):
                    caption = " ".join(str(caption or "").split()) or None  # an empty answer is no caption
                    batch[i].text = texts[start + i] = caption
                    text_sources[start + i] = "model" if caption else None
        for scorer in decoding:
            try:
                values_of = scorer.score([batch[i] for i in readable]) if readable else []
            except Exception as err:  # noqa: BLE001 - its columns stay empty for this batch
                failed(f"scorer {scorer.name}", err)
                continue
            for i, values in zip(readable, values_of, strict=True):
                scores[start + i].update(values)
        bar.update(len(chunk))
    bar.close()
    score_columns = [c for scorer in scorers for c in scorer.columns]
    columns = [*clip_columns, *(c for c in ("text", "text_source", *score_columns) if c not in clip_columns)]
    table = [{**row, "text": text, "text_source": origin, **{c: s.get(c) for c in score_columns}}
             for row, text, origin, s in zip(rows, texts, text_sources, scores, strict=True)]
    manifest = {
        "step": "scored_clips", "key": key, "path": raw_manifest["path"], "sha256": clips_manifest["sha256"],
        "fingerprint": (scorers_fingerprint or config.fingerprint("scorers")) + clips_manifest["fingerprint"],
        "clips": len(table), "seconds": round(time.perf_counter() - started, 3),
        "scorers": {s.name: {"version": s.version, "columns": list(s.columns)} for s in scorers},
        "skipped": skipped, "rejected": clips_manifest["rejected"],
        # Scores taken from scene_clips (computed while cutting) rather than by decoding clips.
        "reused": reused, "failures": failures, "retry": bool(failures),
        # What the earlier steps noted about the file (partly decodable, unreadable caption, ...) and what failed.
        "notes": [*clips_manifest.get("notes", []), *failures],
    }
    with out.staging_dir(*_step_dir(key, "scores")) as folder:
        write_rows(folder / SCORES_TABLE, table, columns)
        _write_manifest(folder, manifest)
    return manifest


def read_scores(out: Storage, key: str) -> pd.DataFrame:
    with out.local_copy(*_step_dir(key, "scores"), SCORES_TABLE) as local:
        return pd.read_parquet(local)


def _read_all_scores(out: Storage, keys: list[str]) -> pd.DataFrame:
    """The scores of partitions `keys` as one table, rows in the order of `keys`.

    The tables are joined as Arrow tables and converted to pandas once: converting each
    small table costs several times its reading, and the merge reads every partition.
    Columns are unified by name (a column a partition lacks is null there, integers
    meeting floats become floats), as `pd.concat` would; text columns with missing
    values are objects with None for them, as `pd.read_parquet` gives them.

    Partitions whose `scores.parquet` is byte for byte the one merged last time are taken
    from :data:`MERGED_SCORES` (see :class:`_MergedScores`), so adding one video to
    many parses one partition's table, not all of them.
    """
    import pyarrow as pa

    previous = _MergedScores.read(out)
    tables, digests = [], []
    for key in keys:
        data = out.read_bytes(*_step_dir(key, "scores"), SCORES_TABLE)
        digest = hashlib.sha256(data).hexdigest()
        table = previous.table_of(key, digest)
        if table is None:
            table = _MergedScores.parse(data)
        tables.append(table)
        digests.append(digest)
    merged = pa.concat_tables(tables, promote_options="permissive")
    if previous.digests != dict(zip(keys, digests)):
        _MergedScores.write(out, merged, keys, digests, tables)
    table = merged.to_pandas()
    for column_type in merged.schema:
        name, kind = column_type.name, column_type.type
        textual = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        if pa.types.is_null(kind) or (textual and merged.column(name).null_count):
            column = table[name].astype(object)
            table[name] = column.where(column.notna(), None)
    return table


class _MergedScores:
    """The last merge of the partitions' score tables (:data:`MERGED_SCORES`), with
    each partition's rows, the sha256 of its `scores.parquet` and its own schema, so
    that a partition taken from it is the table its file would give (types a wider
    partition promoted are cast back, its null-typed columns restored)."""

    METADATA = b"opensora.merged_scores"

    def __init__(self, table=None, index: dict | None = None, schemas: list | None = None) -> None:
        self.table, self.index, self.schemas = table, index or {}, schemas or []
        self.digests = {key: entry["sha256"] for key, entry in self.index.items()}

    @staticmethod
    def parse(data: bytes):
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Each file's pandas metadata describes its own index only.
        return pq.read_table(pa.BufferReader(data)).replace_schema_metadata(None)

    @classmethod
    def read(cls, out: Storage) -> _MergedScores:
        if not out.exists(MERGED_SCORES):
            return cls()
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            raw = pq.read_table(pa.BufferReader(out.read_bytes(MERGED_SCORES)))
            meta = json.loads(raw.schema.metadata[cls.METADATA])
            schemas = [pa.ipc.read_schema(pa.py_buffer(base64.b64decode(s))) for s in meta["schemas"]]
            table = raw.replace_schema_metadata(None)
        except Exception as err:  # noqa: BLE001 - a cache: rebuilt from the partitions
            log.warning("%s is unreadable (%s); merging every partition again", out.path(MERGED_SCORES), err)
            return cls()
        return cls(table, meta["partitions"], schemas)

    def table_of(self, key: str, digest: str):
        entry = self.index.get(key)
        if entry is None or entry["sha256"] != digest:
            return None
        import pyarrow as pa

        schema = self.schemas[entry["schema"]]
        rows = self.table.slice(entry["start"], entry["rows"])
        columns = []
        for own in schema:
            if pa.types.is_null(own.type):
                columns.append(pa.nulls(entry["rows"]))
            else:
                column = rows.column(own.name)
                columns.append(column if column.type == own.type else column.cast(own.type))
        return pa.Table.from_arrays(columns, schema=schema)

    @classmethod
    def write(cls, out: Storage, merged, keys: list[str], digests: list[str], tables: list) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schemas, schema_ids, index, start = [], {}, {}, 0
        for key, digest, table in zip(keys, digests, tables, strict=True):
            encoded = base64.b64encode(table.schema.serialize().to_pybytes()).decode()
            if encoded not in schema_ids:
                schema_ids[encoded] = len(schemas)
                schemas.append(encoded)
            index[key] = {"sha256": digest, "start": start, "rows": table.num_rows, "schema": schema_ids[encoded]}
            start += table.num_rows
        meta = json.dumps({"partitions": index, "schemas": schemas}).encode()
        sink = pa.BufferOutputStream()
        pq.write_table(merged.replace_schema_metadata({cls.METADATA: meta}), sink)
        out.write_bytes(sink.getvalue().to_pybytes(), MERGED_SCORES)


# --------------------------------------------------------------------------------------
# Steps 4-5: training_dataset
# --------------------------------------------------------------------------------------


@dataclass
class DatasetSummary:
    kept: int = 0
    filtered: int = 0
    rejected: int = 0
    partitions: int = 0
    missing: list[str] = field(default_factory=list)  # partitions not scored yet
    notes: dict[str, list[str]] = field(default_factory=dict)  # source -> what its steps noted
    warnings: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    reject_steps: dict[str, int] = field(default_factory=dict)


def _filter_rules(config: CurationConfig) -> list[tuple[str, str, str, float, bool]]:
    """(setting, column, op, threshold, videos_only) for every threshold that is set."""
    f = config.filters
    # Geometry first: a clip that is too small or short is reported as such, whatever its scores.
    rules = [("min_frames", "num_frames", ">=", f.min_frames, True),
             ("max_frames", "num_frames", "<=", f.max_frames, True),
             ("min_resolution", "resolution", ">=", f.min_resolution, False),
             ("min_aes", "aes", ">=", f.min_aes, False), ("min_flow", "flow", ">=", f.min_flow, True),
             ("max_flow", "flow", "<=", f.max_flow, True), ("max_ocr", "ocr", "<=", f.max_ocr, False),
             ("min_match", "match", ">=", f.min_match, False), ("min_quality", "quality", ">=", f.min_quality, False)]
    return [r for r in rules if r[3] is not None]


def apply_filters(table: pd.DataFrame, config: CurationConfig,
                  computed: set[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Split clips into kept and filtered (with the first failed rule as reason).

    A threshold on a column that was not computed (its scorer did not run) is a warning
    and does not filter; a clip missing a value of a computed column (its scorer failed
    on it, or gives none, e.g. `match` without a caption) fails that rule. `computed`:
    the score columns whose scorers ran; by default those with a value in some row.
    `flow` and the frame-count rules apply to videos only.
    """
    warnings = []
    reasons = pd.Series([None] * len(table), index=table.index, dtype=object)
    is_video = table["media"] == "video" if "media" in table else pd.Series(True, index=table.index)
    for setting, column, op, threshold, videos_only in _filter_rules(config):
        if column not in table or (column not in computed if computed is not None else table[column].isna().all()):
            warnings.append(f"filters.{setting} = {threshold} is set but column '{column}' was not computed; "
                            "not filtered on it")
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        applies = is_video if videos_only else pd.Series(True, index=table.index)
        passed = values >= threshold if op == ">=" else values <= threshold
        failed = applies & ~passed & reasons.isna()
        reasons[failed & values.isna()] = f"no {column} value (filters.{setting})"
        failed &= values.notna()
        reasons[failed] = [f"{column} {v:.4g} {'<' if op == '>=' else '>'} {threshold} (filters.{setting})"
                           for v in values[failed]]
    if config.filters.require_caption:
        no_text = reasons.isna() & (table["text"].isna() | (table["text"].astype(str).str.strip() == ""))
        reasons[no_text] = "no caption (filters.require_caption)"
    return table[reasons.isna()], table[reasons.notna()].assign(reason=reasons[reasons.notna()]), warnings


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in (*OPENSORA_COLUMNS, *OUR_COLUMNS) if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


def _write_csv(out: Storage, table: pd.DataFrame, name: str) -> None:
    out.write_text(table.to_csv(index=False), name)


def _drop_duplicate_files(table: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """(`table` without the rows of inputs whose content an input earlier by path has,
    a rejection for each such input naming the one kept)."""
    files = table[["source_sha256", "source"]].drop_duplicates().dropna()
    if files["source_sha256"].is_unique:  # the usual case, found in ~1 ms
        return table, []
    kept_source = table.groupby("source_sha256")["source"].transform("min")
    duplicate = table["source_sha256"].notna() & (table["source"] != kept_source)  # (no hash: never a duplicate)
    rejected = [{"path": source, "step": "training_dataset",
                 "reason": f"duplicate of {group['kept'].iloc[0]} (same content, sha256 {sha[:12]}...; "
                           "filters.drop_duplicate_files)",
                 "partition": group["partition"].iloc[0]}
                for (source, sha), group in table[duplicate].assign(kept=kept_source[duplicate])
                .groupby(["source", "source_sha256"], sort=True)]
    return table[~duplicate], rejected


def training_dataset(out: Storage, keys: list[str], config: CurationConfig,
                     source: Storage | FileList | None = None) -> DatasetSummary:
    """Merge the scored partitions `keys`, filter, and write the training table.

    Writes `meta.csv` + `meta.parquet` (kept clips, Open-Sora's columns first),
    `filtered.csv` (clips removed by a filter, with the reason) and `rejected.csv`
    (input files with no clip kept: path, step, reason).

    Each row's `path` is its clip under `out` as it is now, so an output folder moved or
    copied elsewhere (another disk, a bucket) gives a table of paths that are there.
    With `source` (the raw files' root as it is now), each file's `source` is its
    place there; otherwise where it was when probed.
    """
    summary = DatasetSummary()
    scored, rejected, scorers_run, sources = [], [], {}, {}
    for key in sorted(keys):
        manifest = read_manifest(out, key, "scores")
        if manifest is None:
            summary.missing.append(key)
            continue
        summary.partitions += 1
        rel = manifest.get("path")  # (manifests before "path" was in them: the probe's has it)
        needs_raw = (source is not None and not rel) or manifest.get("notes") or manifest["rejected"]
        raw_manifest = (read_manifest(out, key, "raw") or {}) if needs_raw else {}
        if source is not None and (rel := rel or raw_manifest.get("path")):
            sources[key] = source.url_of(rel)
        where = sources.get(key) or raw_manifest.get("source", key)
        if manifest.get("notes"):
            summary.notes[where] = manifest["notes"]
        if manifest["rejected"]:
            rejected.append({"path": where, "step": manifest["rejected"]["step"],
                             "reason": manifest["rejected"]["reason"], "partition": key})
            continue
        scored.append(key)
        scorers_run.update(manifest.get("scorers", {}))
    table = _read_all_scores(out, scored) if scored else pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    # Where the clips are now: rows written under another output root (a moved or copied
    # folder) are given this one's paths (vectorised per partition: merges run to ~1M rows).
    here = (out.path(PARTITIONS) if out.is_local else f"{out.url}/{PARTITIONS}") + "/"
    moved = ~table["path"].astype(str).str.startswith(here) if len(table) else []
    if len(table) and moved.any():
        folders = {key: _clips_folder(out, key) for key in table.loc[moved, "partition"].unique()}
        names = table.loc[moved, "path"].astype(str).str.rsplit("/", n=1).str[-1]
        table.loc[moved, "path"] = table.loc[moved, "partition"].map(folders) + names
    if len(table) and sources:  # where the raw files are now
        table["source"] = table["partition"].map(sources).fillna(table["source"])
    if config.filters.drop_duplicate_files and len(table):
        table, duplicates = _drop_duplicate_files(table)
        rejected += duplicates
    computed = set(GEOMETRY_COLUMNS) | {c for scorer in scorers_run.values() for c in scorer["columns"]}
    kept, filtered, summary.warnings = apply_filters(table, config, computed)
    if summary.notes:
        shown = "; ".join(f"{source}: {' / '.join(notes)}" for source, notes in list(summary.notes.items())[:3])
        more = f" (and {len(summary.notes) - 3} more)" if len(summary.notes) > 3 else ""
        summary.warnings.append(f"{len(summary.notes)} files have notes, all in summary.json: {shown}{more}")
    if summary.missing:
        summary.warnings.append(f"{len(summary.missing)} partitions not scored yet: {', '.join(summary.missing[:5])}")
    # An input whose every clip was filtered out is rejected at the filter step.
    kept_sources = set(kept["source"]) if len(kept) else set()
    for raw_file, group in filtered.groupby("source") if len(filtered) else []:
        if raw_file not in kept_sources:
            counts = Counter(r.split(" (filters.")[1].rstrip(")") if " (filters." in r else r for r in group["reason"])
            reason = f"all {len(group)} clips filtered: " + ", ".join(f"{k} ({n})" for k, n in counts.most_common())
            rejected.append({"path": raw_file, "step": "training_dataset", "reason": reason,
                             "partition": group["partition"].iloc[0]})
    kept = _ordered(kept.drop(columns=["thumbnail"], errors="ignore"))
    filtered_out = filtered[["path", "source", "reason"]].assign(step="training_dataset") if len(filtered) else \
        pd.DataFrame(columns=["path", "source", "reason", "step"])
    rejected_table = pd.DataFrame(rejected, columns=["path", "step", "reason", "partition"])
    _write_csv(out, kept, "meta.csv")
    out.write_bytes(kept.to_parquet(index=False), "meta.parquet")
    _write_csv(out, filtered_out, "filtered.csv")
    _write_csv(out, rejected_table, "rejected.csv")
    summary.kept, summary.filtered, summary.rejected = len(kept), len(filtered), len(rejected_table)
    summary.columns = list(kept.columns)
    summary.reject_steps = dict(Counter(r["step"] for r in rejected))
    out.write_text(json.dumps(asdict(summary), indent=1) + "\n", "summary.json")
    return summary


# --------------------------------------------------------------------------------------
# Everything: curate
# --------------------------------------------------------------------------------------


class _FetchedOnce:
    """`source` as one raw file's steps in one run see it: the file (`rel`) is staged
    locally once, when a step first reads it, however many steps read it (a remote file
    is downloaded once for its probe and its cut, not once for each); everything else
    is `source`'s own."""

    def __init__(self, source: Storage | FileList, rel: str) -> None:
        self.source, self.rel = source, rel
        self._stack = contextlib.ExitStack()
        self._local: Path | None = None

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    @contextlib.contextmanager
    def local_copy(self, *parts: str) -> Iterator[Path]:
        if parts != (self.rel,):
            with self.source.local_copy(*parts) as local:
                yield local
            return
        if self._local is None:
            self._local = self._stack.enter_context(self.source.local_copy(self.rel))
        yield self._local

    def close(self) -> None:
        self._stack.close()


def _scores_up_to_date(manifest: dict | None, raw: RawFile, fingerprint: str, ready: set[str]) -> bool:
    """Whether a partition's stored scores stand: same file and settings, nothing that
    failed, and the same scorers able to run (one skipped then, e.g. Tesseract not yet
    installed, runs once it can)."""
    return (bool(manifest) and manifest["sha256"] == raw.sha256 and manifest.get("fingerprint") == fingerprint
            and not manifest.get("retry") and set(manifest.get("scorers", {})) == ready)


@dataclass(frozen=True)
class _Plan:
    """Which steps one raw file needs in this run."""

    probe: bool  # new or changed file, settings or probe code, or a retry
    caption: bool  # only its sidecar caption changed
    cut: bool
    score: bool


def _plan(out: Storage, raw: RawFile, fingerprints: dict[str, str], ready: set[str]) -> _Plan:
    raw_manifest = read_manifest(out, raw.key, "raw")
    probe = not _current(raw_manifest, raw, fingerprints["raw"])
    caption = not probe and raw_manifest.get("sidecar", "") != raw.sidecar
    cut = probe or not _up_to_date(out, raw, "clips", fingerprints["clips"])
    score = cut or caption or not _scores_up_to_date(read_manifest(out, raw.key, "scores"), raw,
                                                     fingerprints["scores"], ready)
    return _Plan(probe, caption, cut, score)


def curate(input: str | Storage | FileList, output: str | Storage, config: CurationConfig | None = None,
           progress: bool = False) -> DatasetSummary:
    """Run every step for every raw file under `input` (a folder, or a list of files:
    see :func:`open_source`), reusing up-to-date partitions, then merge and filter into
    `output`."""
    from tqdm.auto import tqdm

    config = config or CurationConfig()
    config.check_local_files()  # a missing model, weights or caption table fails here, before any file is read
    source = input if isinstance(input, Storage | FileList) else open_source(input)
    out = output if isinstance(output, Storage) else Storage(output)
    files = register_inputs(source, config, index=out)
    scorers_fingerprint = config.fingerprint("scorers")
    fingerprints = {kind: {"raw": raw_fingerprint(config, kind), "clips": clips_fingerprint(config, kind),
                           "scores": scorers_fingerprint + clips_fingerprint(config, kind)}
                    for kind in ("video", "image")}
    ready = {s.name for s in build_scorers(config.scorers)[0]}
    plans = {raw.key: _plan(out, raw, fingerprints[raw.kind], ready) for raw in files}
    # A caption table is read whole (a malformed one named) before any file is processed,
    # and only when some clip is to be scored: a run with nothing to do does not parse it.
    captioning = Captioning.from_config(config, load_model=False) if any(p.score for p in plans.values()) \
        else Captioning()
    for raw in tqdm(files, desc="curating", unit="file", disable=not progress):
        plan = plans[raw.key]
        with contextlib.closing(_FetchedOnce(source, raw.path)) as fetched:
            if plan.probe:
                raw_videos(fetched, out, raw, config)
            elif plan.caption:
                refresh_caption(fetched, out, raw)
            if plan.cut:
                scene_clips(fetched, out, raw.key, config, progress=progress)
        if plan.score:
            captioning.load_model(config)  # once, when something is to be scored
            scored_clips(out, raw.key, config, captioning, progress=progress, scorers_fingerprint=scorers_fingerprint)
    return training_dataset(out, [f.key for f in files], config, source)
