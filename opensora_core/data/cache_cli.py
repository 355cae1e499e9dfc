"""`opensora cache ...`: the cache steps `text_embeddings` and `video_latents`
(`opensora_core.data.cache_steps`), named as their assets and DVC stages."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from opensora_core.utils.cli import console, err_console, fail

cache_app = typer.Typer(no_args_is_help=True, help="Build the T5 / VAE latent caches.")

MetaOpt = Annotated[Path, typer.Option("--meta", help="Training table (meta.csv or .parquet).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Cache folder (created; reused across runs).")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="Profile naming the VAE / text encoder.")]
# Spellings before the steps were named after their assets; hidden, kept for a release.
OLD_NAMES = {"text-embeddings": "text", "video-latents": "video"}


def _table(meta: Path, columns: tuple[str, ...]):
    from opensora_core.data.meta import TableError, read_training_table

    try:
        return read_training_table(meta, columns)
    except TableError as err:
        fail(str(err))


@contextlib.contextmanager
def _one_writer():
    """Another process writing the same cache folder, or a stage config that does not
    load: exit 2, naming it."""
    from opensora_core.config import ConfigError
    from opensora_core.utils.folder_lock import FolderLocked

    try:
        yield
    except (FolderLocked, ConfigError) as err:
        fail(str(err))


def text_embeddings_command(
    meta: MetaOpt, out: OutOpt, profile: ProfileOpt = "embedded",
    preset: Annotated[str, typer.Option(help="Model preset (caption width and length).")] = "stdit2-tiny",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Encode every caption once (token ids for a jointly trained encoder)."""
    from opensora_core.data.cache_steps import TEXT_COLUMNS, text_embeddings

    with _one_writer():
        result = text_embeddings(_table(meta, TEXT_COLUMNS), out, profile, preset, batch_size)
    console.print(f"text cache {out}: {result.added} encoded, {result.reused} reused, "
                  f"{result.entries} entries, {result.nbytes / 2**20:.2f} MiB")


def video_latents_command(
    meta: MetaOpt, out: OutOpt,
    stage: Annotated[list[str], typer.Option(help="Stage config whose buckets decide the sizes (repeatable).")],
    profile: ProfileOpt = "embedded",
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Encode every clip's frames at every bucket size the stages can assign it to."""
    from opensora_core.data.cache_steps import VIDEO_COLUMNS, video_latents

    with _one_writer():
        result = video_latents(_table(meta, VIDEO_COLUMNS), out, stage, profile, device)
    console.print(f"video cache {out}: {result.added} encoded ({result.frames} frames), {result.reused} reused, "
                  f"{result.entries} entries, {result.nbytes / 2**20:.2f} MiB")
    for what, why in result.skipped:
        err_console.print(f"[yellow]skipped[/] {what}: {why}", highlight=False)
    if result.skipped:
        raise typer.Exit(1)


for _name, _command in (("text-embeddings", text_embeddings_command), ("video-latents", video_latents_command)):
    cache_app.command(_name)(_command)
    cache_app.command(OLD_NAMES[_name], hidden=True, help=f"Old name of `{_name}`.")(_command)
