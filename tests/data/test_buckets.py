from __future__ import annotations

import numpy as np
import pytest

from opensora_core.config import load_stage
from opensora_core.data.buckets import (
    NP_RATIOS,
    Bucket,
    BucketAssigner,
    BucketBatchSampler,
    Dropped,
    aspect_table,
    bucket_batches,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_aspect_tables_keep_area_and_ratio_in_multiples_of_16():
    table = aspect_table(102240, NP_RATIOS)
    assert table[0.56] == (240, 432) and table[1.0] == (320, 320) and table[1.78] == (432, 240)
    for ratio, (h, w) in table.items():
        assert h % 16 == 0 and w % 16 == 0
        assert abs(h * w / 102240 - 1) < 0.12 and abs(h / w - ratio) / ratio < 0.15


def test_published_stage1_assignment_rules():
    assigner = BucketAssigner(load_stage("stage1"))
    # A long 720p clip: 1024 and 512 have no video buckets, 240p 64 has keep_prob 0,
    # 256's largest fitting bucket (64) has keep_prob 0 too, so 144p takes it at 96 frames.
    bucket = assigner.assign(400, 720, 1280, _rng())
    assert isinstance(bucket, Bucket) and (bucket.resolution, bucket.num_frames) == ("144p", 96)
    assert (bucket.height, bucket.width) == (144, 256) and bucket.aspect_ratio == 0.56 and bucket.batch_size == 1
    # 50 frames at 240p-size: 240p 16 needs T > 48 and has keep_prob 0.3: some rows land there.
    landed = {assigner.assign(50, 240, 426, _rng(s)).resolution for s in range(40)}
    assert {"240p", "144p"} <= landed
    # Images go to t=1, largest resolution first: 1024 (0.3) then 512 (0.4) then 256 (0.5), 144p (0.5).
    image = assigner.assign(1, 1080, 1080, _rng(1))
    assert image.num_frames == 1 and image.resolution in {"1024", "512", "256", "144p"}
    # Portrait clips get the nearest portrait slot.
    tall = next(b for s in range(20) if isinstance(b := assigner.assign(200, 1280, 720, _rng(s)), Bucket))
    assert tall.height > tall.width and tall.aspect_ratio == 1.78


def test_drop_reasons_are_named():
    assigner = BucketAssigner(load_stage("stage1"))
    assert "below 0.8 x the smallest resolution" in assigner.assign(40, 64, 64, _rng()).reason
    assert "fit no frame bucket" in assigner.assign(40, 720, 1280, _rng()).reason  # 40 frames: 16*3=48
    # 0.8 area rule: 144p (36864 px) accepts down to 29491 px.
    assert isinstance(assigner.assign(100, 128, 232, _rng()), Bucket)  # 29696 px
    assert isinstance(assigner.assign(100, 128, 224, _rng()), Dropped)  # 28672 px


def test_tiny_stages_bucket_with_extra_resolutions():
    assigner = BucketAssigner(load_stage("tiny/stage1"))
    bucket = assigner.assign(16, 64, 64, _rng())
    assert isinstance(bucket, Bucket) and bucket.resolution in {"64px", "32px"}
    assert bucket.height % 16 == 0 and bucket.width % 16 == 0


def test_assignment_is_seeded_per_epoch():
    assigner = BucketAssigner(load_stage("stage2"))
    rows = [(60 + i, 480, 854) for i in range(50)]
    assert assigner.assign_all(rows, seed=3, epoch=0) == assigner.assign_all(rows, seed=3, epoch=0)
    assert assigner.assign_all(rows, seed=3, epoch=0) != assigner.assign_all(rows, seed=3, epoch=1)


def _rows(count=200):
    rng = np.random.default_rng(0)
    return [(int(rng.integers(1, 80)), int(rng.choice([240, 360, 480])), int(rng.choice([320, 426, 640])))
            for _ in range(count)]


def test_batches_stay_within_one_bucket_and_respect_batch_size():
    assigner = BucketAssigner(load_stage("stage2"))
    assignments = assigner.assign_all(_rows(), seed=0)
    batches = bucket_batches(assignments, seed=0, epoch=0)
    assert batches
    for batch in batches:
        keys = {assignments[i].key for i in batch}
        assert len(keys) == 1 and len(batch) == assignments[batch[0]].batch_size
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))


def test_sampler_splits_ranks_and_resumes_at_the_exact_next_batch():
    assigner = BucketAssigner(load_stage("stage2"))
    rows = _rows(3000)
    full = list(BucketBatchSampler(assigner, rows, seed=5, rank=1, world_size=2))
    other = list(BucketBatchSampler(assigner, rows, seed=5, rank=0, world_size=2))
    assert len(full) == len(other) > 3
    assert not {i for b in full for i, _ in b} & {i for b in other for i, _ in b}

    first = BucketBatchSampler(assigner, rows, seed=5, rank=1, world_size=2)
    iterator = iter(first)
    head = [next(iterator) for _ in range(3)]
    state = first.state_dict()
    resumed = BucketBatchSampler(assigner, rows, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    assert resumed.epoch == 1 and resumed.position == 0
    with pytest.raises(ValueError, match="seed"):
        BucketBatchSampler(assigner, rows, seed=6).load_state_dict(state)
