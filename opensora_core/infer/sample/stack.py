"""Loading what sampling runs on: the model, the profile's encoders (refused when they
cannot be those the checkpoint was trained with) and the provenance of the samples."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from opensora_core.infer.sample.generator import VideoGenerator
from opensora_core.models.checkpoint_io import load_stdit2
from opensora_core.models.encoders import TEXT_ENCODER_WEIGHTS
from opensora_core.utils.hashing import file_sha256

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
    device: str | None = None, dtype: str | torch.dtype | None = None, compile: bool = False,
) -> tuple[VideoGenerator, dict]:
    """Model (from a checkpoint, or a preset's random init), the profile's video
    autoencoder and text encoder, and the provenance recorded in sidecars. A jointly
    trained word-embedding text encoder is read from `text_encoder.safetensors`
    beside the checkpoint. `device` defaults to the profile's; `dtype` (the model's)
    to bf16 on CUDA as Open-Sora samples, fp32 on CPU. `compile`: each block compiled in
    place, as training's `compile` does. Only the profile's encoders
    and device are read: sampling needs no tracking server."""
    from opensora_core.config import load_sampling_profile
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
    if settings.attention_backend == "flash" and not str(device).startswith("cuda"):
        raise ValueError(f"profile '{settings.name}' asks for attention_backend flash, which needs a CUDA "
                         f"device, not {device}")
    model, objective, shift, checkpoint_file = _load_model(checkpoint, preset)
    model = model.to(dtype)
    model.use_attention_backend(settings.attention_backend)
    if compile:
        model.compile_blocks()
    vae, text_encoder = _load_encoders(model.config, settings, checkpoint_file, device)
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


def _load_model(checkpoint: str | Path | None, preset: str | None):
    """(model, objective, timestep shift, weights file or None) of a checkpoint, or a
    preset's random init trained for nothing (iddpm, no shift)."""
    import warnings

    from opensora_core.models import build_stdit2
    from opensora_core.models.checkpoint_io import read_objective

    if checkpoint is None:
        warnings.warn(f"sampling from a randomly initialised {preset}: the output is noise-like", stacklevel=3)
        return build_stdit2(preset), "iddpm", 1.0, None
    model = load_stdit2(checkpoint)
    objective, shift = read_objective(checkpoint)
    checkpoint_file = Path(checkpoint) / "model.safetensors" if Path(checkpoint).is_dir() else Path(checkpoint)
    return model, objective, shift, checkpoint_file


def _load_encoders(c, settings, checkpoint_file: Path | None, device):
    """The profile's VAE and text encoder for a model of config `c`, checked against
    what `checkpoint_file` was trained with before either loads."""
    from safetensors.torch import load_file

    from opensora_core.models.encoders import load_text_encoder, load_vae

    weights_path = None if checkpoint_file is None else checkpoint_file.with_name(TEXT_ENCODER_WEIGHTS)
    weights = load_file(str(weights_path)) if weights_path is not None and weights_path.is_file() else None
    word_weights = weights if settings.text_encoder.kind == "word-embedding" else None
    if checkpoint_file is not None:
        check_encoders(c, settings, checkpoint_file, word_weights)
    vae = load_vae(settings)
    if vae.latent_channels != c.in_channels:
        raise ValueError(f"the model reads {c.in_channels} latent channels (in_channels), profile "
                         f"'{settings.name}''s VAE {settings.vae.kind} gives {vae.latent_channels}")
    text_encoder = load_text_encoder(settings, c, device, word_weights)
    return vae, text_encoder
