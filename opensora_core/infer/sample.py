"""Generation: text-to-video/image, image-to-video, extension, connecting clips, editing
and loop-generated long videos, all through one mask mechanism.

`generate_videos` is the Python API; `opensora sample` wraps `sample_to_files`, which
also writes one mp4 per prompt (PNG for one frame) with a JSON sidecar of everything
needed to reproduce it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from opensora_core.data.images import read_image_rgb
from opensora_core.data.video_io import frames_to_tensor, read_frames
from opensora_core.diffusion.samplers import build_sampler, classifier_free_guidance, denoise
from opensora_core.infer.export import to_uint8_frames, write_image, write_video
from opensora_core.infer.mask_strategy import (
    MaskOp,
    MaskStrategyError,
    apply_mask_strategy,
    parse_mask_strategy,
)
from opensora_core.models.stdit2 import IMAGE_FPS
from opensora_core.utils.atomic import write_text_atomic
from opensora_core.utils.hashing import file_sha256

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_REFERENCE_FRAMES = 1024


@dataclass
class SampleSettings:
    num_frames: int = 16
    height: int = 64
    width: int = 64
    fps: float = 24.0
    steps: int = 100
    sampler: str = "auto"  # the model's own: iddpm, or rflow for rectified-flow models
    cfg_scale: float = 7.0
    cfg_channel: int | None = 3
    seed: int = 42
    loops: int = 1
    condition_frame_length: int = 4
    batch_size: int = 1


@dataclass
class PromptRequest:
    """One prompt with its own references and mask strategy (Open-Sora's JSON suffix)."""

    text: str
    references: list[str] = field(default_factory=list)
    mask_strategy: str | None = None


_JSON_SUFFIX = re.compile(r"(\{[^{}]*\})\s*$")


def parse_prompt(line: str, references: list[str] | None = None, mask_strategy: str | None = None) -> PromptRequest:
    """`a cat{"reference_path": "a.png;b.mp4", "mask_strategy": "0"}` -> request. The
    suffix overrides the command-line references and strategy for that prompt."""
    request = PromptRequest(line.strip(), list(references or []), mask_strategy)
    match = _JSON_SUFFIX.search(line)
    if match:
        try:
            extra = json.loads(match.group(1))
        except json.JSONDecodeError as err:
            raise ValueError(f"prompt {line!r}: the JSON suffix does not parse: {err}") from None
        unknown = set(extra) - {"reference_path", "mask_strategy"}
        if unknown:
            raise ValueError(f"prompt {line!r}: unknown keys {sorted(unknown)} (expected reference_path, mask_strategy)")
        request.text = line[: match.start()].strip()
        if "reference_path" in extra:
            request.references = [p for p in str(extra["reference_path"]).split(";") if p]
        if "mask_strategy" in extra:
            request.mask_strategy = str(extra["mask_strategy"])
    if not request.text:
        raise ValueError(f"prompt {line!r} has no text")
    return request


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
        self.size_multiple = vae.spatial_downsample * model.config.patch_size[1]

    # 1. Checks that run before any work

    def check(self, settings: SampleSettings, requests: list[PromptRequest]) -> None:
        c = self.model.config
        problems = []
        for side, value in (("height", settings.height), ("width", settings.width)):
            if value <= 0 or value % self.size_multiple:
                problems.append(f"{side} {value} must be a positive multiple of {self.size_multiple} "
                                f"(VAE x{self.vae.spatial_downsample} times patch {c.patch_size[1]})")
        if settings.num_frames < 1:
            problems.append(f"num_frames must be >= 1, got {settings.num_frames}")
        if settings.num_frames % c.patch_size[0]:
            problems.append(f"num_frames {settings.num_frames} must be a multiple of the temporal patch {c.patch_size[0]}")
        if settings.loops < 1:
            problems.append(f"loops must be >= 1, got {settings.loops}")
        if settings.loops > 1 and not 1 <= settings.condition_frame_length < settings.num_frames:
            problems.append(f"condition_frame_length must be in [1, num_frames) for long videos, "
                            f"got {settings.condition_frame_length} with {settings.num_frames} frames")
        if settings.cfg_channel is not None and not 1 <= settings.cfg_channel <= c.in_channels:
            problems.append(f"cfg_channel must be in [1, {c.in_channels}], got {settings.cfg_channel}")
        if settings.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {settings.batch_size}")
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
        for request in requests:
            try:
                ops = parse_mask_strategy(request.mask_strategy)
            except MaskStrategyError as err:
                problems.append(str(err))
                continue
            available = len(request.references) + (1 if settings.loops > 1 else 0)
            for op in ops:
                if op.ref_id >= available:
                    problems.append(f"prompt {request.text!r}: {op} refers to reference {op.ref_id}, "
                                    f"but {len(request.references)} reference(s) were given")
                if op.loop >= settings.loops:
                    problems.append(f"prompt {request.text!r}: {op} is for loop {op.loop}, but loops={settings.loops}")
            for path in request.references:
                if not Path(path).is_file():
                    problems.append(f"prompt {request.text!r}: reference {path} not found")
        if problems:
            raise ValueError("cannot sample:\n  " + "\n  ".join(problems))

    # 2. References

    def encode_reference(self, path: str | Path, height: int, width: int) -> torch.Tensor:
        """An image or video, fitted to the target size, as latents `[C, T, h, w]`."""
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
        caption = self.text_encoder.encode([r.text for r in batch])
        y, y_mask = caption["y"].to(self.device, self.model.dtype), caption["mask"].to(self.device)
        null = self.model.null_caption(len(batch)).to(self.device)
        references = [[self.encode_reference(p, settings.height, settings.width) for p in r.references] for r in batch]
        strategies = [parse_mask_strategy(r.mask_strategy) for r in batch]
        fps = IMAGE_FPS if frames == 1 else settings.fps
        conditions = {"height": float(settings.height), "width": float(settings.width),
                      "ar": settings.height / settings.width, "num_frames": float(frames), "fps": float(fps)}

        def model_fn(z, t, x_mask):
            doubled = None if x_mask is None else torch.cat([x_mask, x_mask])
            out = self.model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null]), mask=y_mask,
                             x_mask=doubled, **conditions)
            return classifier_free_guidance(out, settings.cfg_scale, settings.cfg_channel)

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
            latents = denoise(model_fn, sampler, z, frame_mask, reference, generator, progress)
            pieces.append(latents if loop == 0 else latents[:, :, settings.condition_frame_length :])
            previous = latents
        return torch.cat(pieces, dim=2)


