"""Content-addressed caches of caption encodings and video latents.

Open-Sora 1.1 encoded text (T5-XXL) and video (SD VAE) on the fly every step. We encode
each (caption, encoder) and each (clip, VAE, bucket size) once, so training
steps run the diffusion model only.

Layout of a cache folder::

    index.parquet                  key -> shard, tensor name, shape, dtype, meta (JSON)
    shards/<uuid>.safetensors      tensors named by their key

Keys are sha256 digests of everything that determines the tensor (content hash or
caption text, encoder identity, settings), so a re-run after adding one video encodes
only that video, and a changed encoder identity misses exactly its own entries (old
entries stay until `prune`). Shards and the index are written atomically. One process
writes a cache folder at a time: the first write (or opening with `writer=`) takes the
folder's lock (`utils/folder_lock.py`), so a second process's write stops naming the
holder, and sweeps what a killed writer left; readers (training) need no lock.

What is stored:
- text, T5: the encoder output for the real tokens only (no padding), bf16;
- text, a jointly trained word-embedding encoder: the token ids (int32), since its
  embedding changes while training;
- video: latents `[C, n, h, w]` in bf16 of every source frame (stride 1) of the clip's
  span at each bucket size (height x width) the stage's bucket_config can assign it.
  The VAE encodes frames independently (no temporal compression), so any window at
  any frame_interval is a slice of the entry, exactly what encoding the window gives:
  each epoch draws its window afresh, as Open-Sora does, from one entry per clip and
  size. The span is the whole clip up to `CACHED_SPAN` frames; a longer clip keeps a
  fixed stretch of that length (offset from the clip hash), and training draws windows
  from the same stretch whether it reads the cache or decodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from opensora_core.data.buckets import Bucket, BucketAssigner
from opensora_core.data.video_io import frames_to_tensor, iter_frames, read_frames
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.sd_autoencoder import SDKLAutoencoder
from opensora_core.utils.atomic import atomic_path, sweep_leftovers
from opensora_core.utils.folder_lock import FolderLock

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


# This process's hold on each cache folder it writes: (lock, instances sharing it).
# Instances in one process share it, as a second flock on the file would refuse them.
_WRITERS: dict[Path, list] = {}


class ShardedTensorCache:
    """Tensors by key in sharded safetensors files with a parquet index.

    `writer` (what writes, named to a second writer) claims the folder now, before any
    work; otherwise the first `put_many` / `prune` does. `close()` (or the `with` block)
    lets it go."""

    def __init__(self, root: str | Path, writer: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / SHARDS).mkdir(exist_ok=True)
        self._claimed = False
        self._load_index()
        if writer is not None:
            self._claim(writer)

    def _load_index(self) -> None:
        index = self.root / INDEX
        self._index_stamp = _stamp(index)
        self.index = pd.read_parquet(index) if index.is_file() else pd.DataFrame(columns=list(INDEX_COLUMNS))
        self._rows = {key: i for i, key in enumerate(self.index["key"])}

    def _claim(self, purpose: str = "writing a tensor cache") -> None:
        """Hold the folder's lock; on taking it, sweep a killed writer's temporary files
        and read the index again (another instance or process may have written since)."""
        if not self._claimed:
            key = self.root.resolve()
            if key not in _WRITERS:
                lock = FolderLock(self.root, purpose).acquire()  # FolderLocked names the other writer
                sweep_leftovers(self.root, [INDEX])
                sweep_leftovers(self.root / SHARDS)
                _WRITERS[key] = [lock, 0]
            _WRITERS[key][1] += 1
            self._claimed = True
        if _stamp(self.root / INDEX) != self._index_stamp:
            self._load_index()

    def close(self) -> None:
        if not self._claimed:
            return
        self._claimed = False
        key = self.root.resolve()
        held = _WRITERS.get(key)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                held[0].release()
                del _WRITERS[key]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the kernel drops the lock anyway
            self.close()

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

    def get_frames(self, key: str, start: int, stop: int) -> torch.Tensor:
        """`tensor[:, start:stop]`, reading only those bytes of the shard."""
        row = self.index.iloc[self._rows[key]]
        with safe_open(str(self.root / SHARDS / row["shard"]), framework="pt") as shard:
            return shard.get_slice(key)[:, start:stop]

    def frame_count(self, key: str) -> int:
        return json.loads(self.index.iloc[self._rows[key]]["shape"])[1]

    def put_many(self, items: dict[str, tuple[torch.Tensor, dict]]) -> None:
        """Write one new shard holding `items`, then publish the updated index."""
        self._claim()
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
        self._claim()
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
        self._index_stamp = _stamp(self.root / INDEX)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Identifies one version of a file: a rename-published index gets a new inode."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


@dataclass
class CacheReport:
    added: int
    reused: int
    skipped: list[tuple[str, str]]  # (what, why) for rows that could not be encoded
    frames: int = 0  # latent frames written (video)


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

# Source frames one entry holds at most, about a typical curated clip, so an entry's size
# stays bounded however long the clip; a window that needs more frames gets exactly its
# own span.
CACHED_SPAN = 256
# Frames decoded and encoded at a time while building, so pixels of a long span
# (float, at source size before resizing) are never all held at once.
ENCODE_CHUNK = 16
# Pending entries are written once they hold this many bytes (or `flush_every` entries).
FLUSH_BYTES = 256 * 2**20
# Encoders known to map each frame on its own (Open-Sora 1.1's SD VAE and our DCT
# codec): only for these is a window sliced from the clip's latents exact.
PER_FRAME_VAES = (DCTAutoencoder, SDKLAutoencoder)


@dataclass(frozen=True)
class ClipSpan:
    """One cache entry: the clip's source frames [first, first + count) at one size."""

    key: str
    bucket: Bucket  # the first bucket this entry serves; others of the same size share it
    first: int
    count: int


