"""`opensora data ...`: curation steps without Dagster.

Each step command has the name of its asset and core function (`raw-videos`,
`scene-clips`, `scored-clips`, `training-dataset`; the old spellings `probe`, `scenes`,
`score`, `filter` are hidden aliases for a release) and works on every registered raw
file, or on `--key` partitions only. `curate` runs them all, reusing partitions that are
up to date: the DVC stage `training_dataset` runs it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from opensora_core.utils.cli import console, err_console, fail

data_app = typer.Typer(
    no_args_is_help=True, help="Curate raw videos into a training table (ingest, scenes, scores, filters)."
)

InputOpt = Annotated[str, typer.Option(
    "--input", help="Folder (or fsspec URL) of raw videos and images, or a list of them: a .txt with one path or "
                    "URL per line, or a .csv with a 'path' column.")]
OutOpt = Annotated[str, typer.Option("--out", help="Output folder (or fsspec URL).")]
ConfigOpt = Annotated[str, typer.Option("--config", help="configs/data stem or YAML path.")]
KeyOpt = Annotated[list[str] | None, typer.Option("--key", help="Only these partitions (repeatable).")]
StorageOpt = Annotated[list[str] | None, typer.Option(
    "--storage-option", help="PROTOCOL.KEY=VALUE for an object store (repeatable), e.g. "
                             "s3.endpoint_url=http://127.0.0.1:9000 for an s3-compatible server; VALUE may be JSON. "
                             "Credentials are best left to the store's environment (AWS_ACCESS_KEY_ID, ...).")]


def _setup(input: str, out: str, config: str, storage_options: list[str] | None = None):
    from opensora_core.config import ConfigError
    from opensora_core.curation.config import load_curation_config
    from opensora_core.curation.ingest import check_output_outside
    from opensora_core.curation.storage import (
        LIST_SUFFIXES,
        Storage,
        open_source,
        set_protocol_options,
    )

    try:
        settings = load_curation_config(config)
    except ConfigError as err:
        fail(str(err))
    try:
        set_protocol_options(storage_options or [])
    except ValueError as err:
        fail(f"--storage-option: {err}")
    with _store_errors("--input"):
        source = open_source(input)
        missing = source.missing()  # the store's first request: where its settings are found wrong
    if missing:
        fail(f"--input {input}: no such folder (or list of files: {', '.join(LIST_SUFFIXES)})")
    with _store_errors("--out"):
        storage = Storage(out)
        storage.exists(".")  # likewise
        check_output_outside(source, storage)
    return settings, source, storage


@contextlib.contextmanager
def _store_errors(option: str):
    """A store that cannot be opened, or rejects its settings, is exit 2 naming `option`."""
    try:
        yield
    except (OSError, ValueError) as err:
        fail(f"{option}: {err}")
    except (TypeError, AttributeError) as err:  # an option the store's client does not take, or of the wrong type
        fail(f"{option}: the store rejected its options (--storage-option): {type(err).__name__}: {err}")


def _files(source, out, settings, keys: list[str] | None):
    from opensora_core.curation.ingest import register_inputs

    files = register_inputs(source, settings, index=out)
    if keys:
        unknown = sorted(set(keys) - {f.key for f in files})
        if unknown:
            fail(f"unknown partition keys: {', '.join(unknown)} (see {out.url}/inputs.json)")
        files = [f for f in files if f.key in keys]
    return files


def _print_summary(summary, out) -> None:
    table = Table(title=f"training dataset: {out.url}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in (("partitions", summary.partitions), ("clips kept (meta.csv)", summary.kept),
                        ("clips filtered (filtered.csv)", summary.filtered),
                        ("files rejected (rejected.csv)", summary.rejected)):
        table.add_row(name, f"{value:,}")
    for step, count in sorted(summary.reject_steps.items()):
        table.add_row(f"  rejected at {step}", f"{count:,}")
    console.print(table)
    for warning in summary.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)


@contextlib.contextmanager
def _refused_while_locked():
    """Another run writing the same output folder's tables: exit 2, naming it."""
    from opensora_core.utils.folder_lock import FolderLocked

    try:
        yield
    except FolderLocked as err:
        fail(str(err))


def _after_earlier_step(step, *args, **kwargs):
    """`step(*args, **kwargs)`; the partition's earlier step not run yet is exit 2, named."""
    try:
        return step(*args, **kwargs)
    except FileNotFoundError as err:
        fail(f"{err}: run the earlier steps first (`opensora data raw-videos`, then `scene-clips`), or `opensora data curate`")