def write_samples(
    videos: list[torch.Tensor], requests: list[PromptRequest], settings: SampleSettings, out_dir: str | Path,
    provenance: dict,
) -> list[Path]:
    """One mp4 (PNG for a single frame) per video, each with a JSON sidecar."""
    out_dir = Path(out_dir)
    written = []
    for index, (video, request) in enumerate(zip(videos, requests)):
        stem = out_dir / f"sample_{index:03d}"
        frames = to_uint8_frames(video)
        if frames.shape[0] == 1:
            path = write_image(stem.with_suffix(".png"), frames[0])
        else:
            path = write_video(stem.with_suffix(".mp4"), frames, fps=settings.fps)
        sidecar = {"prompt": request.text, "references": request.references, "mask_strategy": request.mask_strategy,
                   "settings": asdict(settings), "output": path.name, "frames": int(frames.shape[0]),
                   "height": int(frames.shape[1]), "width": int(frames.shape[2]), **provenance}
        write_text_atomic(stem.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True))
        written.append(path)
    return written


TEXT_ENCODER_WEIGHTS = "text_encoder.safetensors"


def load_generation_stack(
    checkpoint: str | Path | None = None, preset: str | None = None, profile: str = "embedded", device: str = "cpu"
) -> tuple[VideoGenerator, dict]:
    """Model (from a checkpoint, or a preset's random init), the profile's video
    autoencoder and text encoder, and the provenance recorded in sidecars. A jointly
    trained word-embedding text encoder is read from `text_encoder.safetensors`
    beside the checkpoint."""
    import warnings

    from safetensors.torch import load_file

    from opensora_core.config import load_profile
    from opensora_core.models import STDiT2, build_stdit2
    from opensora_core.models.checkpoint_io import read_objective
    from opensora_core.models.text_encoder import build_text_encoder_for_model
    from opensora_core.models.vae import build_vae

    if (checkpoint is None) == (preset is None):
        raise ValueError("give exactly one of a checkpoint or a preset")
    settings = load_profile(profile)
    objective, shift = "iddpm", 1.0
    if checkpoint is not None:
        model = STDiT2.from_checkpoint(checkpoint)
        objective, shift = read_objective(checkpoint)
        checkpoint_file = Path(checkpoint) / "model.safetensors" if Path(checkpoint).is_dir() else Path(checkpoint)
    else:
        warnings.warn(f"sampling from a randomly initialised {preset}: the output is noise-like", stacklevel=2)
        model = build_stdit2(preset)
        checkpoint_file = None
    c = model.config
    vae = build_vae(settings.vae.kind, settings.vae.path)
    weights_path = None if checkpoint_file is None else checkpoint_file.with_name(TEXT_ENCODER_WEIGHTS)
    weights = load_file(str(weights_path)) if weights_path is not None and weights_path.is_file() else None
    if settings.text_encoder.kind == "word-embedding" and weights is None and checkpoint_file is not None:
        warnings.warn(f"no {TEXT_ENCODER_WEIGHTS} beside {checkpoint_file}: text encoder is random", stacklevel=2)
    text_encoder = build_text_encoder_for_model(
        settings.text_encoder.kind, settings.text_encoder.path, c.caption_channels, c.model_max_length,
        weights if settings.text_encoder.kind == "word-embedding" else None, device,
    )
    provenance = {
        "checkpoint": None if checkpoint_file is None else str(checkpoint_file),
        "checkpoint_sha256": None if checkpoint_file is None else file_sha256(checkpoint_file),
        "preset": preset,
        "objective": objective,
        "timestep_shift": shift,
        "profile": profile,
        "vae": vae.identity(),
        "text_encoder": text_encoder.identity(),
    }
    return VideoGenerator(model, vae, text_encoder, device, objective, shift), provenance
