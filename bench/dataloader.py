"""Benchmark: the training data path: samples/s from the caches against decoding and
encoding on the fly, and bytes per cached caption against Open-Sora's padded layout.

`python bench/dataloader.py [options]` or `opensora bench dataloader [options]` (`--help`).
Targets (issue: caches): >= 3x samples/s from caches; <= 0.5x bytes per caption against
Open-Sora's padded 200-token fp16 layout.

The on-the-fly path does what Open-Sora 1.1 does every step: decode the window,
resize, encode it with the VAE and the caption with the text encoder. The cached path
reads latents and token ids / embeddings. Both go through the same bucket sampler,
dataset and collate, side by side in one run, on synthetic clips written to a temporary
folder. The SD VAE has its published architecture with random weights (the cost does
not depend on the weights).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from opensora_core.config import load_stage
from opensora_core.data.buckets import BucketAssigner, BucketBatchSampler
from opensora_core.data.caches import (
    ShardedTensorCache,
    build_text_cache,
    build_video_cache,
    stores_token_ids,
)
from opensora_core.data.dataset import VideoTextDataset, collate
from opensora_core.data.synthetic import COLORS, DIRECTIONS, moving_square_clip
from opensora_core.data.video_io import write_video
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.sd_autoencoder import SDKLAutoencoder
from opensora_core.models.text_encoder import WordEmbeddingTextEncoder

T5_WIDTH, T5_TOKENS = 4096, 200


class _FrozenT5Shape:
    """Outputs shaped like T5-XXL's (4096 wide, one token per word plus </s>), for sizes only."""

    model_max_length, output_dim = T5_TOKENS, T5_WIDTH

    def identity(self) -> str:
        return "t5-shaped-random"

    def encode(self, prompts):
        lengths = torch.tensor([min(len(p.split()) + 1, T5_TOKENS) for p in prompts])
        mask = (torch.arange(T5_TOKENS)[None] < lengths[:, None]).long()
        return {"y": torch.randn(len(prompts), 1, T5_TOKENS, T5_WIDTH), "mask": mask}


def _corpus(folder: Path, count: int, frames: int, size: int) -> pd.DataFrame:
    rows = []
    colors, directions = list(COLORS), list(DIRECTIONS)
    for i in range(count):
        color, direction = colors[i % len(colors)], directions[i % len(directions)]
        path = folder / f"clip{i:03d}.mp4"
        write_video(path, moving_square_clip(frames, size, size, color=color, direction=direction, seed=i), fps=24)
        rows.append({"path": str(path), "text": f"a {color} square moving {direction}", "num_frames": frames,
                     "height": size, "width": size, "fps": 24.0,
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return pd.DataFrame(rows)


def _samples_per_second(dataset, sampler, vae, text_encoder, encode: bool, max_batches: int) -> float:
    sampler.set_epoch(0)
    seen, start = 0, time.perf_counter()
    with torch.no_grad():
        for batch_index, items in enumerate(sampler):
            batch = collate([dataset[item] for item in items])
            if encode:
                vae.encode(batch["video"])
                text_encoder.encode(batch["text"])
            elif "ids" in batch:
                text_encoder.embed(batch["ids"])
            seen += len(items)
            if batch_index + 1 >= max_batches:
                break
    return seen / (time.perf_counter() - start)


def run_dataloader_benchmark(clips: int = 24, frames: int = 24, size: int = 64, max_batches: int = 12,
                             console: Console | None = None) -> list[dict]:
    console = console or Console()
    torch.manual_seed(0)
    stage = load_stage("tiny/stage2")
    assigner = BucketAssigner(stage)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = _corpus(folder, clips, frames, size)
        rows = list(zip(table["num_frames"], table["height"], table["width"]))
        text_encoder = WordEmbeddingTextEncoder(output_dim=64, model_max_length=32)
        for name, vae in (("DCT (embedded)", DCTAutoencoder()), ("SD KL VAE (random weights)", SDKLAutoencoder.from_config())):
            text_cache = ShardedTensorCache(folder / f"text-{len(results)}")
            video_cache = ShardedTensorCache(folder / f"video-{len(results)}")
            start = time.perf_counter()
            build_text_cache(table["text"], text_encoder, text_cache, progress=False)
            build_video_cache(table, assigner, vae, video_cache, progress=False)
            build_seconds = time.perf_counter() - start
            sampler = BucketBatchSampler(assigner, rows, seed=0)
            on_the_fly = VideoTextDataset(table, stage.frame_interval)
            cached = VideoTextDataset(table, stage.frame_interval, text_encoder, vae.identity(), text_cache,
                                      video_cache, require_cache=True)
            fly = _samples_per_second(on_the_fly, sampler, vae, text_encoder, True, max_batches)
            hit = _samples_per_second(cached, BucketBatchSampler(assigner, rows, seed=0), vae, text_encoder, False,
                                      max_batches)
            results.append({"vae": name, "on_the_fly": fly, "cached": hit, "build_seconds": build_seconds,
                            "video_bytes": video_cache.nbytes() / max(len(video_cache), 1)})
            console.print(f"  {name}: {fly:.1f} vs {hit:.1f} samples/s", highlight=False)

        ids_cache = ShardedTensorCache(folder / "ids")
        build_text_cache(table["text"], text_encoder, ids_cache, progress=False)
        t5_cache = ShardedTensorCache(folder / "t5")
        t5_shape = _FrozenT5Shape()
        build_text_cache(table["text"], t5_shape, t5_cache, progress=False)
        assert stores_token_ids(text_encoder) and not stores_token_ids(t5_shape)
        captions = len(set(table["text"]))
        padded = T5_TOKENS * T5_WIDTH * 2
        t5_bytes, ids_bytes = t5_cache.nbytes() / captions, ids_cache.nbytes() / captions

    table_view = Table(title=f"data path, {clips} clips of {frames}x{size}x{size}, tiny/stage2 buckets, "
                             f"{torch.get_num_threads()} threads")
    for column in ("VAE", "on the fly samples/s", "cached samples/s", "speed-up", "cache build s", "bytes / latent entry"):
        table_view.add_column(column, justify="right")
    for r in results:
        table_view.add_row(r["vae"], f"{r['on_the_fly']:.1f}", f"{r['cached']:.1f}", f"{r['cached'] / r['on_the_fly']:.1f}x",
                           f"{r['build_seconds']:.1f}", f"{r['video_bytes']:,.0f}")
    console.print(table_view)
    bytes_view = Table(title="bytes per cached caption")
    for column in ("layout", "bytes / caption", "vs padded 200x4096 fp16"):
        bytes_view.add_column(column, justify="right")
    for label, size_bytes in (("Open-Sora: padded 200 x 4096, fp16", padded),
                              ("ours, T5-shaped: real tokens only, bf16", t5_bytes),
                              ("ours, word-embedding: token ids, int32", ids_bytes)):
        bytes_view.add_row(label, f"{size_bytes:,.0f}", f"{size_bytes / padded:.4f}x")
    console.print(bytes_view)
    return results


if __name__ == "__main__":
    import sys
    from pathlib import Path

    try:
        import bench.cli  # noqa: F401  (installed with the project, or on PYTHONPATH)
    except ImportError:  # sys.path[0] is bench/ itself: add the repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cli import run_script

    run_script("dataloader")