def clip_hash(row: pd.Series) -> str:
    return str(row.get("sha256") or digest("path", row["path"]))


def clip_span(row: pd.Series, bucket: Bucket, frame_interval: int) -> tuple[int, int]:
    """(first, count): the source frames windows of this row in this bucket come from."""
    total = int(row["num_frames"])
    count = min(total, max(CACHED_SPAN, bucket.num_frames * frame_interval))
    room = total - count
    return int(clip_hash(row)[:8], 16) % (room + 1), count


def window_start(row: pd.Series, bucket: Bucket, frame_interval: int, seed: int, epoch: int, index: int) -> int:
    """The first source frame of this epoch's window: uniform over the clip's span,
    drawn from (seed, epoch, row, bucket size) so a resumed run draws the same."""
    first, count = clip_span(row, bucket, frame_interval)
    room = max(count - bucket.num_frames * frame_interval, 0)
    rng = np.random.default_rng([seed, epoch, index, bucket.num_frames, bucket.height, bucket.width])
    return first + int(rng.integers(0, room + 1))


def video_key(clip: str, vae_identity: str, height: int, width: int, first: int, count: int) -> str:
    # "clip-frames" names the layout: keys of the old one-window entries never match.
    return digest("video", "clip-frames", clip, vae_identity, height, width, first, count)


def row_video_key(row: pd.Series, bucket: Bucket, frame_interval: int, vae_identity: str) -> str:
    first, count = clip_span(row, bucket, frame_interval)
    return video_key(clip_hash(row), vae_identity, bucket.height, bucket.width, first, count)


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


def load_cached_window(cache: ShardedTensorCache, key: str, offset: int, num_frames: int,
                       frame_interval: int) -> torch.Tensor:
    """Latents `[C, num_frames, h, w]` of the window starting `offset` frames into the entry."""
    stop = offset + (num_frames - 1) * frame_interval + 1
    latents = cache.get_frames(key, offset, stop)
    if latents.shape[1] != stop - offset:
        raise ValueError(f"video cache entry {key[:12]} holds {cache.frame_count(key)} frames, "
                         f"window needs frames {offset}..{stop - 1}")
    return latents[:, ::frame_interval]


