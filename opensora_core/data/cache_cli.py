"""`opensora cache ...`: build the text and video caches of a training table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opensora_core.data.meta import TableError, read_training_table
from opensora_core.utils.cli import console, err_console, fail

cache_app = typer.Typer(no_args_is_help=True, help="Build the T5 / VAE latent caches.")

MetaOpt = Annotated[Path, typer.Option("--meta", help="Training table (meta.csv or .parquet).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Cache folder (created; reused across runs).")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="Profile naming the VAE / text encoder.")]


def _table(meta: Path, columns: tuple[str, ...]):
    try:
        return read_training_table(meta, columns)
    except TableError as err:
        fail(str(err))


@cache_app.command("text")
def cache_text(
    meta: MetaOpt, out: OutOpt, profile: ProfileOpt = "embedded",
    preset: Annotated[str, typer.Option(help="Model preset (caption width and length).")] = "stdit2-tiny",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Encode every caption once (token ids for a jointly trained encoder)."""
    from opensora_core.config import load_profile
    from opensora_core.data.caches import ShardedTensorCache, build_text_cache
    from opensora_core.models import load_preset
    from opensora_core.models.text_encoder import build_text_encoder_for_model

    table = _table(meta, ("text",))
    settings, config = load_profile(profile), load_preset(preset)
    text_encoder = build_text_encoder_for_model(settings.text_encoder.kind, settings.text_encoder.path,
                                                config.caption_channels, config.model_max_length)
    cache = ShardedTensorCache(out)
    report = build_text_cache(table["text"].astype(str).tolist(), text_encoder, cache, batch_size)
    console.print(f"text cache {out}: {report.added} encoded, {report.reused} reused, "
                  f"{len(cache)} entries, {cache.nbytes() / 2**20:.2f} MiB")


@cache_app.command("video")
def cache_video(
    meta: MetaOpt, out: OutOpt,
    stage: Annotated[str, typer.Option(help="Stage config whose buckets decide the sizes.")],
    profile: ProfileOpt = "embedded",
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Encode every clip's frames at every bucket size the stage can assign it to."""
    from opensora_core.config import load_profile, load_stage
    from opensora_core.data.buckets import BucketAssigner
    from opensora_core.data.caches import ShardedTensorCache, build_video_cache
    from opensora_core.models.vae import build_vae

    table = _table(meta, ("path", "num_frames", "height", "width"))
    settings = load_profile(profile)
    vae = build_vae(settings.vae.kind, settings.vae.path).to(device)
    cache = ShardedTensorCache(out)
    report = build_video_cache(table, BucketAssigner(load_stage(stage)), vae, cache, device=device)
    console.print(f"video cache {out}: {report.added} encoded ({report.frames} frames), {report.reused} reused, "
                  f"{len(cache)} entries, {cache.nbytes() / 2**20:.2f} MiB")
    for what, why in report.skipped:
        err_console.print(f"[yellow]skipped[/] {what}: {why}", highlight=False)
    if report.skipped:
        raise typer.Exit(1)
