"""Curation assets: one dynamic partition per raw file, then one merged training table.

raw_videos -> scene_clips -> scored_clips (partitioned) -> training_dataset (merged,
filtered), each a call to the function of the same name in the `opensora_core.curation` module of
that name.
A bad file materializes successfully with its rejection in the metadata: one broken
upload must not fail the run that carries the good ones. A step that fails on the way
(a codec's or a scorer's error, a store's hiccup) records it and fails its partition's
run, which can be run again.
"""


import base64
import json

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AutomationCondition,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from opensora_core.curation import partitions
from opensora_core.curation import raw_videos as raw_step
from opensora_core.curation import scene_clips as clips_step
from opensora_core.curation import scored_clips as scores_step
from opensora_core.curation import training_dataset as dataset_step
from opensora_core.curation.ingest import INDEX_FILE, RawFile, register_inputs
from opensora_core.curation.scoring import SCORE_RANGES
from opensora_core.utils.folder_lock import FolderLocked
from orchestration.resources import CurationStorage

raw_partitions = DynamicPartitionsDefinition(name="raw_videos")
# The per-file steps share one Dagster pool, so an instance can bound how many run at once
# across all runs (every partition is its own run): `dagster instance concurrency set
# curation 4`, or `concurrency: {pools: {default_limit: 4}}` in dagster.yaml. Unset: no bound
# beyond the run queue's (10 runs by default).
CURATION_POOL = "curation"


def _raw_file(storage: CurationStorage, key: str) -> RawFile:
    """The raw file of partition `key`, from the index the sensor keeps (re-scanned
    once when the key is not there, e.g. a partition added by hand)."""
    out = storage.out()
    for attempt in range(2):
        if attempt or not out.exists(INDEX_FILE):
            register_inputs(storage.source(), storage.curation_config(), index=out)
        for row in json.loads(out.read_text(INDEX_FILE)):
            if row["key"] == key:
                raw = RawFile(**row)
                if not raw.problem and not storage.source().exists(raw.path):  # a problem is recorded instead
                    raise Failure(f"partition {key}: raw file {raw.path} is gone from {storage.raw_root}")
                return raw
    raise Failure(f"partition {key}: no raw file under {storage.raw_root} has this key "
                  "(renamed or changed since it was registered?)")


CAPTION_RUN_TAG = ("opensora/reason", "caption")  # on runs the sensor requests for a changed sidecar
# On runs the sensor requests when the scorers' settings, weights or caption table changed.
SCORERS_RUN_TAG = ("opensora/reason", "scorers")


def _score_only(context: AssetExecutionContext, storage: CurationStorage, raw: RawFile | None = None) -> bool:
    """A run requested for a changed sidecar caption or changed scorers, whose file's
    probe and clips stand: the caption is read again and the clips scored, not probed
    and cut again. (The raw file is looked up only for such a run.)"""
    tag = CAPTION_RUN_TAG[0]
    if context.run.tags.get(tag) not in (CAPTION_RUN_TAG[1], SCORERS_RUN_TAG[1]):
        return False
    raw = raw or _raw_file(storage, context.partition_key)
    return partitions.probe_and_cut_up_to_date(storage.out(), raw, storage.curation_config())


def _fail_for_retry(manifest: dict, step: str) -> None:
    """A step that failed on the way (a codec's or a scorer's error, a store's hiccup)
    recorded it and asked to be run again: the run fails with it, visibly and re-runnable
    (a file that is bad in itself is a rejection, and the run succeeds)."""
    if manifest.get("retry"):
        what = [manifest["rejected"]["reason"]] if manifest.get("rejected") else [
            *manifest.get("failures", []),  # scores; a probe's sidecar caption that could not be read:
            *(note for note in manifest.get("probe", {}).get("notes", []) if "could not be read" in note)]
        raise Failure(f"{step} of partition {manifest['key']}: " + "; ".join(what) + " (recorded; run it again)",
                      metadata={"failures": MetadataValue.json(what)})


def _rejection(manifest: dict) -> dict:
    rejected = manifest.get("rejected")
    return {"rejected": MetadataValue.text(f"{rejected['step']}: {rejected['reason']}" if rejected else "no")}


THUMBNAIL_SIDE = 256  # the longer side of the thumbnail in the metadata, in pixels


def _thumbnail_md(storage: CurationStorage, key: str, clips: pd.DataFrame) -> str:
    """The first clip's thumbnail as Markdown, at most THUMBNAIL_SIDE pixels across (a
    still image is its own thumbnail: the metadata must not carry the whole photo)."""
    import cv2

    if clips.empty:
        return "no clips"
    name = clips["thumbnail"].iloc[0]
    image = cv2.imdecode(np.frombuffer(storage.out().read_bytes(partitions.PARTITIONS, key, "clips", name), np.uint8),
                         cv2.IMREAD_COLOR)
    if image is None:
        return f"thumbnail {name} could not be decoded"
    scale = THUMBNAIL_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    data = base64.b64encode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()).decode()
    return f"![{clips['clip_id'].iloc[0]}](data:image/jpeg;base64,{data})"