@data_app.command("probe", hidden=True, help="Old name of `raw-videos`.")
@data_app.command("raw-videos")
def probe(input: InputOpt, out: OutOpt, config: ConfigOpt = "default", key: KeyOpt = None,
        storage_option: StorageOpt = None) -> None:
    """raw_videos: hash and probe every raw file (codec, fps, decodable frames, size)."""
    from opensora_core.curation.raw_videos import raw_videos

    settings, source, storage = _setup(input, out, config, storage_option)
    for raw in _files(source, storage, settings, key):
        manifest = raw_videos(source, storage, raw, settings)
        p = manifest["probe"]
        shown = [f"turned {p['rotation']}" if p.get("rotation") else "", "mirrored" if p.get("mirrored") else "",
                 f"pixels {p['pixel_aspect']}" if p.get("pixel_aspect") else "",
                 "deinterlaced" if p.get("interlaced") else ""]
        shown = f" (as shown: {', '.join(filter(None, shown))})" if any(shown) else ""
        status = f"rejected: {manifest['rejected']['reason']}" if manifest["rejected"] else \
            f"{p['codec']} {p['width']}x{p['height']}{shown} {p['num_frames']} frames @ {p['fps'] or 0:.3g} fps"
        console.print(f"{raw.key}  {raw.path}  {status}", highlight=False)


@data_app.command("scenes", hidden=True, help="Old name of `scene-clips`.")
@data_app.command("scene-clips")
def scenes(input: InputOpt, out: OutOpt, config: ConfigOpt = "default", key: KeyOpt = None,
        storage_option: StorageOpt = None) -> None:
    """scene_clips: detect scenes and cut them into frame-accurate clips."""
    from opensora_core.curation.scene_clips import scene_clips

    settings, source, storage = _setup(input, out, config, storage_option)
    for raw in _files(source, storage, settings, key):
        manifest = _after_earlier_step(scene_clips, source, storage, raw.key, settings, progress=True)
        status = f"rejected: {manifest['rejected']['reason']}" if manifest["rejected"] else f"{manifest['clips']} clips"
        console.print(f"{raw.key}  {status}", highlight=False)


@data_app.command("score", hidden=True, help="Old name of `scored-clips`.")
@data_app.command("scored-clips")
def score(input: InputOpt, out: OutOpt, config: ConfigOpt = "default", key: KeyOpt = None,
        storage_option: StorageOpt = None) -> None:
    """scored_clips: captions and scores (flow, ocr, quality; aes and match with CLIP weights)."""
    from opensora_core.curation.scored_clips import Captioning, scored_clips

    settings, source, storage = _setup(input, out, config, storage_option)
    captioning = Captioning.from_config(settings)
    for raw in _files(source, storage, settings, key):
        manifest = _after_earlier_step(scored_clips, storage, raw.key, settings, captioning, progress=True)
        console.print(f"{raw.key}  {manifest['clips']} clips scored by {', '.join(manifest['scorers'])}",
                      highlight=False)


@data_app.command("filter", hidden=True, help="Old name of `training-dataset`.")
@data_app.command("training-dataset")
def filter_(input: InputOpt, out: OutOpt, config: ConfigOpt = "default", storage_option: StorageOpt = None) -> None:
    """training_dataset: merge all partitions, filter, write meta.csv/.parquet and rejected.csv."""
    from opensora_core.curation.training_dataset import training_dataset

    settings, source, storage = _setup(input, out, config, storage_option)
    with _refused_while_locked():
        summary = training_dataset(storage, [f.key for f in _files(source, storage, settings, None)], settings,
                                   source)
    _print_summary(summary, storage)


