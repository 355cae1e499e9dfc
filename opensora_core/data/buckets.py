"""Buckets: Open-Sora 1.1's mixed resolution / length / aspect-ratio batching.

`bucket_config = {resolution: {num_frames: (keep_prob, batch_size)}}`. A clip of T
frames and H x W pixels is assigned by trying resolutions from the largest pixel area
to the smallest:

1. skip a resolution whose area exceeds the clip's H*W / 0.8 (no upscaling past 25%);
2. images (T = 1) take the `1` frame bucket if the resolution has one; videos take the
   largest frame count t != 1 with T > t * frame_interval (none: next resolution);
3. keep the clip there with probability keep_prob, else fall to the next resolution;
4. the aspect slot is the resolution's table entry nearest the clip's H/W.

Every epoch draws again with its own seed (seed, epoch, row), so assignment is
reproducible. Batches are formed within one (resolution, frames, aspect) bucket.

The aspect tables are data: for each resolution, the published ratio keys (17 for the
"Np" resolutions, PixArt's 40 for 256/512/1024) with sides from one rule, height =
sqrt(area * r) and width = sqrt(area / r), each rounded to a multiple of 16 (the VAE's
8x downsampling times the 2x2 patch), so every bucket is a size the model can take.
Extra resolutions from a stage config get tables by the same rule. Sides differ by a
few pixels from Open-Sora's own tables, which are not all multiples of 8.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from opensora_core.config import StageConfig

SIZE_MULTIPLE = 16
AREA_RULE = 0.8
# Height / width keys of the published aspect tables.
NP_RATIOS = (0.38, 0.43, 0.48, 0.50, 0.53, 0.54, 0.56, 0.62, 0.67, 0.75, 1.00, 1.33, 1.50, 1.78, 1.89, 2.00, 2.08)
PIXART_RATIOS = (
    0.25, 0.26, 0.27, 0.28, 0.32, 0.33, 0.35, 0.40, 0.42, 0.48, 0.50, 0.52, 0.57, 0.60, 0.68, 0.72, 0.78, 0.82,
    0.88, 0.94, 1.00, 1.07, 1.13, 1.21, 1.29, 1.38, 1.46, 1.67, 1.75, 2.00, 2.09, 2.40, 2.50, 2.89, 3.00, 3.11,
    3.62, 3.75, 3.88, 4.00,
)
PIXART_RESOLUTIONS = {"256", "512", "1024"}


def aspect_table(area: int, ratios: Sequence[float], multiple: int = SIZE_MULTIPLE) -> dict[float, tuple[int, int]]:
    """{height/width key: (height, width)} with about `area` pixels per frame."""

    def side(value: float) -> int:
        return max(multiple, round(value / multiple) * multiple)

    return {r: (side(math.sqrt(area * r)), side(math.sqrt(area / r))) for r in ratios}


@dataclass(frozen=True)
class Bucket:
    resolution: str
    num_frames: int
    aspect_ratio: float
    height: int
    width: int
    batch_size: int

    @property
    def key(self) -> tuple[str, int, float]:
        return (self.resolution, self.num_frames, self.aspect_ratio)

    def tokens(self, patch: int = 2, downsample: int = 8) -> int:
        """Latent tokens per sample for STDiT-2 (VAE 8x, 2x2 patches, no temporal patching)."""
        return self.num_frames * (self.height // downsample // patch) * (self.width // downsample // patch)


@dataclass(frozen=True)
class Dropped:
    reason: str


class BucketAssigner:
    def __init__(self, stage: StageConfig, multiple: int = SIZE_MULTIPLE):
        areas = stage.resolution_areas()
        self.frame_interval = stage.frame_interval
        self.config = stage.bucket_tuples()
        self.resolutions = sorted(self.config, key=lambda name: areas[name], reverse=True)
        self.areas = {name: areas[name] for name in self.resolutions}
        self.tables = {
            name: aspect_table(areas[name], PIXART_RATIOS if name in PIXART_RESOLUTIONS else NP_RATIOS, multiple)
            for name in self.resolutions
        }

    def assign(self, num_frames: int, height: int, width: int, rng: np.random.Generator) -> Bucket | Dropped:
        if num_frames < 1 or height < 1 or width < 1:
            return Dropped(f"invalid size {num_frames}x{height}x{width}")
        fits_somewhere = long_enough_somewhere = False
        for name in self.resolutions:
            if height * width < AREA_RULE * self.areas[name]:
                continue
            fits_somewhere = True
            frames = self.frame_bucket(name, num_frames)
            if frames is None:
                continue
            long_enough_somewhere = True
            keep_prob = self.config[name][frames][0]
            if keep_prob >= 1 or (keep_prob > 0 and rng.random() < keep_prob):
                return self.bucket_at(name, frames, height, width)
        if not fits_somewhere:
            smallest = self.resolutions[-1]
            return Dropped(f"{height}x{width} is below {AREA_RULE:g} x the smallest resolution ({smallest})")
        if not long_enough_somewhere:
            return Dropped(f"{num_frames} frames fit no frame bucket (T > t x {self.frame_interval})")
        return Dropped("not kept: every eligible bucket's keep_prob draw failed")

    def frame_bucket(self, resolution: str, num_frames: int) -> int | None:
        """The frame bucket a clip of `num_frames` takes at `resolution`, if any."""
        options = self.config[resolution]
        if num_frames == 1:
            return 1 if 1 in options else None
        eligible = [t for t in options if t != 1 and num_frames > t * self.frame_interval]
        return max(eligible) if eligible else None

    def bucket_at(self, resolution: str, frames: int, height: int, width: int) -> Bucket:
        """The bucket at (resolution, frames) with the aspect slot nearest height/width."""
        ratio = min(self.tables[resolution], key=lambda key: abs(key - height / width))
        target_h, target_w = self.tables[resolution][ratio]
        return Bucket(resolution, frames, ratio, target_h, target_w, self.config[resolution][frames][1])

    def candidates(self, num_frames: int, height: int, width: int) -> list[Bucket]:
        """Every bucket some epoch's draw can put this clip in (largest first)."""
        buckets = []
        for name in self.resolutions:
            frames = self.frame_bucket(name, num_frames)
            if height * width < AREA_RULE * self.areas[name] or frames is None:
                continue
            keep_prob = self.config[name][frames][0]
            if keep_prob > 0:
                buckets.append(self.bucket_at(name, frames, height, width))
            if keep_prob >= 1:
                break  # always kept here: the draw never reaches smaller resolutions
        return buckets

    def assign_all(
        self, rows: Sequence[tuple[int, int, int]], seed: int, epoch: int = 0
    ) -> list[Bucket | Dropped]:
        """Assign `(num_frames, height, width)` rows; row i draws from rng(seed, epoch, i)."""
        return [self.assign(t, h, w, np.random.default_rng([seed, epoch, i])) for i, (t, h, w) in enumerate(rows)]


