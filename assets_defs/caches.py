"""Cache assets: `text_embeddings` and `video_latents`, both from `training_dataset`.

Thin wrappers over `opensora_core.data.caches`: each materialization encodes only what
the cache lacks (new clips, new captions, a new encoder identity) and reports counts
and sizes (a video entry is one clip's frames at one bucket size); the checks verify that every training row is covered and nothing is NaN/Inf.
"""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from assets_defs.curation import training_dataset
from opensora_core.config import load_profile, load_stage
from opensora_core.data.buckets import BucketAssigner
from opensora_core.data.caches import (
    ShardedTensorCache,
    build_text_cache,
    build_video_cache,
    check_cache,
    clip_plan,
    text_key,
)
from opensora_core.models import load_preset
from opensora_core.models.text_encoder import build_text_encoder_for_model
from opensora_core.models.vae import build_vae
from orchestration.resources import CacheSettings, CurationStorage


def _meta(storage: CurationStorage) -> pd.DataFrame:
    with storage.out().local_copy("meta.parquet") as local:
        return pd.read_parquet(local)


def _text_encoder(settings: CacheSettings):
    profile, config = load_profile(settings.profile), load_preset(settings.preset)
    return build_text_encoder_for_model(profile.text_encoder.kind, profile.text_encoder.path,
                                        config.caption_channels, config.model_max_length)


def _vae(settings: CacheSettings):
    profile = load_profile(settings.profile)
    return build_vae(profile.vae.kind, profile.vae.path)


@asset(deps=[training_dataset], group_name="caches", kinds={"python", "safetensors"})
def text_embeddings(context: AssetExecutionContext, curation_storage: CurationStorage,
                    cache_settings: CacheSettings) -> MaterializeResult:
    table = _meta(curation_storage)
    encoder = _text_encoder(cache_settings)
    cache = ShardedTensorCache(cache_settings.text_root())
    report = build_text_cache(table["text"].astype(str).tolist(), encoder, cache, progress=False)
    context.log.info(f"text cache: {report.added} encoded, {report.reused} reused")
    return MaterializeResult(metadata={
        "encoded": report.added, "reused": report.reused, "entries": len(cache),
        "bytes": cache.nbytes(), "bytes_per_caption": round(cache.nbytes() / max(len(cache), 1), 1),
        "encoder": encoder.identity(), "path": MetadataValue.path(cache_settings.text_root()),
    })


@asset(deps=[training_dataset], group_name="caches", kinds={"python", "safetensors"})
def video_latents(context: AssetExecutionContext, curation_storage: CurationStorage,
                  cache_settings: CacheSettings) -> MaterializeResult:
    table = _meta(curation_storage)
    vae = _vae(cache_settings)
    cache = ShardedTensorCache(cache_settings.video_root())
    added = reused = frames = 0
    skipped = []
    for stage in cache_settings.stages:
        report = build_video_cache(table, BucketAssigner(load_stage(stage)), vae, cache, progress=False)
        added, reused, skipped = added + report.added, reused + report.reused, skipped + report.skipped
        frames += report.frames
    for what, why in skipped:
        context.log.warning(f"not cached: {what}: {why}")
    return MaterializeResult(metadata={
        "encoded": added, "reused": reused, "entries": len(cache), "skipped": len(skipped),
        "frames_encoded": frames, "bytes": cache.nbytes(),
        "bytes_per_entry": round(cache.nbytes() / max(len(cache), 1), 1), "vae": vae.identity(), "stages": ", ".join(cache_settings.stages),
        "path": MetadataValue.path(cache_settings.video_root()),
    })


@asset_check(asset=text_embeddings, description="Every caption of the training table is cached, all finite.")
def text_embeddings_complete(curation_storage: CurationStorage, cache_settings: CacheSettings) -> AssetCheckResult:
    table = _meta(curation_storage)
    encoder = _text_encoder(cache_settings)
    keys = {text_key(str(text), encoder) for text in table["text"]}
    missing, bad = check_cache(ShardedTensorCache(cache_settings.text_root()), sorted(keys))
    return AssetCheckResult(passed=not missing and not bad,
                            metadata={"captions": len(keys), "missing": len(missing), "non_finite": len(bad)})


@asset_check(asset=video_latents, description="Every row has latents for every bucket it can get; all finite.")
def video_latents_complete(curation_storage: CurationStorage, cache_settings: CacheSettings) -> AssetCheckResult:
    table = _meta(curation_storage)
    identity = _vae(cache_settings).identity()
    keys = set()
    for stage in cache_settings.stages:
        assigner = BucketAssigner(load_stage(stage))
        keys |= {span.key for _, row in table.iterrows() for span in clip_plan(row, assigner, identity)}
    missing, bad = check_cache(ShardedTensorCache(cache_settings.video_root()), sorted(keys))
    return AssetCheckResult(passed=not missing and not bad,
                            metadata={"entries_expected": len(keys), "missing": len(missing), "non_finite": len(bad)})


cache_assets = [text_embeddings, video_latents]
cache_checks = [text_embeddings_complete, video_latents_complete]
