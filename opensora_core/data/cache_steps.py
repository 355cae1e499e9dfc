"""The two cache steps, whole: `text_embeddings` and `video_latents`.

The Dagster assets of the same names, `opensora cache text-embeddings` /
`video-latents` and the DVC stages of the same names are doors to these functions: each
reads the training table, builds the profile's encoder, fills the cache folder and
returns what it did; `check_*` verify a finished cache the way the asset checks do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from opensora_core.config import load_stage
from opensora_core.data.buckets import BucketAssigner
from opensora_core.data.caches import (
    ShardedTensorCache,
    build_text_cache,
    build_video_cache,
    check_cache,
    clip_plan,
    text_key,
)

TEXT_COLUMNS = ("text",)
VIDEO_COLUMNS = ("path", "num_frames", "height", "width")


@dataclass
class CacheStepResult:
    """What one cache step did: counts, the cache's size and the encoder's identity."""

    path: str
    encoder: str
    added: int
    reused: int
    entries: int
    nbytes: int
    frames: int = 0  # latent frames encoded (video)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    stages: tuple[str, ...] = ()


def text_embeddings(table: pd.DataFrame, out: str | Path, profile: str = "embedded", preset: str = "stdit2-tiny",
                    batch_size: int = 64, progress: bool = True) -> CacheStepResult:
    """Encode every caption of the training table once (token ids for a jointly trained encoder)."""
    from opensora_core.models.encoders import load_text_encoder

    with ShardedTensorCache(out, writer="text_embeddings") as cache:  # a second writer stops before any work
        encoder = load_text_encoder(profile, preset)
        report = build_text_cache(table["text"].astype(str).tolist(), encoder, cache, batch_size, progress=progress)
        return CacheStepResult(str(out), encoder.identity(), report.added, report.reused, len(cache), cache.nbytes())


def video_latents(table: pd.DataFrame, out: str | Path, stages: Sequence[str], profile: str = "embedded",
                  device: str = "cpu", progress: bool = True) -> CacheStepResult:
    """Encode every clip's frames at every bucket size any of `stages` can assign it to."""
    from opensora_core.models.encoders import load_vae

    assigners = [BucketAssigner(load_stage(stage)) for stage in stages]  # bad stage names fail before any work
    with ShardedTensorCache(out, writer="video_latents") as cache:  # a second writer stops before any work
        vae = load_vae(profile, device)
        result = CacheStepResult(str(out), vae.identity(), 0, 0, 0, 0, stages=tuple(stages))
        for assigner in assigners:
            report = build_video_cache(table, assigner, vae, cache, progress=progress, device=device)
            result.added += report.added
            result.reused += report.reused
            result.frames += report.frames
            result.skipped += report.skipped
        result.entries, result.nbytes = len(cache), cache.nbytes()
    return result


@dataclass
class CacheCheck:
    expected: int
    missing: list[str]
    non_finite: list[str]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.non_finite


def check_text_embeddings(table: pd.DataFrame, out: str | Path, profile: str = "embedded",
                          preset: str = "stdit2-tiny") -> CacheCheck:
    """Every caption of the table is cached, all finite."""
    from opensora_core.models.encoders import load_text_encoder

    encoder = load_text_encoder(profile, preset)
    keys = sorted({text_key(str(text), encoder) for text in table["text"]})
    return CacheCheck(len(keys), *check_cache(ShardedTensorCache(out), keys))


def check_video_latents(table: pd.DataFrame, out: str | Path, stages: Sequence[str],
                        profile: str = "embedded") -> CacheCheck:
    """Every row has latents for every bucket any of `stages` can give it; all finite."""
    from opensora_core.models.encoders import load_vae

    identity = load_vae(profile).identity()
    keys: set[str] = set()
    for stage in stages:
        assigner = BucketAssigner(load_stage(stage))
        keys |= {span.key for _, row in table.iterrows() for span in clip_plan(row, assigner, identity)}
    return CacheCheck(len(keys), *check_cache(ShardedTensorCache(out), sorted(keys)))
