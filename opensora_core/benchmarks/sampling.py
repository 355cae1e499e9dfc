"""Sampling cost: seconds per denoising step and per generated video, IDDPM (100 steps)
against DPM-Solver++ (20 steps), for a small and a mid-size preset. Each step runs the
model on a doubled batch (classifier-free guidance). Randomly initialised weights:
the cost does not depend on what the weights are."""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from opensora_core.infer.sample import PromptRequest, SampleSettings, VideoGenerator
from opensora_core.models import build_stdit2
from opensora_core.models.text_encoder import WordEmbeddingTextEncoder
from opensora_core.models.vae import DCTAutoencoder

PLANS = (("iddpm", 100), ("dpm-solver", 20))


def run_sampling_benchmark(
    presets: list[str], num_frames: int = 16, size: int = 64, console: Console | None = None
) -> list[dict]:
    console = console or Console()
    torch.manual_seed(0)
    rows = []
    for preset in presets:
        model = build_stdit2(preset)
        c = model.config
        text_encoder = WordEmbeddingTextEncoder(output_dim=c.caption_channels, model_max_length=c.model_max_length)
        generator = VideoGenerator(model, DCTAutoencoder(), text_encoder)
        params = sum(p.numel() for p in model.parameters())
        for sampler, steps in PLANS:
            settings = SampleSettings(num_frames=num_frames, height=size, width=size, steps=steps, sampler=sampler)
            request = [PromptRequest("a red circle moving left")]
            start = time.perf_counter()
            latents = generator.generate_latents(request, settings, torch.Generator().manual_seed(0), progress=False)
            denoise_seconds = time.perf_counter() - start
            start = time.perf_counter()
            with torch.no_grad():
                generator.vae.decode(latents)
            decode_seconds = time.perf_counter() - start
            rows.append({"preset": preset, "params": params, "sampler": sampler, "steps": steps,
                         "step_seconds": denoise_seconds / steps, "video_seconds": denoise_seconds + decode_seconds})
            console.print(f"  {preset} {sampler} {steps} steps: {denoise_seconds + decode_seconds:.2f} s", highlight=False)
    table = Table(title=f"sampling one {num_frames}x{size}x{size} video, batch 1 (x2 for guidance), "
                        f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}")
    for column in ("preset", "parameters", "sampler", "steps", "s / step", "s / video", "video vs iddpm-100"):
        table.add_column(column, justify="right")
    for row in rows:
        baseline = next(r for r in rows if r["preset"] == row["preset"] and r["sampler"] == "iddpm")
        table.add_row(row["preset"], f"{row['params']:,}", row["sampler"], str(row["steps"]),
                      f"{row['step_seconds']:.3f}", f"{row['video_seconds']:.2f}",
                      f"{row['video_seconds'] / baseline['video_seconds']:.2f}x")
    console.print(table)
    return rows
