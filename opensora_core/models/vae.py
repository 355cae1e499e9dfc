"""Video autoencoders: map pixel videos to the latent space STDiT-2 works in.

Open-Sora 1.1 uses Stable Diffusion's KL VAE (``sd-vae-ft-ema``) frame by frame:
4 latent channels, 8x spatial downsampling, no temporal compression, latents scaled
by 0.18215. :class:`SDKLAutoencoder` reproduces that from a local weights folder.

Without weights, :class:`DCTAutoencoder` is the embedded default. It has the same
latent geometry (4 channels, 8x downsampling) and is a fixed, exactly invertible
linear transform, so demo runs on a CPU produce videos that can actually be looked at.

Every autoencoder exposes :meth:`VideoAutoencoder.identity`, a stable string used
in the keys of content-addressed latent caches: two autoencoders with the same
identity produce the same latents for the same input.

Modules: ``autoencoder`` (the interface), ``dct_autoencoder``, ``sd_autoencoder``; this
one builds either by kind.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from opensora_core.models.autoencoder import VideoAutoencoder
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.sd_autoencoder import SDKLAutoencoder

__all__ = ["VAE_KINDS", "build_vae"]

VAE_KINDS: tuple[str, ...] = ("dct", "sd-kl")


def build_vae(kind: str = "dct", path: str | Path | None = None, **kwargs: Any) -> VideoAutoencoder:
    """Build a video autoencoder by kind.

    ``"dct"``: the weight-free default (kwargs go to :class:`DCTAutoencoder`).
    ``"sd-kl"``: SD's KL VAE from the local folder ``path``; without a path, a
    randomly initialised one (``config`` kwarg, default the SD architecture).
    """
    if kind == "dct":
        if path is not None:
            raise ValueError("the 'dct' autoencoder has no weights; do not pass a path")
        return DCTAutoencoder(**kwargs)
    if kind == "sd-kl":
        if path is None:
            warnings.warn(
                "build_vae('sd-kl') without a weights path: using a randomly initialised "
                "VAE, its latents and decoded videos are meaningless",
                stacklevel=2,
            )
            config = kwargs.pop("config", None)
            return SDKLAutoencoder.from_config(config, **kwargs)
        return SDKLAutoencoder.from_pretrained(path, **kwargs)
    raise ValueError(f"unknown VAE kind {kind!r}; valid kinds: {', '.join(VAE_KINDS)}")
