from __future__ import annotations

import hashlib
import os

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from opensora_core.cli import app
from opensora_core.config import load_stage
from opensora_core.data import caches
from opensora_core.data.buckets import BucketAssigner
from opensora_core.data.cache_steps import check_text_embeddings, check_video_latents, video_latents
from opensora_core.data.caches import (
    ShardedTensorCache,
    build_text_cache,
    build_video_cache,
    check_cache,
    clip_plan,
    clip_span,
    load_caption,
    load_clip_window,
    text_key,
    window_start,
)
from opensora_core.data.dataset import MissingCacheError, VideoTextDataset, collate
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import write_image, write_video
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.text_encoder import WordEmbeddingTextEncoder


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clip(tmp_path, name, color, direction, frames=20):
    path = tmp_path / name
    write_video(path, moving_square_clip(frames, 64, 64, color=color, direction=direction), fps=8)
    return {"path": str(path), "text": f"a {color} square moving {direction}", "num_frames": frames,
            "height": 64, "width": 64, "fps": 8.0, "sha256": _sha(path)}


@pytest.fixture
def table(tmp_path) -> pd.DataFrame:
    image = tmp_path / "still.png"
    write_image(image, moving_square_clip(1, 64, 64, color="green")[0])
    rows = [_clip(tmp_path, "a.mp4", "red", "left"), _clip(tmp_path, "b.mp4", "blue", "up"),
            {"path": str(image), "text": "a green square", "num_frames": 1, "height": 64, "width": 64,
             "fps": 0.0, "sha256": _sha(image)}]
    return pd.DataFrame(rows)


@pytest.fixture
def assigner() -> BucketAssigner:
    return BucketAssigner(load_stage("tiny/stage1"))


class FrozenEncoder:
    """Stands in for T5: frozen outputs, cached unpadded."""

    model_max_length, output_dim = 12, 6

    def identity(self) -> str:
        return "frozen-test-v1"

    def encode(self, prompts):
        lengths = torch.tensor([min(len(p.split()), 12) for p in prompts])
        mask = (torch.arange(12)[None] < lengths[:, None]).long()
        y = torch.randn(len(prompts), 1, 12, 6, generator=torch.Generator().manual_seed(len(prompts[0])))
        return {"y": y, "mask": mask}


def test_text_cache_is_unpadded_incremental_and_keyed_by_encoder(tmp_path, table):
    encoder = WordEmbeddingTextEncoder(output_dim=16, model_max_length=32)
    cache = ShardedTensorCache(tmp_path / "text")
    report = build_text_cache(table["text"], encoder, cache, progress=False)
    assert (report.added, report.reused) == (3, 0)
    ids, mask = load_caption(cache, "a red square moving left", encoder)
    expected_ids, expected_mask = encoder.tokenize(["a red square moving left"])
    assert torch.equal(ids, expected_ids[0]) and torch.equal(mask, expected_mask[0])
    assert cache.get(text_key("a red square moving left", encoder)).shape == (int(expected_mask.sum()),)

    again = ShardedTensorCache(tmp_path / "text")  # reopened from disk
    assert build_text_cache([*table["text"], "a new caption"], encoder, again, progress=False).added == 1
    other = WordEmbeddingTextEncoder(output_dim=16, model_max_length=16)
    assert build_text_cache(table["text"], other, again, progress=False).added == 3
    assert len(ShardedTensorCache(tmp_path / "text")) == 7

    frozen = FrozenEncoder()
    build_text_cache(["one two three"], frozen, again, progress=False)
    stored = again.get(text_key("one two three", frozen))
    assert stored.shape == (3, 6) and stored.dtype == torch.bfloat16
    y, mask = load_caption(again, "one two three", frozen)
    assert y.shape == (1, 12, 6) and mask.tolist() == [1, 1, 1] + [0] * 9
    torch.testing.assert_close(y[0, :3].float(), frozen.encode(["one two three"])["y"][0, 0, :3], atol=1e-2, rtol=1e-2)


