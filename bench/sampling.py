"""Benchmark: sampling cost: seconds per denoising step and per generated video, IDDPM
(100 steps) against DPM-Solver++ (20 steps), for a small and a mid-size preset, with the
model in fp32 and in bf16 (`opensora sample --dtype bf16`). Each step runs the model on a
doubled batch (classifier-free guidance). Randomly initialised weights: the cost does
not depend on what the weights are.

`python bench/sampling.py [options]` or `opensora bench sampling [options]` (`--help`).
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from opensora_core.infer.sample import PromptRequest, SampleSettings, VideoGenerator
from opensora_core.models import build_stdit2
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.text_encoder import WordEmbeddingTextEncoder
from opensora_core.utils.host_memory import retain_freed_memory

PLANS = (("iddpm", 100), ("dpm-solver", 20))


def run_sampling_benchmark(
    presets: list[str], num_frames: int = 16, size: int = 64, console: Console | None = None,
    dtypes: tuple[str, ...] = ("fp32", "bf16"),
) -> list[dict]:
    console = console or Console()
    retain_freed_memory()  # as `opensora sample` on CPU
    rows = []
    for preset in presets:
        torch.manual_seed(0)
        base = build_stdit2(preset)
        c = base.config
        text_encoder = WordEmbeddingTextEncoder(output_dim=c.caption_channels, model_max_length=c.model_max_length)
        params = sum(p.numel() for p in base.parameters())
        for dtype in dtypes:
            model = base.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
            generator = VideoGenerator(model, DCTAutoencoder(), text_encoder)
            for sampler, steps in PLANS:
                settings = SampleSettings(num_frames=num_frames, height=size, width=size, steps=steps, sampler=sampler)
                request = [PromptRequest("a red circle moving left")]
                start = time.perf_counter()
                latents = generator.generate_latents(request, settings, torch.Generator().manual_seed(0),
                                                     progress=False)
                denoise_seconds = time.perf_counter() - start
                start = time.perf_counter()
                with torch.no_grad():
                    generator.vae.decode(latents.float())
                decode_seconds = time.perf_counter() - start
                rows.append({"preset": preset, "params": params, "dtype": dtype, "sampler": sampler, "steps": steps,
                             "step_seconds": denoise_seconds / steps,
                             "video_seconds": denoise_seconds + decode_seconds})
                console.print(f"  {preset} {dtype} {sampler} {steps} steps: {denoise_seconds + decode_seconds:.2f} s",
                              highlight=False)
    table = Table(title=f"sampling one {num_frames}x{size}x{size} video, batch 1 (x2 for guidance), "
                        f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for column in ("preset", "parameters", "dtype", "sampler", "steps", "s / step", "s / video", "video vs iddpm-100",
                   "speed-up vs fp32"):
        table.add_column(column, justify="right")
    for row in rows:
        same = [r for r in rows if r["preset"] == row["preset"]]
        baseline = next(r for r in same if r["sampler"] == "iddpm" and r["dtype"] == row["dtype"])
        fp32 = next((r for r in same if r["sampler"] == row["sampler"] and r["dtype"] == "fp32"), None)
        table.add_row(row["preset"], f"{row['params']:,}", row["dtype"], row["sampler"], str(row["steps"]),
                      f"{row['step_seconds']:.3f}", f"{row['video_seconds']:.2f}",
                      f"{row['video_seconds'] / baseline['video_seconds']:.2f}x",
                      f"{fp32['video_seconds'] / row['video_seconds']:.2f}x" if fp32 and row["dtype"] != "fp32" else "")
    console.print(table)
    return rows


if __name__ == "__main__":
    import sys
    from pathlib import Path

    try:
        import bench.cli  # noqa: F401  (installed with the project, or on PYTHONPATH)
    except ImportError:  # sys.path[0] is bench/ itself: add the repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cli import run_script

    run_script("sampling")
