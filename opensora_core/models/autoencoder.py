"""The interface every video autoencoder has, and the weight digest that names one."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_dict_digest(module: nn.Module, length: int = 16) -> str:
    """Hash every parameter and buffer (name, dtype, shape and bytes) of ``module``.

    Names are visited in sorted order so the digest does not depend on module
    construction order, only on what the weights are.
    """
    hasher = hashlib.blake2b(digest_size=32)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        hasher.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        # Viewing as bytes works for every dtype, bfloat16 included (numpy lacks it).
        hasher.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:length]


class VideoAutoencoder(nn.Module):
    """Interface shared by all video autoencoders.

    ``encode`` takes videos ``[B, 3, T, H, W]`` in ``[-1, 1]`` with ``H`` and ``W``
    multiples of :attr:`spatial_downsample` and returns latents
    ``[B, latent_channels, T, H / d, W / d]``; ``decode`` inverts it and clamps
    to ``[-1, 1]``.
    """

    latent_channels: int = 4
    spatial_downsample: int = 8

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def identity(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent shape ``(C, T, H/d, W/d)`` for a video of the given size."""
        d = self.spatial_downsample
        if height % d or width % d:
            raise ValueError(f"height and width must be multiples of {d}, got {height}x{width}")
        return (self.latent_channels, num_frames, height // d, width // d)

    def _check_video(self, x: torch.Tensor) -> None:
        d = self.spatial_downsample
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected a video [B, 3, T, H, W], got shape {tuple(x.shape)}")
        if x.shape[-2] % d or x.shape[-1] % d:
            raise ValueError(
                f"video shape {tuple(x.shape)}: H and W must be multiples of {d} "
                f"(the spatial downsampling factor of {type(self).__name__})"
            )

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents [B, {self.latent_channels}, T, h, w], got shape {tuple(z.shape)}"
            )
