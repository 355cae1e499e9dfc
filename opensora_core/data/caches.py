"""Content-addressed caches of caption encodings and video latents.

Open-Sora 1.1 encoded text (T5-XXL) and video (SD VAE) on the fly every step. We encode
each (caption, encoder) and each (clip, VAE, bucket size, frame window) once, so training
steps run the diffusion model only.

Layout of a cache folder::

    index.parquet                  key -> shard, tensor name, shape, dtype, meta (JSON)
    shards/<uuid>.safetensors      tensors named by their key

Keys are sha256 digests of everything that determines the tensor (content hash or
caption text, encoder identity, settings), so a re-run after adding one video encodes
only that video, and a changed encoder identity misses exactly its own entries (old
entries stay until `prune`). Shards and the index are written atomically; one writer
per cache folder at a time.

What is stored:
- text, T5: the encoder output for the real tokens only (no padding), bf16;
- text, a jointly trained word-embedding encoder: the token ids (int32), since its
  embedding changes while training;
- video: latents `[C, t, h, w]` in bf16 for every bucket size the stage's
  bucket_config can assign the clip to (at most one per resolution), so that every
  epoch's fresh draw finds its latents. Each entry records the first frame of its
  temporal window: one fixed window per clip and size (derived from the clip hash),
  which trades Open-Sora's random window per step for a cache that is computed once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from opensora_core.data.buckets import Bucket, BucketAssigner
from opensora_core.data.video_io import frames_to_tensor, read_frames
from opensora_core.utils.atomic import atomic_path

INDEX = "index.parquet"
SHARDS = "shards"
INDEX_COLUMNS = ("key", "shard", "shape", "dtype", "meta")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def digest(*parts: object) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(repr(part).encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


class ShardedTensorCache:
    """Tensors by key in sharded safetensors files with a parquet index."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / SHARDS).mkdir(exist_ok=True)
        index = self.root / INDEX
        self.index = pd.read_parquet(index) if index.is_file() else pd.DataFrame(columns=list(INDEX_COLUMNS))
        self._rows = {key: i for i, key in enumerate(self.index["key"])}

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def meta(self, key: str) -> dict:
        return json.loads(self.index.iloc[self._rows[key]]["meta"])

    def get(self, key: str) -> torch.Tensor:
        row = self.index.iloc[self._rows[key]]
        with safe_open(str(self.root / SHARDS / row["shard"]), framework="pt") as shard:
            return shard.get_tensor(key)

    def put_many(self, items: dict[str, tuple[torch.Tensor, dict]]) -> None:
        """Write one new shard holding `items`, then publish the updated index."""
        items = {k: v for k, v in items.items() if k not in self._rows}
        if not items:
            return
        shard = f"{uuid.uuid4().hex}.safetensors"
        with atomic_path(self.root / SHARDS / shard) as tmp:
            save_file({k: t.detach().contiguous().cpu() for k, (t, _) in items.items()}, str(tmp))
        rows = pd.DataFrame.from_records([
            {"key": k, "shard": shard, "shape": json.dumps(list(t.shape)), "dtype": str(t.dtype).removeprefix("torch."),
             "meta": json.dumps(meta, sort_keys=True)}
            for k, (t, meta) in items.items()
        ])
        self.index = rows if self.index.empty else pd.concat([self.index, rows], ignore_index=True)
        self._rows = {key: i for i, key in enumerate(self.index["key"])}
        self._write_index()

    def prune(self, keep: Iterable[str]) -> int:
        """Drop entries not in `keep` and delete shards nobody references; returns entries dropped."""
        keep = set(keep)
        before = len(self.index)
        self.index = self.index[self.index["key"].isin(keep)].reset_index(drop=True)
        self._rows = {key: i for i, key in enumerate(self.index["key"])}
        self._write_index()
        used = set(self.index["shard"])
        for shard in (self.root / SHARDS).glob("*.safetensors"):
            if shard.name not in used:
                shard.unlink()
        return before - len(self.index)

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / SHARDS).glob("*.safetensors"))

    def _write_index(self) -> None:
        with atomic_path(self.root / INDEX) as tmp:
            self.index.to_parquet(tmp, index=False)


@dataclass
class CacheReport:
    added: int
    reused: int
    skipped: list[tuple[str, str]]  # (what, why) for rows that could not be encoded


# 1. Text


def stores_token_ids(text_encoder) -> bool:
    """Trainable word-embedding encoders are cached as token ids, frozen ones as outputs."""
    return hasattr(text_encoder, "tokenize") and hasattr(text_encoder, "embed")


def text_key(caption: str, text_encoder) -> str:
    return digest("text", caption, text_encoder.identity(), text_encoder.model_max_length)