@data_app.command("curate")
def curate(input: InputOpt, out: OutOpt, config: ConfigOpt = "default",
           progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
           storage_option: StorageOpt = None) -> None:
    """All steps without Dagster: meta.csv, meta.parquet, rejected.csv (+ filtered.csv)."""
    from opensora_core.curation.runner import curate as run

    settings, source, storage = _setup(input, out, config, storage_option)
    with _refused_while_locked():
        summary = run(source, storage, settings, progress=progress)
    _print_summary(summary, storage)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the dataset into.")],
    videos: Annotated[int, typer.Option(min=0, help="Number of mp4 clips.")] = 24,
    images: Annotated[int, typer.Option(min=0, help="Number of png stills.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    frames: Annotated[int, typer.Option(min=2, help="Frames per clip.")] = 16,
    size: Annotated[int, typer.Option(min=16, help="Height and width in pixels.")] = 64,
    fps: Annotated[float, typer.Option(min=1, help="Frames per second of the clips.")] = 8.0,
    speed: Annotated[str, typer.Option(help="Pixels per frame at 64 px, drawn per clip from LOW,HIGH.")] = "1.0,2.5",
    hold_out: Annotated[bool, typer.Option(
        help="Leave out the held-out (colour, shape, direction) combinations that the evaluation prompts name.")] = False,
) -> None:
    """Write the synthetic captioned dataset (coloured shapes moving / still, with sidecar captions)."""
    from opensora_core.data.synthetic import synth as run

    if out.exists() and not out.is_dir():
        fail(f"--out {out}: a file, not a folder")
    try:
        low, high = (float(part) for part in speed.split(","))
        if not 0 < low <= high:
            raise ValueError
    except ValueError:
        fail(f"--speed {speed}: expected LOW,HIGH with 0 < LOW <= HIGH (pixels per frame at 64 px)")
    samples = run(out, videos=videos, images=images, seed=seed, num_frames=frames, height=size, width=size,
                  fps=fps, speed=(low, high), hold_out=hold_out)
    console.print(f"wrote {videos} videos and {images} images to {out}", highlight=False)
    for sample in samples[:3]:
        console.print(f"  {sample.path}: {sample.text}", highlight=False)


@data_app.command("buckets")
def buckets(
    meta: Annotated[Path, typer.Option(help="Training table (meta.csv or .parquet) with num_frames, height, width.")],
    stage: Annotated[str, typer.Option(help="Stage config: path or stem such as stage1 or tiny/stage1.")],
    seed: Annotated[int | None, typer.Option(help="The training seed (default: the stage's).")] = None,
    epoch: Annotated[int, typer.Option(help="Epoch whose draw to show (each epoch draws again).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write one row per sample to this CSV.")] = None,
) -> None:
    """Show what a stage's bucket_config does to a training table: samples, batches and
    tokens per (resolution, frames) bucket, and which samples are dropped and why."""
    from opensora_core.config import load_stage
    from opensora_core.data.buckets import BucketAssigner, bucket_batches, stage_streams, summarize
    from opensora_core.data.meta import TableError, read_training_table

    try:
        table = read_training_table(meta, ("num_frames", "height", "width"))
    except TableError as err:
        fail(str(err))
    stage_config = load_stage(stage)
    assigner = BucketAssigner(stage_config)
    rows = list(zip(table["num_frames"].astype(int), table["height"].astype(int), table["width"].astype(int)))
    seed = stage_config.seed if seed is None else seed
    streams = stage_streams(seed, stage_config.stage)  # what training draws with this seed
    assignments = assigner.assign_all(rows, streams, epoch)
    batches = bucket_batches(assignments, streams, epoch)
    summary = summarize(assignments, batches)

    console.print(_bucket_table(f"{stage}: {len(rows)} samples, seed {seed}, epoch {epoch}, "
                                f"frame_interval {stage_config.frame_interval}", assigner, summary, len(batches)))
    if summary.dropped:
        dropped = Table(title=f"dropped: {sum(summary.dropped.values()):,} samples")
        dropped.add_column("reason")
        dropped.add_column("samples", justify="right")
        for reason, count in summary.dropped.most_common():
            dropped.add_row(reason, f"{count:,}")
        console.print(dropped)
    if out is not None:
        _write_assignments(table, assignments, out)
        console.print(f"wrote {out}")


def _bucket_table(title: str, assigner, summary, batch_count: int) -> Table:
    """`opensora data buckets`' table: one row per bucket, then the totals."""
    view = Table(title=title)
    for column in ("resolution", "frames", "keep_prob", "batch size", "samples", "full batches", "tokens"):
        view.add_column(column, justify="right")
    for resolution, frames, samples, batches, tokens in summary.rows:
        keep_prob, batch_size = assigner.config[resolution][frames]
        view.add_row(resolution, str(frames), f"{keep_prob:g}", str(batch_size), f"{samples:,}",
                     f"{batches:,}", f"{tokens:,}")
    kept = sum(r[2] for r in summary.rows)
    view.add_row("all", "", "", "", f"{kept:,}", f"{batch_count:,}", f"{sum(r[4] for r in summary.rows):,}",
                 style="bold")
    return view


def _write_assignments(table, assignments: list, out: Path) -> None:
    """One CSV row per sample: its bucket, or why it was dropped."""
    import pandas as pd

    from opensora_core.data.buckets import Bucket
    from opensora_core.utils.atomic import atomic_path

    paths = table["path"] if "path" in table.columns else pd.Series([""] * len(table))
    records = []
    for index, (bucket, path) in enumerate(zip(assignments, paths)):
        placed = isinstance(bucket, Bucket)
        records.append({
            "index": index, "path": path,
            "resolution": bucket.resolution if placed else "",
            "num_frames": bucket.num_frames if placed else "",
            "height": bucket.height if placed else "",
            "width": bucket.width if placed else "",
            "dropped_reason": "" if placed else bucket.reason,
        })
    with atomic_path(out) as tmp:
        pd.DataFrame.from_records(records).to_csv(tmp, index=False)