def histogram_md(table: pd.DataFrame, columns: list[str], bins: int = 5) -> str:
    """A small Markdown table: per score, clip counts in `bins` equal-width bins."""
    lines = ["| score | bins (count) |", "| --- | --- |"]
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce").dropna() if column in table else pd.Series()
        if values.empty:
            continue
        counts, edges = np.histogram(values, bins=bins)
        cells = ", ".join(f"{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}" for i, c in enumerate(counts))
        lines.append(f"| {column} | {cells} |")
    return "\n".join(lines)


SCORE_COLUMNS = ["aes", "flow", "ocr", "match", "quality"]


@asset(partitions_def=raw_partitions, group_name="curation", kinds={"python", "video"}, pool=CURATION_POOL)
def raw_videos(context: AssetExecutionContext, curation_storage: CurationStorage) -> MaterializeResult:
    """One raw video or image: content hash and probe (codec, fps, decodable frames, size)."""
    curation_storage.curation_config().check_local_files()  # a bad model path fails before the file is read
    raw = _raw_file(curation_storage, context.partition_key)
    if _score_only(context, curation_storage, raw):
        manifest = raw_step.refresh_caption(curation_storage.source(), curation_storage.out(), raw)
    else:
        manifest = raw_step.raw_videos(curation_storage.source(), curation_storage.out(), raw,
                                       curation_storage.curation_config())
    if not raw.problem:  # a listed file missing is its rejection; a store's hiccup on reading one is a failure
        _fail_for_retry(manifest, "raw_videos")
    probe = manifest["probe"]
    return MaterializeResult(metadata={
        # A listed URL is a link in the UI; a path (or a file in an object store root) a path.
        "path": (MetadataValue.url if "://" in manifest["source"] else MetadataValue.path)(manifest["source"]),
        "sha256": raw.sha256, "kind": probe["kind"],
        "codec": str(probe["codec"]), "fps": float(probe["fps"] or 0), "num_frames": probe["num_frames"],
        "size": f"{probe['width']}x{probe['height']}", "notes": "; ".join(probe["notes"]) or "none",
        **_rejection(manifest),
    })


@asset(partitions_def=raw_partitions, deps=[raw_videos], group_name="curation", kinds={"python", "video"},
       pool=CURATION_POOL)
def scene_clips(context: AssetExecutionContext, curation_storage: CurationStorage) -> MaterializeResult:
    """Scenes (PySceneDetect adaptive) cut into frame-accurate clips (copied from an mp4/mov
    or AVI source where that is exact, else re-encoded as MPEG-4 or H.264, from the data
    config); the weights-free scores are computed on the way, from the same decode."""
    key = context.partition_key
    if _score_only(context, curation_storage):
        manifest = partitions.read_manifest(curation_storage.out(), key, "clips")  # the cut stands
    else:
        manifest = clips_step.scene_clips(curation_storage.source(), curation_storage.out(), key,
                                          curation_storage.curation_config())
    _fail_for_retry(manifest, "scene_clips")
    clips = clips_step.read_clips(curation_storage.out(), key)
    return MaterializeResult(metadata={
        "clips": manifest["clips"], "frames": int(clips["num_frames"].sum()) if len(clips) else 0,
        "scenes": len(manifest.get("scenes", [])), "dropped_pieces": len(manifest.get("dropped", [])),
        "stream_copied": manifest.get("stream_copied", 0),
        "scored_while_cutting": ", ".join(manifest.get("sample_scores") or {}) or "none",
        "notes": "; ".join(manifest["notes"]) or "none", "thumbnail": MetadataValue.md(
            _thumbnail_md(curation_storage, key, clips)), **_rejection(manifest),
    })


@asset(partitions_def=raw_partitions, deps=[scene_clips], group_name="curation", kinds={"python"},
       pool=CURATION_POOL)
def scored_clips(context: AssetExecutionContext, curation_storage: CurationStorage) -> MaterializeResult:
    """Captions and scores per clip: flow, ocr, quality (and aes, match with CLIP weights)."""
    key = context.partition_key
    out = curation_storage.out()
    manifest = scores_step.scored_clips(out, key, curation_storage.curation_config(),
                                        scores_step.Captioning.from_config(curation_storage.curation_config()))
    for name, reason in manifest["skipped"].items():
        context.log.warning(f"scorer {name} skipped: {reason}")
    _fail_for_retry(manifest, "scored_clips")
    table = scores_step.read_scores(out, key)
    return MaterializeResult(metadata={
        "clips": manifest["clips"], "scorers": ", ".join(f"{n} {s['version']}" for n, s in manifest["scorers"].items()),
        "skipped": "; ".join(f"{n}: {r}" for n, r in manifest["skipped"].items()) or "none",
        "reused_from_scene_clips": ", ".join(manifest.get("reused", [])) or "none",
        "captioned": int(table["text"].notna().sum()) if len(table) else 0,
        "histograms": MetadataValue.md(histogram_md(table, SCORE_COLUMNS)), **_rejection(manifest),
    })


