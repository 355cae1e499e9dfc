"""Steps 4-5, asset `training_dataset` / `opensora data training-dataset`: merge the scored
partitions, filter, and write the training table under the output root: `meta.csv`,
`meta.parquet`, `rejected.csv`, `filtered.csv` (+ `merged_scores.parquet`, a cache).

A bad file never stops the pipeline: its step records the reason in the manifest and
the merge lists it in `rejected.csv`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from opensora_core.curation.config import CurationConfig
from opensora_core.curation.partitions import (
    PARTITIONS,
    SCORES_TABLE,
    clips_folder,
    read_manifest,
    step_dir,
    sweep_partitions,
)
from opensora_core.curation.storage import FileList, Storage
from opensora_core.utils.atomic import sweep_leftovers
from opensora_core.utils.folder_lock import FolderLock

log = logging.getLogger(__name__)

OPENSORA_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution",
                    "aes", "flow", "ocr", "match")
OUR_COLUMNS = ("clip_id", "partition", "source", "source_sha256", "start_frame", "end_frame", "sha256",
               "media", "text_source", "quality", "quality_sharpness", "quality_exposure", "quality_contrast")
# Columns every training row must have filled (fps only for videos: images have none).
REQUIRED_COLUMNS = ("path", "num_frames", "height", "width", "aspect_ratio", "resolution", "clip_id", "source",
                    "sha256")
# Columns every clip has from the cut itself (filters on them never lack a value).
GEOMETRY_COLUMNS = ("num_frames", "resolution")
# Every partition's scores as last merged: a cache of `training_dataset` (see `_MergedScores`).
MERGED_SCORES = "merged_scores.parquet"


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
        data = out.read_bytes(*step_dir(key, "scores"), SCORES_TABLE)
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
    sweep_partitions(out)
    scored, rejected, scorers_run, sources = _scored_partitions(out, keys, source, summary)
    table = _read_all_scores(out, scored) if scored else pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    _relocate(out, table, sources)
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
    _reject_all_filtered(kept, filtered, rejected)
    with _publish_lock(out):
        _write_tables(out, kept, filtered, rejected, summary)
    return summary


# What `_write_tables` writes, under the output folder's lock (and nothing else writes).
TABLE_FILES = ("meta.csv", "meta.parquet", "filtered.csv", "rejected.csv", "summary.json")


@contextlib.contextmanager
def _publish_lock(out: Storage):
    """The output folder's lock while the tables are written (a local folder: two merges
    never interleave their meta.csv / meta.parquet), after sweeping the temporary files a
    killed merge left; an object store has no such lock."""
    if not out.is_local:
        yield
        return
    with FolderLock(out.root, "curation: writing the training table"):
        sweep_leftovers(Path(out.root), TABLE_FILES)
        yield


def _scored_partitions(out: Storage, keys: list[str], source: Storage | FileList | None,
                       summary: DatasetSummary) -> tuple[list[str], list[dict], dict, dict[str, str]]:
    """(the partitions of `keys` with clips to merge, a rejection for each rejected one,
    scorer name -> what it recorded, partition -> its raw file's place in `source`);
    counts, notes and partitions not scored yet go to `summary`."""
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
    return scored, rejected, scorers_run, sources


def _relocate(out: Storage, table: pd.DataFrame, sources: dict[str, str]) -> None:
    """Give `table`'s rows the places of their clips under `out` and of their raw files
    (`sources`) as they are now."""
    # Where the clips are now: rows written under another output root (a moved or copied
    # folder) are given this one's paths (vectorised per partition: merges run to ~1M rows).
    here = (out.path(PARTITIONS) if out.is_local else f"{out.url}/{PARTITIONS}") + "/"
    moved = ~table["path"].astype(str).str.startswith(here) if len(table) else []
    if len(table) and moved.any():
        folders = {key: clips_folder(out, key) for key in table.loc[moved, "partition"].unique()}
        names = table.loc[moved, "path"].astype(str).str.rsplit("/", n=1).str[-1]
        table.loc[moved, "path"] = table.loc[moved, "partition"].map(folders) + names
    if len(table) and sources:  # where the raw files are now
        table["source"] = table["partition"].map(sources).fillna(table["source"])


def _reject_all_filtered(kept: pd.DataFrame, filtered: pd.DataFrame, rejected: list[dict]) -> None:
    """An input whose every clip was filtered out is rejected at the filter step."""
    kept_sources = set(kept["source"]) if len(kept) else set()
    for raw_file, group in filtered.groupby("source") if len(filtered) else []:
        if raw_file not in kept_sources:
            counts = Counter(r.split(" (filters.")[1].rstrip(")") if " (filters." in r else r for r in group["reason"])
            reason = f"all {len(group)} clips filtered: " + ", ".join(f"{k} ({n})" for k, n in counts.most_common())
            rejected.append({"path": raw_file, "step": "training_dataset", "reason": reason,
                             "partition": group["partition"].iloc[0]})


def _write_tables(out: Storage, kept: pd.DataFrame, filtered: pd.DataFrame, rejected: list[dict],
                  summary: DatasetSummary) -> None:
    """Write `meta.csv`, `meta.parquet`, `filtered.csv`, `rejected.csv` and
    `summary.json` (completing `summary`)."""
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