def stage_streams(seed: int, stage: int) -> int:
    """The seed of a stage's random streams (data order, temporal windows, each step's
    timesteps, masks, caption drops and noise): `seed` mixed with the stage number. The
    draws are keyed by step, so stages sharing a seed and a bucket config (as a recipe's
    stages do) would otherwise replay one another's batches, noise and all, step for step."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])


def bucket_batches(assignments: Sequence[Bucket | Dropped], seed: int, epoch: int,
                   world_size: int = 1) -> list[list[int]]:
    """All full global batches of one epoch: indices grouped by bucket, shuffled within
    each bucket, cut to the bucket's batch size times `world_size` (the batch size is per
    process, as in Open-Sora's configs; an incomplete tail batch waits for the next
    epoch's draw), then the batches shuffled together. The result depends on the global
    batch sizes only, not on how many processes share them."""
    rng = np.random.default_rng([seed, epoch, 1 << 20])
    groups: dict[tuple, list[int]] = defaultdict(list)
    sizes: dict[tuple, int] = {}
    for index, bucket in enumerate(assignments):
        if isinstance(bucket, Bucket):
            groups[bucket.key].append(index)
            sizes[bucket.key] = bucket.batch_size * world_size
    batches = []
    for key in sorted(groups, key=str):
        members = [groups[key][i] for i in rng.permutation(len(groups[key]))]
        size = sizes[key]
        batches += [members[i : i + size] for i in range(0, len(members) - size + 1, size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class BucketBatchSampler:
    """Distributed batch sampler over buckets with exact resume.

    Each epoch re-assigns every row (seed, epoch) and forms global batches of the
    bucket's batch size times the world size (`bucket_batches`); each step every rank
    takes its slice of the same global batch: rank r the samples [r * B, (r + 1) * B).
    So W processes with batch B see exactly the samples, in the same order, that one
    process with batch W * B sees, and `state_dict()` (seed, epoch, global batches
    already yielded) is the same on every rank: a checkpoint resumes at the exact next
    batch on any number of processes with the same global batch.
    """

    def __init__(
        self,
        assigner: BucketAssigner,
        rows: Sequence[tuple[int, int, int]],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.assigner = assigner
        self.rows = list(rows)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[Bucket | Dropped], list[list[int]]] | None = None

    def _epoch_plan(self) -> tuple[list[Bucket | Dropped], list[list[int]]]:
        if self._cache is None or self._cache[0] != self.epoch:
            assignments = self.assigner.assign_all(self.rows, self.seed, self.epoch)
            batches = bucket_batches(assignments, self.seed, self.epoch, self.world_size)
            mine = []
            for batch in batches:
                size = len(batch) // self.world_size
                mine.append(batch[self.rank * size : (self.rank + 1) * size])
            self._cache = (self.epoch, assignments, mine)
        return self._cache[1], self._cache[2]

    def assignments(self) -> list[Bucket | Dropped]:
        return self._epoch_plan()[0]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return len(self._epoch_plan()[1])

    def __iter__(self) -> Iterator[list[tuple[int, Bucket]]]:
        """Yields batches of (row index, bucket); the epoch advances when one is exhausted."""
        assignments, batches = self._epoch_plan()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield [(index, assignments[index]) for index in batch]
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']}, this sampler has seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


@dataclass
class BucketSummary:
    rows: list[tuple[str, int, int, int, int]]  # resolution, frames, samples, batches, tokens
    dropped: Counter


def summarize(assignments: Sequence[Bucket | Dropped], batches: list[list[int]]) -> BucketSummary:
    samples: Counter = Counter()
    tokens: Counter = Counter()
    batch_counts: Counter = Counter()
    dropped: Counter = Counter()
    for bucket in assignments:
        if isinstance(bucket, Bucket):
            samples[(bucket.resolution, bucket.num_frames)] += 1
            tokens[(bucket.resolution, bucket.num_frames)] += bucket.tokens()
        else:
            dropped[bucket.reason] += 1
    for batch in batches:
        first = assignments[batch[0]]
        batch_counts[(first.resolution, first.num_frames)] += 1
    rows = [(res, t, samples[(res, t)], batch_counts[(res, t)], tokens[(res, t)]) for res, t in sorted(samples)]
    return BucketSummary(rows, dropped)