@asset(deps=[scored_clips], group_name="curation", kinds={"python", "pandas"},
       automation_condition=AutomationCondition.eager())
def training_dataset(context: AssetExecutionContext, curation_storage: CurationStorage) -> MaterializeResult:
    """Every partition merged and filtered into Open-Sora's metadata table. The partitions
    are the raw files as the sensor last saw them: it removes those of files deleted or
    replaced, so their clips leave the table at the next merge."""
    out = curation_storage.out()
    keys = context.instance.get_dynamic_partitions(raw_partitions.name)
    try:
        summary = dataset_step.training_dataset(out, keys, curation_storage.curation_config(),
                                                curation_storage.source())
    except FolderLocked as err:  # another merge is writing the tables
        raise Failure(f"training_dataset: {err}") from None
    for warning in summary.warnings:
        context.log.warning(warning)
    with out.local_copy("meta.parquet") as local:
        meta = pd.read_parquet(local)
    preview = meta[[c for c in ("clip_id", "text", "num_frames", "height", "width", *SCORE_COLUMNS) if c in meta]]
    return MaterializeResult(metadata={
        "kept": summary.kept, "filtered": summary.filtered, "rejected": summary.rejected,
        "partitions": summary.partitions, "not_scored_yet": len(summary.missing),
        "rejected_by_step": MetadataValue.json(summary.reject_steps),
        "warnings": "\n".join(summary.warnings) or "none",
        "meta_csv": MetadataValue.path(out.path("meta.csv")),
        "histograms": MetadataValue.md(histogram_md(meta, SCORE_COLUMNS)),
        "preview": MetadataValue.md(preview.head(10).to_markdown(index=False) if len(preview) else "empty"),
    })


def _meta(storage: CurationStorage) -> pd.DataFrame:
    with storage.out().local_copy("meta.parquet") as local:
        return pd.read_parquet(local)


@asset_check(asset=training_dataset, blocking=True, description="The training table has at least one clip.")
def training_dataset_not_empty(curation_storage: CurationStorage) -> AssetCheckResult:
    rows = len(_meta(curation_storage))
    return AssetCheckResult(passed=rows > 0, metadata={"rows": rows})


@asset_check(asset=training_dataset, description="Required columns present and non-null (fps: videos only).")
def training_dataset_columns(curation_storage: CurationStorage) -> AssetCheckResult:
    meta = _meta(curation_storage)
    problems = [f"missing column {c}" for c in dataset_step.REQUIRED_COLUMNS if c not in meta]
    problems += [f"{c}: {n} nulls" for c in dataset_step.REQUIRED_COLUMNS if c in meta and (n := int(meta[c].isna().sum()))]
    if "fps" in meta and "media" in meta:
        nulls = int(meta.loc[meta["media"] == "video", "fps"].isna().sum())
        if nulls:
            problems.append(f"fps: {nulls} videos without fps")
    return AssetCheckResult(passed=not problems, metadata={"problems": "\n".join(problems) or "none"})


@asset_check(asset=training_dataset, description="Every score lies in its documented range.")
def training_dataset_scores_in_range(curation_storage: CurationStorage) -> AssetCheckResult:
    meta = _meta(curation_storage)
    problems = []
    for column, (low, high) in SCORE_RANGES.items():
        if column not in meta:
            continue
        values = pd.to_numeric(meta[column], errors="coerce").dropna()
        outside = pd.Series(False, index=values.index)
        if low is not None:
            outside |= values < low
        if high is not None:
            outside |= values > high
        bad = int(outside.sum())
        if bad or not np.isfinite(values).all():
            problems.append(f"{column}: {bad} out of [{low}, {high}] or non-finite")
    return AssetCheckResult(passed=not problems, metadata={"problems": "\n".join(problems) or "none"})


@asset_check(asset=training_dataset, description="Reports how many input files were rejected, and why.")
def training_dataset_rejected(curation_storage: CurationStorage) -> AssetCheckResult:
    with curation_storage.out().local_copy("rejected.csv") as local:
        rejected = pd.read_csv(local)
    by_step = rejected["step"].value_counts().to_dict() if len(rejected) else {}
    return AssetCheckResult(passed=True, severity=AssetCheckSeverity.WARN,
                            metadata={"rejected": len(rejected), "by_step": MetadataValue.json(by_step)})


curation_assets = [raw_videos, scene_clips, scored_clips, training_dataset]
curation_checks = [training_dataset_not_empty, training_dataset_columns, training_dataset_scores_in_range,
                   training_dataset_rejected]
