"""Benchmark: sampling cost: seconds per denoising step and per generated video, IDDPM
(100 steps) against DPM-Solver++ (20 steps), for a small and a mid-size preset, with the
model in fp32 and in bf16 (`opensora sample --dtype bf16`), eager or with each block
compiled (`opensora sample --compile`). Each step runs the model on a
doubled batch (classifier-free guidance). Randomly initialised weights: the cost does
not depend on what the weights are.

`python bench/sampling.py [options]` or `opensora bench sampling [options]` (`--help`).
"""

from __future__ import annotations

import copy
import itertools
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
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run_sampling_benchmark(
    presets: list[str], num_frames: int = 16, size: int = 64, console: Console | None = None,
    dtypes: tuple[str, ...] = ("fp32", "bf16"), compile: tuple[bool, ...] = (False,),
) -> list[dict]:
    """One row per preset x dtype x compilation x sampler. A compiled model first samples
    one 2-step video (the compilation, reported as "compile s"; every sampler then runs
    the same shapes), so its rows time compiled steps only."""
    console = console or Console()
    if not console.is_terminal:  # a log or a pipe: every column readable, not squeezed to 80
        console.width = max(console.width, 160)
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        raise ValueError(f"dtypes {list(dtypes)}: expected some of {sorted(DTYPES)}")
    if not compile or any(not isinstance(c, bool) for c in compile):
        raise ValueError(f"compile {list(compile)}: expected some of False, True")
    retain_freed_memory()  # as `opensora sample` on CPU
    rows = []
    request = [PromptRequest("a red circle moving left")]
    for preset in presets:
        torch.manual_seed(0)
        base = build_stdit2(preset)
        c = base.config
        text_encoder = WordEmbeddingTextEncoder(output_dim=c.caption_channels, model_max_length=c.model_max_length)
        params = sum(p.numel() for p in base.parameters())
        for dtype, compiled in itertools.product(dtypes, compile):
            model = copy.deepcopy(base).to(DTYPES[dtype])  # a copy is never compiled: each mode starts eager
            compile_seconds = None
            generator = VideoGenerator(model, DCTAutoencoder(), text_encoder)
            if compiled:
                torch._dynamo.reset()
                model.compile_blocks()
                warmup = SampleSettings(num_frames=num_frames, height=size, width=size, steps=2, sampler="dpm-solver")
                start = time.perf_counter()
                generator.generate_latents(request, warmup, torch.Generator().manual_seed(0), progress=False)
                compile_seconds = time.perf_counter() - start
            for sampler, steps in PLANS:
                settings = SampleSettings(num_frames=num_frames, height=size, width=size, steps=steps, sampler=sampler)
                start = time.perf_counter()
                latents = generator.generate_latents(request, settings, torch.Generator().manual_seed(0),
                                                     progress=False)
                denoise_seconds = time.perf_counter() - start
                start = time.perf_counter()
                with torch.no_grad():
                    generator.vae.decode(latents.float())
                decode_seconds = time.perf_counter() - start
                rows.append({"preset": preset, "params": params, "dtype": dtype, "compiled": compiled,
                             "compile_seconds": compile_seconds, "sampler": sampler, "steps": steps,
                             "step_seconds": denoise_seconds / steps,
                             "video_seconds": denoise_seconds + decode_seconds})
                console.print(f"  {preset} {dtype} {'compiled' if compiled else 'eager'} {sampler} {steps} steps: "
                              f"{denoise_seconds + decode_seconds:.2f} s", highlight=False)
    console.print(_table(rows, num_frames, size))
    return rows


def _table(rows: list[dict], num_frames: int, size: int) -> Table:
    table = Table(title=f"sampling one {num_frames}x{size}x{size} video, batch 1 (x2 for guidance), "
                        f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for column in ("preset", "parameters", "dtype", "compiled", "compile s", "sampler", "steps", "s / step",
                   "s / video", "video vs iddpm-100", "speed-up vs eager fp32"):
        table.add_column(column, justify="right")
    for row in rows:
        same = [r for r in rows if r["preset"] == row["preset"]]
        baseline = next(r for r in same if r["sampler"] == "iddpm" and r["dtype"] == row["dtype"]
                        and r["compiled"] == row["compiled"])
        fp32 = next((r for r in same if r["sampler"] == row["sampler"] and r["dtype"] == "fp32" and not r["compiled"]),
                    None)
        table.add_row(row["preset"], f"{row['params']:,}", row["dtype"], "yes" if row["compiled"] else "no",
                      "" if row["compile_seconds"] is None else f"{row['compile_seconds']:.1f}",
                      row["sampler"], str(row["steps"]),
                      f"{row['step_seconds']:.3f}", f"{row['video_seconds']:.2f}",
                      f"{row['video_seconds'] / baseline['video_seconds']:.2f}x",
                      f"{fp32['video_seconds'] / row['video_seconds']:.2f}x" if fp32 and fp32 is not row else "")
    return table


if __name__ == "__main__":
    import sys
    from pathlib import Path

    try:
        import bench.cli  # noqa: F401  (installed with the project, or on PYTHONPATH)
    except ImportError:  # sys.path[0] is bench/ itself: add the repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cli import run_script

    run_script("sampling")
