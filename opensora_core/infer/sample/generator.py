"""The generation loop: prompts and references to latents, through one mask mechanism,
with classifier-free guidance and loop-by-loop long videos."""

from __future__ import annotations

from pathlib import Path

import torch

from opensora_core.data.images import read_image_rgb
from opensora_core.data.video_io import frames_to_tensor, read_frames
from opensora_core.diffusion.samplers import (
    build_sampler,
    classifier_free_guidance,
    denoise,
    guided_channels,
)
from opensora_core.infer.mask_strategy import MaskOp, apply_mask_strategy, parse_mask_strategy
from opensora_core.infer.sample.requests import PromptRequest, SampleSettings, request_problems
from opensora_core.infer.sizes import decoded_size, size_problems
from opensora_core.models.stdit2 import IMAGE_FPS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_REFERENCE_FRAMES = 1024


class VideoGenerator:
    """Model + autoencoder + text encoder, and the loop that turns prompts into videos."""

    def __init__(self, model, vae, text_encoder, device: str | torch.device = "cpu", objective: str = "iddpm",
                 shift: float = 1.0):
        self.objective = objective  # what the model was trained for: iddpm or rflow
        self.shift = shift  # rflow's timestep shift in training, repeated in sampling
        self.model = model.eval().to(device)
        self.vae = vae.to(device) if isinstance(vae, torch.nn.Module) else vae
        self.text_encoder = text_encoder
        self.device = torch.device(device)

    # 1. Checks that run before any work

    def check(self, settings: SampleSettings, requests: list[PromptRequest]) -> None:
        c = self.model.config
        problems = settings.problems()
        problems += size_problems(settings.height, settings.width, self.vae.spatial_downsample)
        if settings.num_frames % c.patch_size[0]:
            problems.append(f"num_frames {settings.num_frames} must be a multiple of the temporal patch {c.patch_size[0]}")
        if settings.cfg_channel is not None and not 1 <= settings.cfg_channel <= c.in_channels:
            problems.append(f"cfg_channel must be in [1, {c.in_channels}], got {settings.cfg_channel}")
        try:
            build_sampler(settings.sampler, settings.steps, self.objective, self.shift)
        except ValueError as err:
            problems.append(str(err))
        if getattr(self.text_encoder, "model_max_length", c.model_max_length) != c.model_max_length or getattr(
            self.text_encoder, "output_dim", c.caption_channels
        ) != c.caption_channels:
            problems.append(
                f"text encoder gives {self.text_encoder.model_max_length} tokens x {self.text_encoder.output_dim}, "
                f"the model expects {c.model_max_length} x {c.caption_channels}"
            )
        problems += request_problems(requests, settings)
        if problems:
            raise ValueError("cannot sample:\n  " + "\n  ".join(problems))

    # 2. References

    def encode_reference(self, path: str | Path, height: int, width: int) -> torch.Tensor:
        """An image or video, fitted to the size the VAE works at, as latents `[C, T, h, w]`."""
        height, width = decoded_size(height, width, self.vae.spatial_downsample)
        path = Path(path)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            frames = read_image_rgb(path)[None]
        else:
            frames = read_frames(path, MAX_REFERENCE_FRAMES)
        video = frames_to_tensor(frames, height, width).to(self.device)
        with torch.no_grad():
            return self.vae.encode(video[None])[0].float()

    # 3. Generation

    @torch.no_grad()
    def generate(self, requests: list[PromptRequest], settings: SampleSettings, progress: bool = True) -> list[torch.Tensor]:
        """Videos `[3, T_total, H, W]` in [-1, 1], one per request."""
        self.check(settings, requests)
        generator = torch.Generator().manual_seed(settings.seed)
        videos = []
        for start in range(0, len(requests), settings.batch_size):
            batch = requests[start : start + settings.batch_size]
            latents = self.generate_latents(batch, settings, generator, progress)
            decoded = self.vae.decode(latents.to(self.device))
            videos.extend(video.float().cpu() for video in decoded)
        return videos

    @torch.no_grad()
    def generate_latents(
        self, batch: list[PromptRequest], settings: SampleSettings, generator: torch.Generator, progress: bool = True
    ) -> torch.Tensor:
        """Latents `[B, C, T_total, h, w]` for one batch (all loops, conditioning
        frames of later loops dropped)."""
        c = self.model.config
        frames = settings.num_frames
        latent_shape = (c.in_channels, frames, settings.height // self.vae.spatial_downsample,
                        settings.width // self.vae.spatial_downsample)
        captions: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

        def caption(loop: int) -> tuple[torch.Tensor, torch.Tensor]:
            texts = tuple(r.text_for_loop(loop) for r in batch)
            if texts not in captions:
                encoded = self.text_encoder.encode(list(texts))
                captions[texts] = (encoded["y"].to(self.device, self.model.dtype), encoded["mask"].to(self.device))
            return captions[texts]

        null = self.model.null_caption(len(batch)).to(self.device)
        references = [[self.encode_reference(p, settings.height, settings.width) for p in r.references] for r in batch]
        strategies = [parse_mask_strategy(r.mask_strategy) for r in batch]
        conditions = sampling_conditions(settings, self.model.config.micro_condition_convention)

        def guided_model(y, y_mask, channels):
            def model_fn(z, t, x_mask):
                doubled = None if x_mask is None else torch.cat([x_mask, x_mask])
                out = self.model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null]), mask=y_mask,
                                 x_mask=doubled, **conditions)
                return classifier_free_guidance(out.float(), settings.cfg_scale, channels)

            return model_fn

        pieces: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for loop in range(settings.loops):
            z = torch.randn((len(batch), *latent_shape), generator=generator).to(self.device)
            placements = []
            for index, ops in enumerate(strategies):
                refs = list(references[index])
                if loop > 0:
                    # Each later loop continues from the tail of the previous one.
                    refs.append(previous[index].cpu())
                    tail = settings.condition_frame_length
                    ops = [*ops, MaskOp(loop, len(refs) - 1, -tail, 0, tail, 0.0)]
                placements.append(apply_mask_strategy(ops, loop, refs, frames, latent_shape))
            frame_mask = reference = None
            if any(p is not None for p in placements):
                reference = torch.stack([p[0] if p else torch.zeros(latent_shape) for p in placements]).to(self.device)
                frame_mask = torch.stack([p[1] if p else torch.ones(frames) for p in placements]).to(self.device)
            sampler = build_sampler(settings.sampler, settings.steps, self.objective, self.shift)
            model_fn = guided_model(*caption(loop), guided_channels(sampler, settings.cfg_channel))
            latents = denoise(model_fn, sampler, z, frame_mask, reference, generator, progress)
            pieces.append(latents if loop == 0 else latents[:, :, settings.condition_frame_length :])
            previous = latents
        return torch.cat(pieces, dim=2)


def sampling_conditions(settings: SampleSettings, convention: str = "consistent") -> dict[str, float]:
    """The micro-conditions of one generation loop: ar = height/width under both values
    of `STDiT2Config.micro_condition_convention`, as Open-Sora's inference does for its
    published weights even though their training saw width/height. fps (120 for
    images): "opensora-1.1" gets the requested `fps`, the source rate its training saw;
    "consistent" gets `fps / frame_interval`, the rate of the frames the model makes,
    which is what its training saw (Open-Sora's defaults, 24 and 3, give 8)."""
    frames = settings.num_frames
    fps = settings.fps if convention == "opensora-1.1" else settings.fps / settings.frame_interval
    return {"height": float(settings.height), "width": float(settings.width), "ar": settings.height / settings.width,
            "num_frames": float(frames), "fps": float(IMAGE_FPS if frames == 1 else fps)}
