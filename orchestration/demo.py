"""`make demo`: run everything the project can do so far on the embedded default and
print where to look.

Today: build the tiny STDiT-2, push a real clip (or a synthetic one when
../shared/data/videos is absent) through the embedded video autoencoder and back, encode
a prompt, run one denoising forward pass, write the reconstruction next to the original
as an mp4, and sample text-to-video and image-to-video with the (untrained) model.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
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


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


def run_demo(out_dir: Path, num_frames: int = 16, size: int = 128, profile: str = "embedded") -> dict:
    console = Console()
    settings = load_profile(profile)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return result

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="square side in pixels (multiple of 16)")
    parser.add_argument("--profile", default="embedded")
    args = parser.parse_args()
    run_demo(args.out, args.num_frames, args.size, args.profile)


if __name__ == "__main__":
    main()
