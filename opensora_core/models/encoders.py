"""The encoders around STDiT-2, assembled from a profile in one place: the profile's `vae`
and `text_encoder` (kind and local path), the text encoder shaped for the model's caption
width and length (`caption_channels`, `model_max_length`), and, for a jointly trained
word-embedding encoder, the state the trainer exported beside the model
(`TEXT_ENCODER_WEIGHTS`). Training, the latent caches, sampling, the benchmarks and the
demo all call these."""

from __future__ import annotations

from pathlib import Path

import torch

from opensora_core.config import ProfileConfig, SamplingProfile, load_profile
from opensora_core.models import STDiT2Config, load_preset
from opensora_core.models.autoencoder import VideoAutoencoder
from opensora_core.models.text_encoder import (
    T5TextEncoder,
    WordEmbeddingTextEncoder,
    build_text_encoder_for_model,
)
from opensora_core.models.vae import build_vae

__all__ = ["TEXT_ENCODER_WEIGHTS", "load_encoders", "load_text_encoder", "load_vae"]

# The jointly trained text encoder's state, beside an export's model.safetensors.
TEXT_ENCODER_WEIGHTS = "text_encoder.safetensors"

Profile = ProfileConfig | SamplingProfile | str | Path  # a profile, or its name or file
TextEncoder = WordEmbeddingTextEncoder | T5TextEncoder


def _profile(profile: Profile) -> ProfileConfig | SamplingProfile:
    return load_profile(profile) if isinstance(profile, str | Path) else profile


def _model_config(preset_or_config: STDiT2Config | str | Path) -> STDiT2Config:
    return preset_or_config if isinstance(preset_or_config, STDiT2Config) else load_preset(preset_or_config)


def load_vae(profile: Profile, device: str | torch.device = "cpu") -> VideoAutoencoder:
    """The profile's VAE (`vae.kind` from `vae.path`), on `device`."""
    settings = _profile(profile)
    return build_vae(settings.vae.kind, settings.vae.path).to(device)


def load_text_encoder(profile: Profile, preset_or_config: STDiT2Config | str | Path,
                      device: str | torch.device = "cpu",
                      state: dict[str, torch.Tensor] | None = None) -> TextEncoder:
    """The profile's text encoder for a model of this preset (or config): its caption
    width and length, with a jointly trained encoder's `state` when given, on `device`."""
    settings, config = _profile(profile), _model_config(preset_or_config)
    return build_text_encoder_for_model(settings.text_encoder.kind, settings.text_encoder.path,
                                        config.caption_channels, config.model_max_length, state, device)


def load_encoders(profile: Profile, preset_or_config: STDiT2Config | str | Path,
                  device: str | torch.device = "cpu",
                  text_encoder_state: dict[str, torch.Tensor] | None = None) -> tuple[TextEncoder, VideoAutoencoder]:
    """(text encoder, VAE) of the profile for a model of this preset (or config), both on
    `device`; see `load_text_encoder` and `load_vae`."""
    settings = _profile(profile)
    return load_text_encoder(settings, preset_or_config, device, text_encoder_state), load_vae(settings, device)
