"""The training data path: rows of the training table, read in the bucket the batch
sampler chose, from the caches when they hold the sample, else decoded on the fly."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch.utils.data import Dataset

from opensora_core.data.buckets import Bucket
from opensora_core.data.caches import (
    ShardedTensorCache,
    clip_span,
    load_cached_window,
    load_caption,
    load_clip_window,
    row_video_key,
    text_key,
    window_start,
)
from opensora_core.models.stdit2 import IMAGE_FPS


class MissingCacheError(LookupError):
    """Caches were required but do not hold some samples."""


class VideoTextDataset(Dataset):
    """Index with `(row, bucket)` pairs, as `BucketBatchSampler` yields them.

    A sample is a window of `t` frames, `frame_interval` apart, whose start is drawn
    afresh each epoch (`set_epoch`, as the batch sampler's epoch) from (seed, epoch, row,
    bucket): as `latents` `[C, t, h, w]` sliced from the clip's cached latents, or as
    `video` `[3, t, H, W]` in [-1, 1] decoded, resized and center-cropped to the bucket.
    Both read the same window. Also the caption as `text` plus `y`/`ids` and `mask` when
    the text cache holds it, and the micro-conditions `height, width, ar, num_frames,
    fps` (images: fps 120), plus the clip's `source_fps` (images: 120) for models that
    were trained on that instead.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        frame_interval: int,
        text_encoder=None,
        vae_identity: str | None = None,
        text_cache: ShardedTensorCache | None = None,
        video_cache: ShardedTensorCache | None = None,
        require_cache: bool = False,
        seed: int = 0,
    ):
        missing = [c for c in ("path", "text", "num_frames", "height", "width") if c not in table.columns]
        if missing:
            raise ValueError(f"training table lacks column(s) {', '.join(missing)}")
        if text_cache is not None and text_encoder is None:
            raise ValueError("reading the text cache needs the text encoder (its identity is part of the key)")
        if video_cache is not None and vae_identity is None:
            raise ValueError("reading the video cache needs the VAE identity")
        self.table = table.reset_index(drop=True)
        self.frame_interval = frame_interval
        self.text_encoder = text_encoder
        self.vae_identity = vae_identity
        self.text_cache = text_cache
        self.video_cache = video_cache
        self.require_cache = require_cache
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def missing_from_caches(self, items: Sequence[tuple[int, Bucket]]) -> list[str]:
        """What the caches lack for these (row, bucket) pairs, as readable lines."""
        problems = []
        for index, bucket in items:
            row = self.table.iloc[index]
            if self.video_cache is None or row_video_key(row, bucket, self.frame_interval, self.vae_identity) not in self.video_cache:
                problems.append(f"row {index} ({row['path']}): no latents at {bucket.height}x{bucket.width}x{bucket.num_frames}")
            if self.text_cache is None or text_key(str(row["text"]), self.text_encoder) not in self.text_cache:
                problems.append(f"row {index} ({row['path']}): caption not in the text cache")
        return problems

    def __getitem__(self, item: tuple[int, Bucket]) -> dict:
        index, bucket = item
        row = self.table.iloc[index]
        if self.require_cache:
            problems = self.missing_from_caches([item])
            if problems:
                raise MissingCacheError("; ".join(problems))
        sample: dict = {"index": index, "text": str(row["text"])}

        start = window_start(row, bucket, self.frame_interval, self.seed, self.epoch, index)
        video_key = None
        if self.video_cache is not None:
            video_key = row_video_key(row, bucket, self.frame_interval, self.vae_identity)
        if video_key is not None and video_key in self.video_cache:
            offset = start - clip_span(row, bucket, self.frame_interval)[0]
            sample["latents"] = load_cached_window(self.video_cache, video_key, offset, bucket.num_frames,
                                                   self.frame_interval).float()
        else:
            sample["video"] = load_clip_window(row["path"], start, bucket.num_frames, self.frame_interval,
                                               bucket.height, bucket.width)

        if self.text_cache is not None and text_key(sample["text"], self.text_encoder) in self.text_cache:
            value, mask = load_caption(self.text_cache, sample["text"], self.text_encoder)
            sample["ids" if value.ndim == 1 else "y"] = value
            sample["mask"] = mask

        is_image = bucket.num_frames == 1
        source_fps = float(row["fps"]) if "fps" in row and pd.notna(row["fps"]) else 24.0 * self.frame_interval
        sample.update(
            height=float(bucket.height), width=float(bucket.width), ar=bucket.height / bucket.width,
            num_frames=float(bucket.num_frames), fps=float(IMAGE_FPS if is_image else source_fps / self.frame_interval),
            source_fps=float(IMAGE_FPS if is_image else source_fps),
        )
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack a bucket's samples: tensors along a new batch axis, strings as a list."""
    batch: dict = {}
    for key in samples[0]:
        if any(key not in s for s in samples):
            raise ValueError(f"samples of one batch disagree on {key!r} (mixed cached and uncached?)")
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], float | int):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch
