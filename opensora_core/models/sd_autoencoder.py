"""Stable Diffusion's KL VAE (``sd-vae-ft-ema``) applied frame by frame, as Open-Sora 1.1
does, from a local weights folder or randomly initialised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from opensora_core.models.autoencoder import VideoAutoencoder, state_dict_digest
from opensora_core.utils.dtypes import resolve_dtype

SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 256,
}

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class SDKLAutoencoder(VideoAutoencoder):
    """Stable Diffusion's KL VAE applied frame by frame, as Open-Sora 1.1 does.

    Frames are encoded/decoded in micro-batches of ``micro_batch_size`` to bound
    activation memory on long clips; the result does not depend on that size.
    Encode returns the posterior mean times ``scaling_factor`` unless
    ``sample_posterior`` is set. The wrapped model is frozen.
    """

    def __init__(
        self,
        model: Any,
        micro_batch_size: int = 4,
        scaling_factor: float = 0.18215,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        source: str = "random-init",
    ) -> None:
        super().__init__()
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()
        self.micro_batch_size = micro_batch_size
        self.scaling_factor = scaling_factor
        self.sample_posterior = sample_posterior
        self.generator = generator
        self.source = source
        cfg = model.config
        self.latent_channels = int(cfg.latent_channels)
        # Each level but the last halves the resolution.
        self.spatial_downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self._digest: str | None = None
        self.eval()

    def train(self, mode: bool = True) -> SDKLAutoencoder:
        # Frozen: a parent model's .train() must not switch the VAE out of eval.
        return super().train(False)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> SDKLAutoencoder:
        """Load from a local folder in the ``stabilityai/sd-vae-ft-ema`` layout
        (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``).
        A full SD pipeline folder with a ``vae/`` subfolder is accepted too."""
        from diffusers import AutoencoderKL

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"SD VAE folder {str(root)!r} does not exist; expected a local folder with "
                f"config.json and one of {', '.join(_WEIGHT_FILES)} (sd-vae-ft-ema layout)"
            )
        if not (root / "config.json").is_file() and (root / "vae" / "config.json").is_file():
            root = root / "vae"
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"{str(root / 'config.json')!r} not found (SD VAE config)")
        if not any((root / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(
                f"no SD VAE weights in {str(root)!r}; expected one of {', '.join(_WEIGHT_FILES)}"
            )
        model = AutoencoderKL.from_pretrained(
            str(root), local_files_only=True, torch_dtype=resolve_dtype(dtype)
        )
        if device is not None:
            model = model.to(device)
        return cls(model, source=str(root), **kwargs)

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | None = None, seed: int = 0, **kwargs: Any
    ) -> SDKLAutoencoder:
        """Random initialisation (default: the SD VAE architecture). Outputs are
        meaningless; useful for tests, shapes and throughput benchmarks."""
        from diffusers import AutoencoderKL

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoencoderKL(**(config if config is not None else SD_VAE_CONFIG))
        return cls(model, **kwargs)

    def identity(self) -> str:
        if self._digest is None:
            # Hashing every weight is slow and they are frozen: once is enough.
            self._digest = state_dict_digest(self.model)
        posterior = "sample" if self.sample_posterior else "mean"
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return (
            f"sd-kl(scale={self.scaling_factor},posterior={posterior},dtype={dtype},"
            f"down={self.spatial_downsample},weights={self._digest})"
        )

    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_video(x)
        bsz, _, t, h, w = x.shape
        p = self._param()
        frames = x.permute(0, 2, 1, 3, 4).reshape(bsz * t, 3, h, w).to(p.device, p.dtype)
        out = []
        for chunk in frames.split(self.micro_batch_size):
            dist = self.model.encode(chunk).latent_dist
            latent = dist.sample(generator=self.generator) if self.sample_posterior else dist.mean
            out.append(latent * self.scaling_factor)
        z = torch.cat(out).to(x.dtype)
        d = self.spatial_downsample
        return z.reshape(bsz, t, self.latent_channels, h // d, w // d).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check_latent(z)
        bsz, c, t, h, w = z.shape
        p = self._param()
        planes = z.permute(0, 2, 1, 3, 4).reshape(bsz * t, c, h, w).to(p.device, p.dtype)
        out = [
            self.model.decode(chunk / self.scaling_factor).sample
            for chunk in planes.split(self.micro_batch_size)
        ]
        x = torch.cat(out).clamp(-1.0, 1.0).to(z.dtype)
        hh, ww = x.shape[-2:]
        return x.reshape(bsz, t, 3, hh, ww).permute(0, 2, 1, 3, 4)