def build_text_cache(
    captions: Sequence[str], text_encoder, cache: ShardedTensorCache, batch_size: int = 64, progress: bool = True
) -> CacheReport:
    unique = list(dict.fromkeys(str(c) for c in captions))
    todo = [c for c in unique if text_key(c, text_encoder) not in cache]
    by_ids = stores_token_ids(text_encoder)
    for start in tqdm(range(0, len(todo), batch_size), desc="text cache", disable=not progress):
        batch = todo[start : start + batch_size]
        items = {}
        with torch.no_grad():
            if by_ids:
                ids, mask = text_encoder.tokenize(batch)
                values = [ids[i, : int(mask[i].sum())].to(torch.int32) for i in range(len(batch))]
            else:
                encoded = text_encoder.encode(batch)
                y, mask = encoded["y"][:, 0], encoded["mask"]
                values = [y[i, : int(mask[i].sum())].to(torch.bfloat16) for i in range(len(batch))]
        for caption, value in zip(batch, values):
            items[text_key(caption, text_encoder)] = (value, {"tokens": int(value.shape[0])})
        cache.put_many(items)
    return CacheReport(added=len(todo), reused=len(unique) - len(todo), skipped=[])


def load_caption(cache: ShardedTensorCache, caption: str, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """(y `[1, N, C]` or token ids `[N]`, mask `[N]`) padded back to the model length."""
    value = cache.get(text_key(caption, text_encoder))
    length = text_encoder.model_max_length
    mask = torch.zeros(length, dtype=torch.long)
    mask[: value.shape[0]] = 1
    if stores_token_ids(text_encoder):
        ids = torch.zeros(length, dtype=torch.long)
        ids[: value.shape[0]] = value.long()
        return ids, mask
    y = torch.zeros(1, length, value.shape[-1], dtype=value.dtype)
    y[0, : value.shape[0]] = value
    return y, mask


# 2. Video


def window_start(clip_hash: str, total_frames: int, span: int) -> int:
    """A fixed, clip-specific first frame for a window of `span` source frames."""
    room = max(total_frames - span, 0)
    return int(clip_hash[:8], 16) % (room + 1)


def video_key(clip_hash: str, vae_identity: str, bucket: Bucket, frame_interval: int, start: int) -> str:
    return digest("video", clip_hash, vae_identity, bucket.height, bucket.width, bucket.num_frames, frame_interval, start)


def load_clip_window(path: str | Path, start: int, num_frames: int, frame_interval: int, height: int, width: int) -> torch.Tensor:
    """`[3, num_frames, height, width]` in [-1, 1]: an image or a strided video window."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from opensora_core.data.images import read_image_rgb

        frames = read_image_rgb(path)[None]
    else:
        frames = read_frames(path, num_frames, start=start, stride=frame_interval)
    if frames.shape[0] < num_frames:
        raise ValueError(f"{path}: {frames.shape[0]} decodable frames from {start}, need {num_frames}")
    return frames_to_tensor(frames, height, width)


def row_video_key(row: pd.Series, bucket: Bucket, frame_interval: int, vae_identity: str) -> tuple[str, int]:
    """(cache key, window start) of one training-table row in one bucket."""
    clip_hash = str(row.get("sha256") or digest("path", row["path"]))
    start = window_start(clip_hash, int(row["num_frames"]), bucket.num_frames * frame_interval)
    return video_key(clip_hash, vae_identity, bucket, frame_interval, start), start


def clip_plan(row: pd.Series, assigner: BucketAssigner, vae_identity: str) -> list[tuple[str, Bucket, int]]:
    """(cache key, bucket, window start) for every bucket this row can be assigned."""
    plan = []
    for bucket in assigner.candidates(int(row["num_frames"]), int(row["height"]), int(row["width"])):
        key, start = row_video_key(row, bucket, assigner.frame_interval, vae_identity)
        plan.append((key, bucket, start))
    return plan


def build_video_cache(
    table: pd.DataFrame, assigner: BucketAssigner, vae, cache: ShardedTensorCache, progress: bool = True,
    flush_every: int = 32, device: str | torch.device = "cpu",
) -> CacheReport:
    identity = vae.identity()
    pending: dict[str, tuple[torch.Tensor, dict]] = {}
    added = reused = 0
    skipped: list[tuple[str, str]] = []
    for _, row in tqdm(table.iterrows(), total=len(table), desc="video cache", disable=not progress):
        for key, bucket, start in clip_plan(row, assigner, identity):
            if key in cache or key in pending:
                reused += 1
                continue
            try:
                video = load_clip_window(row["path"], start, bucket.num_frames, assigner.frame_interval,
                                         bucket.height, bucket.width)
            except (OSError, ValueError, RuntimeError) as err:
                skipped.append((f"{row['path']} @ {bucket.resolution}/{bucket.num_frames}", str(err)))
                continue
            with torch.no_grad():
                latents = vae.encode(video[None].to(device))[0]
            pending[key] = (latents.to(torch.bfloat16), {
                "path": str(row["path"]), "resolution": bucket.resolution, "num_frames": bucket.num_frames,
                "height": bucket.height, "width": bucket.width, "start_frame": start,
                "frame_interval": assigner.frame_interval, "vae": identity,
            })
            added += 1
        if len(pending) >= flush_every:
            cache.put_many(pending)
            pending = {}
    cache.put_many(pending)
    return CacheReport(added=added, reused=reused, skipped=skipped)


def check_cache(cache: ShardedTensorCache, keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing keys, keys whose tensors hold NaN or Inf)."""
    missing, bad = [], []
    for key in keys:
        if key not in cache:
            missing.append(key)
        elif not torch.isfinite(cache.get(key).float()).all():
            bad.append(key)
    return missing, bad
