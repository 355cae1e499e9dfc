"""Cache assets: `text_embeddings` and `video_latents`, both from `training_dataset`.

Doors to `opensora_core.data.cache_steps` (as are `opensora cache text-embeddings` /
`video-latents` and the DVC stages of the same names): each materialization encodes only
what the cache lacks (new clips, new captions, a new encoder identity) and reports counts
and sizes (a video entry is one clip's frames at one bucket size); the checks verify
that every training row is covered and nothing is NaN/Inf.
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
from opensora_core.data import cache_steps
from orchestration.resources import CacheSettings, CurationStorage


def _meta(storage: CurationStorage) -> pd.DataFrame:
    with storage.out().local_copy("meta.parquet") as local:
        return pd.read_parquet(local)


@asset(deps=[training_dataset], group_name="caches", kinds={"python", "safetensors"})
def text_embeddings(context: AssetExecutionContext, curation_storage: CurationStorage,
                    cache_settings: CacheSettings) -> MaterializeResult:
    result = cache_steps.text_embeddings(_meta(curation_storage), cache_settings.text_root(), cache_settings.profile,
                                         cache_settings.preset, progress=False)
    context.log.info(f"text cache: {result.added} encoded, {result.reused} reused")
    return MaterializeResult(metadata={
        "encoded": result.added, "reused": result.reused, "entries": result.entries,
        "bytes": result.nbytes, "bytes_per_caption": round(result.nbytes / max(result.entries, 1), 1),
        "encoder": result.encoder, "path": MetadataValue.path(cache_settings.text_root()),
    })


@asset(deps=[training_dataset], group_name="caches", kinds={"python", "safetensors"})
def video_latents(context: AssetExecutionContext, curation_storage: CurationStorage,
                  cache_settings: CacheSettings) -> MaterializeResult:
    result = cache_steps.video_latents(_meta(curation_storage), cache_settings.video_root(), cache_settings.stages,
                                       cache_settings.profile, progress=False)
    for what, why in result.skipped:
        context.log.warning(f"not cached: {what}: {why}")
    return MaterializeResult(metadata={
        "encoded": result.added, "reused": result.reused, "entries": result.entries, "skipped": len(result.skipped),
        "frames_encoded": result.frames, "bytes": result.nbytes,
        "bytes_per_entry": round(result.nbytes / max(result.entries, 1), 1), "vae": result.encoder,
        "stages": ", ".join(result.stages), "path": MetadataValue.path(cache_settings.video_root()),
    })


# Blocking, as the stage loss checks: no stage trains on a cache with gaps or NaNs.
@asset_check(asset=text_embeddings, blocking=True,
             description="Every caption of the training table is cached, all finite.")
def text_embeddings_complete(curation_storage: CurationStorage, cache_settings: CacheSettings) -> AssetCheckResult:
    check = cache_steps.check_text_embeddings(_meta(curation_storage), cache_settings.text_root(),
                                              cache_settings.profile, cache_settings.preset)
    return AssetCheckResult(passed=check.passed, metadata={
        "captions": check.expected, "missing": len(check.missing), "non_finite": len(check.non_finite)})


@asset_check(asset=video_latents, blocking=True,
             description="Every row has latents for every bucket it can get; all finite.")
def video_latents_complete(curation_storage: CurationStorage, cache_settings: CacheSettings) -> AssetCheckResult:
    check = cache_steps.check_video_latents(_meta(curation_storage), cache_settings.video_root(),
                                            cache_settings.stages, cache_settings.profile)
    return AssetCheckResult(passed=check.passed, metadata={
        "entries_expected": check.expected, "missing": len(check.missing), "non_finite": len(check.non_finite)})


cache_assets = [text_embeddings, video_latents]
cache_checks = [text_embeddings_complete, video_latents_complete]
