"""Generation: text-to-video/image, image-to-video, extension, connecting clips, editing
and loop-generated long videos, all through one mask mechanism.

`VideoGenerator.generate` is the Python API; `opensora sample` wraps `sample_to_files`,
which also writes one mp4 per sample (PNG for one frame) with a JSON sidecar of
everything needed to reproduce it. Open-Sora's inference conventions are kept: the
file is written at `fps // frame_interval` and the published weights are conditioned on
`fps` (models of the "consistent" convention on `fps / frame_interval`, the rate of the
frames they generate, as they were trained), a prompt may change per loop (`|0|first|2|second`), and guidance covers only the first
`cfg_channel` channels with IDDPM (all channels with DPM-Solver and rflow).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from opensora_core.data.images import read_image_rgb
from opensora_core.data.video_io import (
    frames_to_tensor,
    read_frames,
    to_uint8_frames,
    write_image,
    write_video,
)
from opensora_core.diffusion.samplers import (
    build_sampler,
    classifier_free_guidance,
    denoise,
    guided_channels,
)
from opensora_core.infer.mask_strategy import (
    MaskOp,
    MaskStrategyError,
    apply_mask_strategy,
    parse_mask_strategy,
)
from opensora_core.infer.sizes import decoded_size, size_problems
from opensora_core.models.checkpoint_io import load_stdit2
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
    fps: float = 24.0  # see sampling_conditions for what the model is conditioned on
    # Open-Sora writes the file at fps // frame_interval (its published config: 24 // 3 = 8).
    frame_interval: int = 1
    steps: int = 100
    sampler: str = "auto"  # the model's own: iddpm, or rflow for rectified-flow models
    cfg_scale: float = 7.0
    cfg_channel: int | None = 3
    seed: int = 42
    loops: int = 1
    condition_frame_length: int = 4
    batch_size: int = 1

    def output_fps(self) -> float:
        return self.fps // self.frame_interval

    def problems(self) -> list[str]:
        """What is wrong with these settings whatever the model: checked before anything
        loads (`VideoGenerator.check` adds what depends on the model)."""
        problems = []
        if self.num_frames < 1:
            problems.append(f"num_frames must be >= 1, got {self.num_frames}")
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.loops < 1:
            problems.append(f"loops must be >= 1, got {self.loops}")
        if not math.isfinite(self.cfg_scale):
            problems.append(f"cfg_scale must be a finite number, got {self.cfg_scale}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            problems.append(f"fps must be a positive number, got {self.fps}")
        elif self.frame_interval < 1:
            problems.append(f"frame_interval must be >= 1, got {self.frame_interval}")
        elif self.num_frames > 1 and self.output_fps() < 1:
            problems.append(f"fps {self.fps} // frame_interval {self.frame_interval} is below 1 frame per second")
        if self.loops > 1 and not 1 <= self.condition_frame_length < self.num_frames:
            problems.append(f"condition_frame_length must be in [1, num_frames) for long videos, "
                            f"got {self.condition_frame_length} with {self.num_frames} frames")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        return problems


def request_problems(requests: list[PromptRequest], settings: SampleSettings) -> list[str]:
    """Per prompt: loop texts and mask strategies that fit `settings`, references that exist."""
    problems = []
    for request in requests:
        late = [loop for loop, _ in request.loop_texts if loop >= settings.loops]
        if late:
            problems.append(f"prompt {request.text!r}: has text for loop(s) {late}, but loops={settings.loops}")
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
    return problems


@dataclass
class PromptRequest:
    """One prompt with its own references and mask strategy (Open-Sora's JSON suffix).
    `loop_texts` holds `(first_loop, text)` pairs of a `|0|...|2|...` prompt; empty when
    one text serves every loop."""

    text: str
    references: list[str] = field(default_factory=list)
    mask_strategy: str | None = None
    loop_texts: tuple[tuple[int, str], ...] = ()

    def text_for_loop(self, loop: int) -> str:
        chosen = self.text
        for first, text in self.loop_texts:
            if first <= loop:
                chosen = text
        return chosen


_JSON_SUFFIX = re.compile(r"(\{[^{}]*\})\s*$")


def parse_loop_prompts(text: str) -> tuple[tuple[int, str], ...]:
    """`|0|a city|2|a forest` -> ((0, "a city"), (2, "a forest")): each text holds from
    its loop until the next one's. Text not starting with `|` is one prompt: ()."""
    if not text.startswith("|"):
        return ()
    parts = text.split("|")[1:]
    if len(parts) % 2:
        raise ValueError(f"prompt {text!r}: per-loop prompts alternate |loop|text|, got an odd number of fields")
    pairs = []
    for loop_field, part in zip(parts[::2], parts[1::2]):
        if not loop_field.strip().isdigit():
            raise ValueError(f"prompt {text!r}: loop {loop_field!r} is not a non-negative integer")
        if not part.strip():
            raise ValueError(f"prompt {text!r}: loop {loop_field.strip()} has no text")
        pairs.append((int(loop_field), part.strip()))
    loops = [loop for loop, _ in pairs]
    if loops[0] != 0:
        raise ValueError(f"prompt {text!r}: per-loop prompts start with |0|")
    if any(b <= a for a, b in itertools.pairwise(loops)):
        raise ValueError(f"prompt {text!r}: loop numbers must increase, got {loops}")
    return tuple(pairs)


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
    request.loop_texts = parse_loop_prompts(request.text)
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


def write_samples(
    videos: list[torch.Tensor], requests: list[PromptRequest], settings: SampleSettings, out_dir: str | Path,
    provenance: dict, names: list[str] | None = None,
) -> list[Path]:
    """One mp4 at `settings.output_fps()` (PNG for a single frame) per video, each with
    a JSON sidecar; files are `names` (default `sample_000`, `sample_001`, ...)."""
    out_dir = Path(out_dir)
    names = names or [f"sample_{index:03d}" for index in range(len(videos))]
    if not len(videos) == len(requests) == len(names):
        raise ValueError(f"{len(videos)} videos, {len(requests)} requests and {len(names)} names must match")
    written = []
    for video, request, name in zip(videos, requests, names):
        frames = to_uint8_frames(video)
        # Not with_suffix: a prompt used as the name may hold dots.
        if frames.shape[0] == 1:
            path = write_image(out_dir / f"{name}.png", frames[0])
        else:
            path = write_video(out_dir / f"{name}.mp4", frames, fps=settings.output_fps())
        sidecar = {"prompt": request.text, "references": request.references, "mask_strategy": request.mask_strategy,
                   "loop_prompts": [request.text_for_loop(loop) for loop in range(settings.loops)],
                   "settings": asdict(settings), "output": path.name, "frames": int(frames.shape[0]),
                   "output_fps": settings.output_fps() if frames.shape[0] > 1 else None,
                   "height": int(frames.shape[1]), "width": int(frames.shape[2]), **provenance}
        write_text_atomic(out_dir / f"{name}.json", json.dumps(sidecar, indent=2, sort_keys=True))
        written.append(path)
    return written


# Characters that are path separators or refused by common file systems.
_UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f/\\:*?"<>|]')
MAX_NAME_CHARS = 100


def sample_names(requests: list[PromptRequest], start_index: int = 0, num_sample: int = 1,
                 prompt_as_path: bool = False) -> list[str]:
    """File stems, `num_sample` per request in order: `sample_{start_index + i}` (as
    Open-Sora numbers a `--start-index` shard), or the prompt itself; `-k` per sample
    when `num_sample` > 1. Two samples never share a name."""
    names = []
    for index, request in enumerate(requests):
        if prompt_as_path:
            text = " ".join(request.text_for_loop(0).split())
            base = _UNSAFE_IN_NAMES.sub("_", text)[:MAX_NAME_CHARS].strip().lstrip(".") or "_"
        else:
            base = f"sample_{start_index + index:03d}"
        names += [base] if num_sample == 1 else [f"{base}-{k}" for k in range(num_sample)]
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise ValueError(f"samples {seen[name]} and {index} would both be written as {name!r} "
                             "(--prompt-as-path with repeated prompts): give distinct prompts or drop --prompt-as-path")
        seen[name] = index
    return names


def sample_to_files(
    generator: VideoGenerator, requests: list[PromptRequest], settings: SampleSettings, out_dir: str | Path,
    provenance: dict, start_index: int = 0, num_sample: int = 1, prompt_as_path: bool = False,
    progress: bool = True,
) -> list[Path]:
    """`num_sample` videos per request (each from its own noise, the seed's stream
    running on), written with sidecars; every check runs before any sampling."""
    if num_sample < 1:
        raise ValueError(f"num_sample must be >= 1, got {num_sample}")
    names = sample_names(requests, start_index, num_sample, prompt_as_path)
    expanded = [request for request in requests for _ in range(num_sample)]
    generator.check(settings, expanded)
    videos = generator.generate(expanded, settings, progress=progress)
    return write_samples(videos, expanded, settings, out_dir, provenance, names)


TEXT_ENCODER_WEIGHTS = "text_encoder.safetensors"
# T5 v1.1 XXL's width: Open-Sora's published STDiT2-XL/2 reads its captions, and was
# trained on latents of the SD VAE.
T5_XXL_CHANNELS = 4096


def _t5_width(path: str | None) -> int | None:
    config = None if path is None else Path(path) / "config.json"
    if config is None or not config.is_file():
        return None  # T5TextEncoder reports the missing folder or file
    return int(json.loads(config.read_text()).get("d_model", 0)) or None


def check_encoders(config, profile, checkpoint_file: Path, word_weights: dict | None) -> None:
    """Refuse a profile whose encoders cannot be those `checkpoint_file` was trained with:
    they would not fail, they would give noise. Runs before the encoders are loaded. A
    T5-XXL-wide model (Open-Sora's published one) needs T5 and the SD VAE; an untrained
    word table for a narrower model only warns (random-weight pipeline checks)."""
    import warnings

    text, vae = profile.text_encoder, profile.vae
    channels = config.caption_channels
    if text.kind == "word-embedding":
        width = None if word_weights is None else int(word_weights["embedding.weight"].shape[1])
        # A small untrained table is how pipeline checks sample; T5-XXL's width never is.
        text_ok = width == channels or (width is None and channels != T5_XXL_CHANNELS)
        if width is None and text_ok:
            warnings.warn(f"no {TEXT_ENCODER_WEIGHTS} beside {checkpoint_file}: text encoder is random", stacklevel=3)
        given_text = ("word-embedding (the embedded stand-in) with no trained "
                      f"{TEXT_ENCODER_WEIGHTS} beside the checkpoint" if width is None
                      else f"word-embedding of width {width}")
    else:
        width = _t5_width(text.path)
        text_ok = width in (None, channels)
        given_text = f"t5 at {text.path}" + ("" if width is None else f" (d_model {width})")
    if channels == T5_XXL_CHANNELS:
        wanted_text = f"t5 with a local t5-v1_1-xxl folder (T5-XXL: caption_channels {channels})"
        wanted_vae = (f"sd-kl with a local sd-vae-ft-ema folder (Stable Diffusion's KL VAE: "
                      f"in_channels {config.in_channels})")
        vae_ok = vae.kind == "sd-kl" and vae.path is not None
    else:
        wanted_text = (f"t5 with d_model {channels}, or word-embedding with its trained {TEXT_ENCODER_WEIGHTS} "
                       "beside the checkpoint")
        wanted_vae = f"one with {config.in_channels} latent channels (in_channels)"
        vae_ok = True  # the latent channels are compared once the VAE is built
    if not (text_ok and vae_ok):
        given_vae = f"{vae.kind}" + (f" at {vae.path}" if vae.path else " (no weights: random)" if vae.kind == "sd-kl"
                                     else " (the embedded weight-free stand-in)")
        raise ValueError(
            f"{checkpoint_file} expects the text encoder {wanted_text} and the VAE {wanted_vae}; profile "
            f"'{profile.name}' gives the text encoder {given_text} and the VAE {given_vae}. Use a profile with "
            "the encoders the checkpoint was trained with (for Open-Sora's published weights: --profile published)"
        )


def load_generation_stack(
    checkpoint: str | Path | None = None, preset: str | None = None, profile: str = "embedded",
    device: str | None = None, dtype: str | torch.dtype | None = None,
) -> tuple[VideoGenerator, dict]:
    """Model (from a checkpoint, or a preset's random init), the profile's video
    autoencoder and text encoder, and the provenance recorded in sidecars. A jointly
    trained word-embedding text encoder is read from `text_encoder.safetensors`
    beside the checkpoint. `device` defaults to the profile's; `dtype` (the model's)
    to bf16 on CUDA as Open-Sora samples, fp32 on CPU. Only the profile's encoders
    and device are read: sampling needs no tracking server."""
    import warnings

    from safetensors.torch import load_file

    from opensora_core.config import load_sampling_profile
    from opensora_core.models import build_stdit2
    from opensora_core.models.checkpoint_io import read_objective
    from opensora_core.models.text_encoder import build_text_encoder_for_model
    from opensora_core.models.vae import build_vae
    from opensora_core.utils.dtypes import resolve_dtype
    from opensora_core.utils.host_memory import retain_freed_memory

    if (checkpoint is None) == (preset is None):
        raise ValueError("give exactly one of a checkpoint or a preset")
    settings = load_sampling_profile(profile)
    device = device or settings.device
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device} (profile '{settings.name}') but no CUDA device is available: "
                         "pass --device cpu")
    dtype = resolve_dtype(dtype, torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    if not str(device).startswith("cuda"):
        retain_freed_memory()
    objective, shift = "iddpm", 1.0
    if checkpoint is not None:
        model = load_stdit2(checkpoint)
        objective, shift = read_objective(checkpoint)
        checkpoint_file = Path(checkpoint) / "model.safetensors" if Path(checkpoint).is_dir() else Path(checkpoint)
    else:
        warnings.warn(f"sampling from a randomly initialised {preset}: the output is noise-like", stacklevel=2)
        model = build_stdit2(preset)
        checkpoint_file = None
    model = model.to(dtype)
    c = model.config
    weights_path = None if checkpoint_file is None else checkpoint_file.with_name(TEXT_ENCODER_WEIGHTS)
    weights = load_file(str(weights_path)) if weights_path is not None and weights_path.is_file() else None
    if checkpoint_file is not None:
        check_encoders(c, settings, checkpoint_file, weights if settings.text_encoder.kind == "word-embedding" else None)
    vae = build_vae(settings.vae.kind, settings.vae.path)
    if vae.latent_channels != c.in_channels:
        raise ValueError(f"the model reads {c.in_channels} latent channels (in_channels), profile "
                         f"'{settings.name}''s VAE {settings.vae.kind} gives {vae.latent_channels}")
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
        "dtype": str(dtype).removeprefix("torch."),
        "vae": vae.identity(),
        "text_encoder": text_encoder.identity(),
    }
    return VideoGenerator(model, vae, text_encoder, device, objective, shift), provenance
