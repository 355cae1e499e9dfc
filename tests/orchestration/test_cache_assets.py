from __future__ import annotations

import hashlib

import pandas as pd
from dagster import AssetSelection, DagsterInstance, materialize

from assets_defs.caches import cache_checks, text_embeddings, video_latents
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import write_video
from orchestration.resources import CacheSettings, CurationStorage


def _table(folder, count):
    rows = []
    for i, (color, direction) in enumerate([("red", "left"), ("blue", "up"), ("green", "down")][:count]):
        path = folder / f"clip{i}.mp4"
        if not path.exists():  # x264's output can depend on the process's floating-point state
            write_video(path, moving_square_clip(12, 64, 64, color=color, direction=direction), fps=8)
        rows.append({"path": str(path), "text": f"a {color} square moving {direction}", "num_frames": 12,
                     "height": 64, "width": 64, "fps": 8.0, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return pd.DataFrame(rows)


def test_cache_assets_encode_incrementally_and_pass_their_checks(tmp_path):
    curated = tmp_path / "curated"
    curated.mkdir()
    storage = CurationStorage(raw_root=str(tmp_path), curated_root=str(curated))
    settings = CacheSettings(root=str(tmp_path / "caches"), stages=["tiny/stage1", "tiny/stage2"])
    resources = {"curation_storage": storage, "cache_settings": settings}
    instance = DagsterInstance.ephemeral()

    _table(tmp_path, 2).to_parquet(curated / "meta.parquet")
    first = materialize([text_embeddings, video_latents, *cache_checks], instance=instance, resources=resources)
    assert first.success
    video_md = first.asset_materializations_for_node("video_latents")[0].metadata
    assert video_md["encoded"].value > 2 and video_md["skipped"].value == 0
    assert first.asset_materializations_for_node("text_embeddings")[0].metadata["encoded"].value == 2
    assert all(e.passed for e in first.get_asset_check_evaluations())

    _table(tmp_path, 3).to_parquet(curated / "meta.parquet")  # one more clip
    second = materialize([text_embeddings, video_latents, *cache_checks], instance=instance, resources=resources)
    text_md = second.asset_materializations_for_node("text_embeddings")[0].metadata
    new_video = second.asset_materializations_for_node("video_latents")[0].metadata["encoded"].value
    assert text_md["encoded"].value == 1 and text_md["reused"].value == 2
    assert 0 < new_video < video_md["encoded"].value
    assert all(e.passed for e in second.get_asset_check_evaluations())


def test_cache_checks_fail_when_rows_are_not_covered(tmp_path):
    curated = tmp_path / "curated"
    curated.mkdir()
    storage = CurationStorage(raw_root=str(tmp_path), curated_root=str(curated))
    settings = CacheSettings(root=str(tmp_path / "caches"), stages=["tiny/stage1"])
    resources = {"curation_storage": storage, "cache_settings": settings}
    _table(tmp_path, 1).to_parquet(curated / "meta.parquet")
    assert materialize([text_embeddings, video_latents], resources=resources).success
    _table(tmp_path, 2).to_parquet(curated / "meta.parquet")  # a row the caches have not seen
    checks_only = materialize([text_embeddings, video_latents, *cache_checks], resources=resources,
                              selection=AssetSelection.checks(*cache_checks), raise_on_error=False)
    evaluations = {e.check_name: e for e in checks_only.get_asset_check_evaluations()}
    assert set(evaluations) == {"text_embeddings_complete", "video_latents_complete"}
    assert not any(e.passed for e in evaluations.values())
    assert evaluations["text_embeddings_complete"].metadata["missing"].value == 1
