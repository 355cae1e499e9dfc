"""`make demo`: run everything the project can do so far on the embedded default and
print where to look.

Today: build the tiny STDiT-2, push a real clip (or a synthetic one when
../shared/data/videos is absent) through the embedded video autoencoder and back, encode
a prompt, run one denoising forward pass, write the reconstruction next to the original
as an mp4, and sample text-to-video and image-to-video with the (untrained) model. Then
the pipeline without Dagster: synthetic data -> curation -> caches -> the tiny stage 1 ->
samples from its export.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from opensora_core.config import load_profile, project_root
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import frames_to_tensor, read_frames
from opensora_core.infer.export import to_uint8_frames, write_image, write_video
from opensora_core.infer.sample import PromptRequest, SampleSettings, VideoGenerator, write_samples
from opensora_core.models import build_stdit2
from opensora_core.models.text_encoder import build_text_encoder
from opensora_core.models.vae import build_vae

SHARED_VIDEO = "Megamind.avi"


def _load_clip(num_frames: int, size: int, console: Console) -> tuple[torch.Tensor, str]:
    video_path = project_root().parent / "shared" / "data" / "videos" / SHARED_VIDEO
    if video_path.is_file():
        frames = read_frames(video_path, num_frames)
        source = str(video_path)
    else:
        console.print(f"[yellow]{video_path} not found: using a synthetic clip instead[/]")
        frames = moving_square_clip(num_frames, size, size, color="red", direction="right")
        source = "synthetic: a red square moving right"
    return frames_to_tensor(frames, size, size), source


class _Timed:
    """Call a function and record its wall time under a name (and say so, if given a console)."""

    def __init__(self, timings: dict[str, float], console: Console | None = None):
        self.timings, self.console = timings, console

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings[name] = time.perf_counter() - start
        if self.console is not None:
            self.console.print(f"[green]done[/] {name} ({self.timings[name]:.1f} s)")
        return result


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


def run_demo(out_dir: Path, num_frames: int = 16, size: int = 128, profile: str = "embedded") -> dict:
    console = Console()
    settings = load_profile(profile)
    timings: dict[str, float] = {}
    timed = _Timed(timings)

    torch.manual_seed(0)
    model = timed("build model", build_stdit2, "stdit2-tiny").eval()
    config = model.config
    vae = build_vae(settings.vae.kind, settings.vae.path)
    text_encoder = build_text_encoder(
        settings.text_encoder.kind, settings.text_encoder.path,
        **({"output_dim": config.caption_channels, "model_max_length": config.model_max_length}
           if settings.text_encoder.kind == "word-embedding" else {}),
    )

    video, source = timed("decode clip", _load_clip, num_frames, size, console)
    with torch.no_grad():
        latents = timed("vae encode", vae.encode, video[None])
        reconstruction = timed("vae decode", vae.decode, latents)[0]
        prompt = "a red square moving right" if source.startswith("synthetic") else "an animated film scene"
        caption = timed("text encode", text_encoder.encode, [prompt])
        timestep = torch.tensor([500.0])
        noisy = latents + torch.randn_like(latents)
        prediction = timed("denoise forward", model, noisy, timestep, caption["y"], caption["mask"],
                           height=float(size), width=float(size), num_frames=float(num_frames), fps=24.0)

    out_dir.mkdir(parents=True, exist_ok=True)
    side_by_side = np.concatenate([to_uint8_frames(video), to_uint8_frames(reconstruction)], axis=2)
    movie = write_video(out_dir / "vae_reconstruction.mp4", side_by_side, fps=8)

    # Generation with the untrained model: text-to-video, and image-to-video from the
    # clip's first frame (mask strategy "0" keeps that frame exactly).
    first_frame = write_image(out_dir / "reference_frame.png", to_uint8_frames(video)[0])
    generator = VideoGenerator(model, vae, text_encoder)
    settings = SampleSettings(num_frames=num_frames, height=size, width=size, steps=20, sampler="dpm-solver",
                              fps=8, seed=0)
    requests = [PromptRequest(prompt), PromptRequest(prompt, [str(first_frame)], "0")]
    samples = timed("sample 2 videos", generator.generate, requests, settings, progress=False)
    sample_paths = write_samples(samples, requests, settings, out_dir / "samples",
                                 {"preset": "stdit2-tiny", "checkpoint": None, "note": "untrained weights"})

    params = sum(p.numel() for p in model.parameters())
    table = Table(title="opensora-mlops demo (embedded profile)")
    table.add_column("what")
    table.add_column("value", justify="right")
    for row in (
        ("clip", source),
        ("video in", f"{tuple(video.shape)} in [-1, 1]"),
        ("VAE", vae.identity()),
        ("latents", str(tuple(latents.shape))),
        ("reconstruction PSNR", f"{_psnr(reconstruction, video):.2f} dB"),
        ("caption", f"{prompt!r} -> y {tuple(caption['y'].shape)}, {int(caption['mask'].sum())} tokens"),
        ("model", f"stdit2-tiny: {params:,} parameters, depth {config.depth}, hidden {config.hidden_size}"),
        ("tokens per sample", f"{latents.shape[2] * (latents.shape[3] // 2) * (latents.shape[4] // 2):,}"),
        ("prediction", f"{tuple(prediction.shape)} (noise + learned variance)"),
        ("samples (untrained)", f"{len(sample_paths)} x {tuple(samples[0].shape)}: text-to-video, image-to-video"),
        *((f"time: {name}", f"{seconds * 1000:.0f} ms") for name, seconds in timings.items()),
    ):
        table.add_row(*row)
    console.print(table)
    console.print(f"\nLook at [bold]{movie}[/] (left: input, right: VAE reconstruction)")
    console.print(f"and [bold]{sample_paths[0].parent}[/] (samples of the untrained model, with JSON sidecars).")
    console.print("Next: `opensora model info --preset stdit2-xl2` for the published model's cost, "
                  "`make bench` for the STDiT-2 vs full-attention benchmark.")
    return {"psnr": _psnr(reconstruction, video), "prediction_shape": tuple(prediction.shape), "video": movie,
            "samples": sample_paths}


def run_pipeline(out_dir: Path, videos: int = 16, images: int = 4, steps: int = 30, console: Console | None = None,
                 profile: str = "embedded") -> dict:
    """The pipeline without Dagster: synthesise a captioned dataset (plus the shared real
    video when present), curate it, cache text and latents, train the tiny stage 1 and
    sample from its export. Each step is the same function its Dagster asset calls."""
    from opensora_core.config import load_stage
    from opensora_core.data.buckets import BucketAssigner
    from opensora_core.data.caches import ShardedTensorCache, build_text_cache, build_video_cache
    from opensora_core.data.config import load_curation_config
    from opensora_core.data.curate import curate
    from opensora_core.data.synthetic import synth
    from opensora_core.infer.sample import load_generation_stack
    from opensora_core.models import load_preset
    from opensora_core.models.text_encoder import build_text_encoder_for_model
    from opensora_core.train.loop import TrainArgs, train_stage

    console = console or Console()
    settings = load_profile(profile)
    timings: dict[str, float] = {}
    timed = _Timed(timings, console)

    raw, curated, caches = out_dir / "raw", out_dir / "curated", out_dir / "caches"
    timed("synthesise dataset", synth, raw, videos=videos, images=images, seed=0)
    real = project_root().parent / "shared" / "data" / "videos" / SHARED_VIDEO
    if real.is_file() and not (raw / real.name).exists():
        (raw / real.name).symlink_to(real)
    summary = timed("curate", curate, raw, curated, load_curation_config("synthetic"))
    table = pd.read_csv(curated / "meta.csv")
    config = load_preset("stdit2-tiny")
    encoder = build_text_encoder_for_model(settings.text_encoder.kind, settings.text_encoder.path,
                                           config.caption_channels, config.model_max_length)
    timed("cache captions", build_text_cache, table["text"].astype(str).tolist(), encoder,
          ShardedTensorCache(caches / "text"), progress=False)
    vae = build_vae(settings.vae.kind, settings.vae.path)
    timed("cache latents", build_video_cache, table, BucketAssigner(load_stage("tiny/stage1")), vae,
          ShardedTensorCache(caches / "video"), progress=False)
    result = timed("train tiny stage 1", train_stage, TrainArgs(
        stage="tiny/stage1", data=str(curated / "meta.csv"), cache=str(caches), out=str(out_dir / "stage1"),
        profile=profile, max_steps=steps, ckpt_every=steps))
    generator, provenance = load_generation_stack(checkpoint=result.export_path, profile=profile)
    requests = [PromptRequest("a red circle moving left"), PromptRequest("a blue square moving up")]
    sample_settings = SampleSettings(num_frames=8, height=64, width=64, steps=20, sampler="dpm-solver", fps=8)
    samples = timed("sample from the export", generator.generate, requests, sample_settings, progress=False)
    paths = write_samples(samples, requests, sample_settings, out_dir / "stage1_samples", provenance)

    table_view = Table(title="pipeline (embedded profile, no Dagster)")
    table_view.add_column("what")
    table_view.add_column("value", justify="right")
    for row in (
        ("clips kept / filtered / files rejected", f"{summary.kept} / {summary.filtered} / {summary.rejected}"),
        ("caches", f"{caches} ({sum(p.stat().st_size for p in caches.rglob('*') if p.is_file()) / 2**20:.1f} MiB)"),
        ("stage 1", (f"{result.steps} steps, loss {result.loss_curve[0][1]:.3f} -> {result.final_loss:.3f}, "
                     f"{result.tokens_per_second:,.0f} tokens/s, {result.wall_seconds:.0f} s")),
        ("export", result.export_path),
        ("MLflow run", result.mlflow_run_url or "offline record in the stage folder"),
        ("samples", str(paths[0].parent)),
        *((f"time: {name}", f"{seconds:.1f} s") for name, seconds in timings.items()),
    ):
        table_view.add_row(*row)
    console.print(table_view)
    return {"summary": summary, "train": result, "samples": paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="square side in pixels (multiple of 16)")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the tiny stage 1")
    args = parser.parse_args()
    run_demo(args.out, args.num_frames, args.size, args.profile)
    run_pipeline(args.out / "pipeline", steps=args.steps, profile=args.profile)
    console = Console()
    console.print("\nMLflow: `make ui` (http://127.0.0.1:5000). Dagster: `.venv/bin/dagster dev -m "
                  "orchestration.definitions` (http://127.0.0.1:3000).")


if __name__ == "__main__":
    main()
