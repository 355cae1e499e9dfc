"""Step 3, asset `scored_clips` / `opensora data scored-clips`: caption and score every clip of
one partition into `partitions/<key>/scores/scores.parquet`.

Scores that `scene_clips` computed while cutting are taken as they are while their
fingerprints match; clips are decoded only for the rest (changed scorer settings,
the CLIP scorers, a captioning model).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import pandas as pd

from opensora_core.config import ConfigError
from opensora_core.curation.captions import CaptionTable, ModelCaptioner
from opensora_core.curation.config import CurationConfig
from opensora_core.curation.partitions import (
    CLIPS_TABLE,
    SAMPLE_SCORES,
    SCORES_TABLE,
    read_manifest,
    read_step_rows,
    step_dir,
    write_manifest,
)
from opensora_core.curation.row_tables import write_rows
from opensora_core.curation.scoring import ClipSamples, build_scorers, read_samples
from opensora_core.curation.storage import Storage

log = logging.getLogger(__name__)


def _stored_scores(out: Storage, key: str, clips_manifest: dict, scorers: list, clip_ids: list[str]) -> dict:
    """clip id -> stored columns of the scorers in `scorers` whose scores `scene_clips`
    computed with the same fingerprint (and for every clip); empty when none."""
    stored = clips_manifest.get("sample_scores") or {}
    names = [s.name for s in scorers if stored.get(s.name, {}).get("fingerprint") == s.fingerprint()]
    if not names or not clip_ids or not out.exists(*step_dir(key, "clips"), SAMPLE_SCORES):
        return {}
    table_columns, table = read_step_rows(out, key, "clips", SAMPLE_SCORES)
    if not set(clip_ids) <= {row["clip_id"] for row in table}:
        return {}
    columns = [c for s in scorers if s.name in names for c in s.columns if c in table_columns]
    return {"names": names, "rows": {row["clip_id"]: {c: row[c] for c in columns} for row in table}}


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
    clip_columns, rows = read_step_rows(out, key, "clips", CLIPS_TABLE)
    texts, text_sources = _known_captions(rows, raw_manifest, config, captioning)
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
        batch, readable = _read_batch(out, key, chunk, texts[start : start + len(chunk)], decoding, captioning,
                                      failed)
        if captioning.model is not None:
            _caption_batch(captioning, batch, readable, start, texts, text_sources, failed)
        _score_batch(decoding, batch, readable, start, scores, failed)
        bar.update(len(chunk))
    bar.close()
    columns, table = _score_table(rows, clip_columns, texts, text_sources, scores, scorers)
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
    with out.staging_dir(*step_dir(key, "scores")) as folder:
        write_rows(folder / SCORES_TABLE, table, columns)
        write_manifest(folder, manifest)
    return manifest


def _known_captions(rows: list[dict], raw_manifest: dict, config: CurationConfig,
                    captioning: Captioning) -> tuple[list[str | None], list[str | None]]:
    """(each clip's caption from the sidecar or the caption table, or None; where it
    came from)."""
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
    return texts, text_sources


def _read_batch(out: Storage, key: str, chunk: list[dict], texts: list[str | None], decoding: list,
                captioning: Captioning, failed: Callable[[str, Exception], None]) -> tuple[list[ClipSamples], list[int]]:
    """The samples of the clips `chunk` (captions so far: `texts`) that the scorers in
    `decoding` and the captioning model need, and the indices of those that could be
    read."""
    batch, unreadable = [], set()
    for i, row in enumerate(chunk):
        wanted = set().union(*(s.positions(int(row["num_frames"])) for s in decoding))
        if captioning.model is not None and texts[i] is None:
            wanted.add(int(row["num_frames"]) // 2)
        samples = ClipSamples(row["clip_id"], int(row["num_frames"]))  # every score stored: no decoding
        if wanted or row.get("media") == "image":
            try:
                with out.local_copy(*step_dir(key, "clips"), PurePosixPath(row["path"]).name) as local:
                    samples = read_samples(local, row["clip_id"], int(row["num_frames"]), wanted)
            except Exception as err:  # noqa: BLE001 - this clip goes unscored, the others are scored
                failed(f"reading clip {row['clip_id']}", err)
                unreadable.add(i)
        samples.text = texts[i]
        batch.append(samples)
    return batch, [i for i in range(len(batch)) if i not in unreadable]


def _caption_batch(captioning: Captioning, batch: list[ClipSamples], readable: list[int], start: int,
                   texts: list[str | None], text_sources: list[str | None],
                   failed: Callable[[str, Exception], None]) -> None:
    """Caption with the model the readable clips of `batch` (rows from `start`) that
    have no caption yet."""
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


def _score_batch(decoding: list, batch: list[ClipSamples], readable: list[int], start: int, scores: list[dict],
                 failed: Callable[[str, Exception], None]) -> None:
    """Score the readable clips of `batch` (rows from `start`) with the scorers in
    `decoding`, into `scores`."""
    for scorer in decoding:
        try:
            values_of = scorer.score([batch[i] for i in readable]) if readable else []
        except Exception as err:  # noqa: BLE001 - its columns stay empty for this batch
            failed(f"scorer {scorer.name}", err)
            continue
        for i, values in zip(readable, values_of, strict=True):
            scores[start + i].update(values)


def _score_table(rows: list[dict], clip_columns: list[str], texts: list[str | None],
                 text_sources: list[str | None], scores: list[dict], scorers: list) -> tuple[list[str], list[dict]]:
    """(columns, rows) of the partition's `scores.parquet`: its clips with their
    captions and scores."""
    score_columns = [c for scorer in scorers for c in scorer.columns]
    columns = [*clip_columns, *(c for c in ("text", "text_source", *score_columns) if c not in clip_columns)]
    table = [{**row, "text": text, "text_source": origin, **{c: s.get(c) for c in score_columns}}
             for row, text, origin, s in zip(rows, texts, text_sources, scores, strict=True)]
    return columns, table


def read_scores(out: Storage, key: str) -> pd.DataFrame:
    with out.local_copy(*step_dir(key, "scores"), SCORES_TABLE) as local:
        return pd.read_parquet(local)