def test_video_cache_encodes_each_clip_once_per_bucket_size(tmp_path, table, assigner):
    vae = DCTAutoencoder()
    cache = ShardedTensorCache(tmp_path / "video")
    first = build_video_cache(table, assigner, vae, cache, progress=False)
    planned = sum(len(clip_plan(row, assigner, vae.identity())) for _, row in table.iterrows())
    assert first.added == planned > len(table) and not first.skipped
    assert not list((tmp_path / "video").rglob("*.tmp"))

    span = clip_plan(table.iloc[0], assigner, vae.identity())[0]
    meta = cache.meta(span.key)
    assert (meta["first_frame"], meta["num_frames"]) == (0, 20) and meta["height"] == span.bucket.height
    latents = cache.get(span.key)
    assert latents.shape == (4, 20, span.bucket.height // 8, span.bucket.width // 8)  # every frame of the clip
    assert first.frames == sum(s.count for _, row in table.iterrows() for s in clip_plan(row, assigner, vae.identity()))

    # Re-run: nothing to do. One new video: only its entries.
    assert build_video_cache(table, assigner, vae, ShardedTensorCache(tmp_path / "video"), progress=False).added == 0
    grown = pd.concat([table, pd.DataFrame([_clip(tmp_path, "c.mp4", "yellow", "right")])], ignore_index=True)
    new = build_video_cache(grown, assigner, vae, ShardedTensorCache(tmp_path / "video"), progress=False)
    assert new.added == len(clip_plan(grown.iloc[3], assigner, vae.identity())) and new.reused == planned
    # Another VAE identity misses exactly its own entries.
    flat = DCTAutoencoder(smooth=False)
    assert flat.identity() != vae.identity()
    assert build_video_cache(table, assigner, flat, ShardedTensorCache(tmp_path / "video"), progress=False).added == planned

    keys = [s.key for _, row in grown.iterrows() for s in clip_plan(row, assigner, vae.identity())]
    assert check_cache(ShardedTensorCache(tmp_path / "video"), keys) == ([], [])
    poisoned = ShardedTensorCache(tmp_path / "video")
    poisoned.put_many({"nan-entry": (torch.tensor([float("nan")]), {})})
    assert check_cache(poisoned, [*keys[:1], "nan-entry", "absent"]) == (["absent"], ["nan-entry"])
    assert poisoned.prune(keys) == planned + 1  # the other VAE's entries and the NaN entry
    reopened = ShardedTensorCache(tmp_path / "video")
    assert set(reopened.index["key"]) == set(keys) and "nan-entry" not in reopened
    assert reopened.get(keys[-1]).shape[0] == 4  # shards still referenced survive the prune


def test_dataset_reads_caches_or_decodes(tmp_path, table, assigner):
    vae, encoder = DCTAutoencoder(), WordEmbeddingTextEncoder(output_dim=16, model_max_length=32)
    text_cache, video_cache = ShardedTensorCache(tmp_path / "t"), ShardedTensorCache(tmp_path / "v")
    build_text_cache(table["text"], encoder, text_cache, progress=False)
    build_video_cache(table, assigner, vae, video_cache, progress=False)
    bucket = assigner.candidates(20, 64, 64)[0]

    cached = VideoTextDataset(table, assigner.frame_interval, encoder, vae.identity(), text_cache, video_cache,
                              require_cache=True)
    sample = cached[(0, bucket)]
    assert sample["latents"].shape == (4, bucket.num_frames, bucket.height // 8, bucket.width // 8)
    assert sample["ids"].shape == (32,) and sample["mask"].sum() > 0
    assert sample["fps"] == 8.0 / assigner.frame_interval and sample["height"] == bucket.height

    decoding = VideoTextDataset(table, assigner.frame_interval)
    raw = decoding[(0, bucket)]
    assert raw["video"].shape == (3, bucket.num_frames, bucket.height, bucket.width)
    # Both paths read the same window: the cached latents are that window's encoding.
    start = window_start(table.iloc[0], bucket, assigner.frame_interval, seed=0, epoch=0, index=0)
    window = load_clip_window(table.iloc[0]["path"], start, bucket.num_frames, assigner.frame_interval,
                              bucket.height, bucket.width)
    assert torch.equal(raw["video"], window)
    assert torch.equal(sample["latents"], vae.encode(window[None])[0].to(torch.bfloat16).float())

    image_bucket = assigner.candidates(1, 64, 64)[0]
    assert decoding[(2, image_bucket)]["fps"] == 120.0
    image = cached[(2, image_bucket)]
    assert image["latents"].shape == (4, 1, image_bucket.height // 8, image_bucket.width // 8)
    still = load_clip_window(table.iloc[2]["path"], 0, 1, 1, image_bucket.height, image_bucket.width)
    assert torch.equal(image["latents"], vae.encode(still[None])[0].to(torch.bfloat16).float())
    batch = collate([decoding[(0, bucket)], decoding[(1, bucket)]])
    assert batch["video"].shape[0] == 2 and batch["text"][1] == "a blue square moving up"

    uncached = VideoTextDataset(table, assigner.frame_interval, encoder, vae.identity(),
                                ShardedTensorCache(tmp_path / "empty-t"), ShardedTensorCache(tmp_path / "empty-v"),
                                require_cache=True)
    with pytest.raises(MissingCacheError, match="no latents at"):
        uncached[(1, bucket)]


def test_windows_are_drawn_afresh_each_epoch_from_the_whole_clip(tmp_path, table, assigner):
    vae = DCTAutoencoder()
    video_cache = ShardedTensorCache(tmp_path / "v")
    build_video_cache(table, assigner, vae, video_cache, progress=False)
    bucket = assigner.candidates(20, 64, 64)[0]
    span = bucket.num_frames * assigner.frame_interval
    cached = VideoTextDataset(table, assigner.frame_interval, vae_identity=vae.identity(), video_cache=video_cache,
                              seed=3)
    decoding = VideoTextDataset(table, assigner.frame_interval, seed=3)

    starts = [window_start(table.iloc[0], bucket, assigner.frame_interval, 3, epoch, 0) for epoch in range(200)]
    assert set(starts) == set(range(20 - span + 1))  # every valid start, none past the clip's end
    assert starts == [window_start(table.iloc[0], bucket, assigner.frame_interval, 3, e, 0) for e in range(200)]
    assert starts != [window_start(table.iloc[0], bucket, assigner.frame_interval, 4, e, 0) for e in range(200)]

    path = table.iloc[0]["path"]
    for epoch in range(4):
        cached.set_epoch(epoch)
        decoding.set_epoch(epoch)
        window = load_clip_window(path, starts[epoch], bucket.num_frames, assigner.frame_interval,
                                  bucket.height, bucket.width)
        assert torch.equal(decoding[(0, bucket)]["video"], window)
        # Sliced from the clip's latents = the window encoded on its own (bf16, as stored).
        assert torch.equal(cached[(0, bucket)]["latents"], vae.encode(window[None])[0].to(torch.bfloat16).float())
    assert len({starts[e] for e in range(4)}) > 1


def test_long_clips_cache_a_bounded_span_and_windows_stay_in_it(tmp_path, table, monkeypatch):
    monkeypatch.setattr(caches, "CACHED_SPAN", 18)
    stage2 = BucketAssigner(load_stage("tiny/stage2"))  # frame_interval 2
    vae = DCTAutoencoder()
    video_cache = ShardedTensorCache(tmp_path / "v")
    assert not build_video_cache(table, stage2, vae, video_cache, progress=False).skipped
    row = table.iloc[0]
    bucket = stage2.candidates(20, 64, 64)[0]
    first, count = clip_span(row, bucket, stage2.frame_interval)
    assert (bucket.num_frames, count) == (8, 18) and 0 <= first <= 20 - 18
    key = next(s.key for s in clip_plan(row, stage2, vae.identity()) if s.bucket.height == bucket.height)
    assert video_cache.get(key).shape[1] == 18

    dataset = VideoTextDataset(table, stage2.frame_interval, vae_identity=vae.identity(), video_cache=video_cache)
    starts = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        start = window_start(row, bucket, stage2.frame_interval, 0, epoch, 0)
        starts.add(start)
        if epoch < 3:
            window = load_clip_window(row["path"], start, 8, 2, bucket.height, bucket.width)
            expected = vae.encode(window[None])[0].to(torch.bfloat16).float()
            assert torch.equal(dataset[(0, bucket)]["latents"], expected)
    assert starts == set(range(first, first + count - 8 * 2 + 1))
    monkeypatch.setattr(caches, "CACHED_SPAN", 10)  # below the window: the entry is the window's span
    assert clip_span(row, bucket, stage2.frame_interval)[1] == 16


class _TemporalVAE(nn.Module):
    """Halves the frame count, as a video VAE with temporal compression would."""

    def identity(self) -> str:
        return "temporal-test"

    def encode(self, x):
        return x[:, :, ::2]


def test_video_cache_refuses_a_vae_that_compresses_time(tmp_path, table, assigner):
    with pytest.raises(TypeError, match="encodes frames independently"):
        build_video_cache(table, assigner, _TemporalVAE(), ShardedTensorCache(tmp_path / "v"), progress=False)


def test_cache_commands(tmp_path, table):
    meta = tmp_path / "meta.csv"
    table.to_csv(meta, index=False)
    runner = CliRunner()
    text = runner.invoke(app, ["cache", "text-embeddings", "--meta", str(meta), "--out", str(tmp_path / "t")])
    assert text.exit_code == 0, text.output
    assert "3 encoded" in text.output
    video = runner.invoke(app, ["cache", "video-latents", "--meta", str(meta), "--stage", "tiny/stage1",
                                "--stage", "tiny/stage2", "--out", str(tmp_path / "v")])
    assert video.exit_code == 0, video.output
    assert check_video_latents(table, tmp_path / "v", ["tiny/stage1", "tiny/stage2"]).passed
    assert check_text_embeddings(table, tmp_path / "t").passed
    # the old spelling still works, and finds everything cached
    again = runner.invoke(app, ["cache", "video", "--meta", str(meta), "--stage", "tiny/stage1",
                                "--out", str(tmp_path / "v")])
    assert again.exit_code == 0 and "0 encoded" in again.output, again.output
    bad = runner.invoke(app, ["cache", "video-latents", "--meta", str(meta), "--stage", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown stages config 'nope'" in " ".join(bad.output.split()), bad.output
    from opensora_core.utils.folder_lock import FolderLock

    with FolderLock(tmp_path / "t", "text_embeddings"):  # another writer holds the folder
        busy = runner.invoke(app, ["cache", "text-embeddings", "--meta", str(meta), "--out", str(tmp_path / "t")])
    assert busy.exit_code == 2 and "in use by another run (text_embeddings, pid" in " ".join(busy.output.split())


def test_cache_checks_find_missing_entries(tmp_path, table):
    video_latents(table, tmp_path / "v", ["tiny/stage1"], progress=False)
    assert check_video_latents(table, tmp_path / "v", ["tiny/stage1"]).passed
    wider = check_video_latents(table, tmp_path / "v", ["tiny/stage1", "tiny/stage3"])
    assert not wider.passed and wider.missing and wider.expected > len(wider.missing)
    assert not check_text_embeddings(table, tmp_path / "empty").passed


def test_one_process_writes_a_cache_folder_at_a_time(tmp_path):
    """A write while another process holds the folder stops naming the holder; one
    process's instances share its hold and see each other's entries; a killed writer's
    temporary files go."""
    from opensora_core.utils.folder_lock import FolderLock, FolderLocked

    root = tmp_path / "cache"
    leftover = root / "shards" / ".abc.safetensors.x1y2.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a shard")
    with ShardedTensorCache(root, writer="video_latents") as first:
        assert not leftover.exists()
        other = ShardedTensorCache(root)  # the same process: shares the hold
        first.put_many({"a": (torch.ones(2), {})})
        other.put_many({"b": (torch.zeros(2), {})})  # reads the index again first: "a" is kept
        other.close()
        assert set(ShardedTensorCache(root).index["key"]) == {"a", "b"}
    # Another process's hold (its own open of the lock file, as here) refuses every write.
    with FolderLock(root, "video_latents"):
        with pytest.raises(FolderLocked, match=rf"in use by another run \(video_latents, pid {os.getpid()} "):
            ShardedTensorCache(root, writer="text_embeddings")
        with pytest.raises(FolderLocked):
            ShardedTensorCache(root).put_many({"c": (torch.ones(1), {})})
        assert len(ShardedTensorCache(root)) == 2  # reading needs no lock
    with ShardedTensorCache(root) as cache:
        cache.put_many({"c": (torch.ones(1), {})})  # free once the holder let go
    assert len(ShardedTensorCache(root)) == 3