def clip_plan(row: pd.Series, assigner: BucketAssigner, vae_identity: str) -> list[ClipSpan]:
    """The cache entries this row needs: one per bucket size it can be assigned."""
    plan: dict[str, ClipSpan] = {}
    for bucket in assigner.candidates(int(row["num_frames"]), int(row["height"]), int(row["width"])):
        first, count = clip_span(row, bucket, assigner.frame_interval)
        key = video_key(clip_hash(row), vae_identity, bucket.height, bucket.width, first, count)
        plan.setdefault(key, ClipSpan(key, bucket, first, count))
    return list(plan.values())


def encode_span(path: str | Path, span: ClipSpan, vae, device: str | torch.device = "cpu") -> torch.Tensor:
    """bf16 latents `[C, count, h, w]` of the span's frames, encoded `ENCODE_CHUNK` at a time."""
    bucket = span.bucket
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        chunks = [load_clip_window(path, 0, 1, 1, bucket.height, bucket.width)]
    else:
        frames = islice(iter_frames(path, start=span.first), span.count)
        parts = iter(lambda: list(islice(frames, ENCODE_CHUNK)), [])
        chunks = (frames_to_tensor(np.stack(part), bucket.height, bucket.width) for part in parts)
    latents = []
    for video in chunks:
        with torch.no_grad():
            encoded = vae.encode(video[None].to(device))[0]
        if encoded.shape[1] != video.shape[1]:
            raise ValueError(f"{type(vae).__name__} maps {video.shape[1]} frames to {encoded.shape[1]} latent "
                             "frames: the clip cache needs one latent frame per frame")
        latents.append(encoded.to(torch.bfloat16).cpu())
    out = torch.cat(latents, dim=1)
    if out.shape[1] < span.count:
        raise ValueError(f"{path}: {out.shape[1]} decodable frames from {span.first}, the table promises {span.count}")
    return out


def build_video_cache(
    table: pd.DataFrame, assigner: BucketAssigner, vae, cache: ShardedTensorCache, progress: bool = True,
    flush_every: int = 32, device: str | torch.device = "cpu",
) -> CacheReport:
    if not isinstance(vae, PER_FRAME_VAES):
        raise TypeError(f"the video cache slices windows out of a clip's latents, which is exact only for a VAE "
                         f"that encodes frames independently ({', '.join(c.__name__ for c in PER_FRAME_VAES)}); "
                         f"got {type(vae).__name__}: train without the video cache (decoding on the fly)")
    identity = vae.identity()
    pending: dict[str, tuple[torch.Tensor, dict]] = {}
    added = reused = frames = pending_bytes = 0
    skipped: list[tuple[str, str]] = []
    for _, row in tqdm(table.iterrows(), total=len(table), desc="video cache", disable=not progress):
        for span in clip_plan(row, assigner, identity):
            if span.key in cache or span.key in pending:
                reused += 1
                continue
            bucket = span.bucket
            try:
                latents = encode_span(row["path"], span, vae, device)
            except (OSError, ValueError, RuntimeError) as err:
                skipped.append((f"{row['path']} @ {bucket.height}x{bucket.width}", str(err)))
                continue
            pending[span.key] = (latents, {
                "path": str(row["path"]), "resolution": bucket.resolution, "height": bucket.height,
                "width": bucket.width, "first_frame": span.first, "num_frames": span.count, "vae": identity,
            })
            added += 1
            frames += span.count
            pending_bytes += latents.nbytes
        if len(pending) >= flush_every or pending_bytes >= FLUSH_BYTES:
            cache.put_many(pending)
            pending, pending_bytes = {}, 0
    cache.put_many(pending)
    return CacheReport(added=added, reused=reused, skipped=skipped, frames=frames)


def check_cache(cache: ShardedTensorCache, keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing keys, keys whose tensors hold NaN or Inf)."""
    missing, bad = [], []
    for key in keys:
        if key not in cache:
            missing.append(key)
        elif not torch.isfinite(cache.get(key).float()).all():
            bad.append(key)
    return missing, bad
