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
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from opensora_core.utils.dtypes import resolve_dtype

__all__ = [
    "VAE_KINDS",
    "DCTAutoencoder",
    "SDKLAutoencoder",
    "VideoAutoencoder",
    "build_vae",
    "state_dict_digest",
]

VAE_KINDS: tuple[str, ...] = ("dct", "sd-kl")


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


# --------------------------------------------------------------------------- DCT


# JPEG/BT.601 full-range YCbCr. With RGB in [-1, 1] every output channel also stays
# in [-1, 1] (the absolute row sums are 1), which is what makes the DC latents
# "block means in [-1, 1]" without further scaling.
_RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168735892, -0.331264108, 0.5],
        [0.5, -0.418687589, -0.081312411],
    ],
    dtype=torch.float64,
)


def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` with ``D[u, x]`` the u-th basis sampled at x."""
    x = torch.arange(n, dtype=torch.float64)
    u = torch.arange(n, dtype=torch.float64)[:, None]
    d = torch.cos(math.pi * (2 * x + 1) * u / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


class DCTAutoencoder(VideoAutoencoder):
    """A fixed block-DCT codec with the latent geometry of the SD VAE (4 ch, 8x down).

    Encoding, per frame: RGB -> full-range YCbCr (BT.601), split into 8x8 blocks,
    keep four orthonormal 2-D DCT-II coefficients per block: the DC terms of Y, Cb
    and Cr plus one luma AC term ``Y(u, v)`` (``u`` vertical, ``v`` horizontal
    frequency). Before ``latent_scale``, DC channels are the block means and the AC
    channel is divided by the L1 norm of its basis function, so ``[-1, 1]`` input
    lands in ``[-1, 1]``.

    Decoding:

    * ``smooth=False``: the exact pseudo-inverse (coefficients placed back,
      inverse DCT, YCbCr -> RGB). Gives flat 8x8 chroma blocks.
    * ``smooth=True`` (default): bilinearly upsampled DC planes, then corrected by
      the pseudo-inverse of the residual ``z - encode(smooth)``. Because encode is
      linear and ``encode(pinv(r)) == r``, the result still satisfies
      ``encode(decode(z)) == z`` exactly (before clamping), with fewer block edges.

    Choices measured (PSNR over RGB in [-1, 1], peak-to-peak 2) on the first 8
    frames of ``../shared/data/videos``, trying all 63 luma AC coefficients:

    ==============================  ========  ========  ========  =======  =======
    clip                            Y(0,1)    Y(1,0)    Y(1,1)    DC only  grey*
    ==============================  ========  ========  ========  =======  =======
    Megamind 256x256 crop, flat     26.45     26.11     24.97     24.72    17.69
    Megamind 256x256 crop, smooth   27.83     27.89     27.02     25.49
    Megamind full 720x528, flat     30.87     30.03     29.07     28.86    21.19
    Megamind full 720x528, smooth   **32.44** 32.02     31.33     29.61
    tree full 320x240, smooth       22.70     22.40     22.32     21.88    20.50
    ==============================  ========  ========  ========  =======  =======

    (* 8x8 block means of luma only.) Y(0,1), the horizontal luma gradient, is
    the best or within 0.06 dB of the best in every row but a tree.avi crop
    (Y(1,0) +0.5 dB there) and best on full frames, so it is the fixed 4th
    coefficient. The smooth decode gains 0.2-1.6 dB and is the default; bicubic
    instead of bilinear upsampling would add another ~0.2 dB but can overshoot,
    which would make the final clamp (and so ``encode(decode(z)) != z``) more frequent.

    Before scaling, latent standard deviations over 40 frames of Megamind were
    Y 0.37, Cb 0.11, Cr 0.08, Y(0,1) 0.06 (tree.avi: 0.38, 0.07, 0.03, 0.07). As SD's
    0.18215 does for its VAE, fixed per-channel factors ``latent_scale`` bring natural
    video to roughly unit scale, so that the diffusion noise schedule treats every
    channel alike; saturated colours reach about +-4 in the chroma channels.
    """

    block = 8
    luma_ac: tuple[int, int] = (0, 1)
    latent_scale: tuple[float, float, float, float] = (2.5, 8.0, 8.0, 12.0)

    def __init__(self, smooth: bool = True) -> None:
        super().__init__()
        self.smooth = smooth
        self.latent_channels = 4
        self.spatial_downsample = self.block
        n = self.block
        dct = _dct_matrix(n)
        u, v = self.luma_ac
        ac_basis = torch.outer(dct[u], dct[v])  # [8, 8], unit L2 norm
        ac_scale = ac_basis.abs().sum()  # L1 norm: the max |coef| for input in [-1, 1]
        # analysis[k] maps an 8x8 block of channel k's plane to latent k;
        # synthesis[k] is its pseudo-inverse (analysis[k] . synthesis[k] == 1).
        analysis = torch.stack(
            [torch.full((n, n), 1.0 / (n * n), dtype=torch.float64), ac_basis / ac_scale]
        )
        synthesis = torch.stack([torch.ones(n, n, dtype=torch.float64), ac_basis * ac_scale])
        ycbcr = _RGB_TO_YCBCR
        # Persistent=False: these are constants of the codec, not weights to save.
        self.register_buffer("rgb_to_ycbcr", ycbcr.float(), persistent=False)
        self.register_buffer("ycbcr_to_rgb", torch.linalg.inv(ycbcr).float(), persistent=False)
        self.register_buffer("analysis", analysis.float(), persistent=False)
        self.register_buffer("synthesis", synthesis.float(), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def identity(self) -> str:
        u, v = self.luma_ac
        decode = "smooth" if self.smooth else "pinv"
        # Only encode determines cached latents, but naming the decode costs nothing
        # and keeps sample caches honest too.
        scale = ",".join(f"{f:g}" for f in self.latent_scale)
        return (
            f"dct-v2(block={self.block},ycbcr=bt601,coefs=Y00+Cb00+Cr00+Y{u}{v},"
            f"scale={scale},decode={decode})"
        )

    # -- helpers on [N, C, H, W] planes ---------------------------------------

    def _project(self, ycc: torch.Tensor) -> torch.Tensor:
        """YCbCr planes [N, 3, H, W] -> latents [N, 4, H/8, W/8]."""
        n, _, h, w = ycc.shape
        b = self.block
        blocks = ycc.reshape(n, 3, h // b, b, w // b, b)
        a = self.analysis.to(ycc.dtype)
        dc = torch.einsum("nchiwj,ij->nchw", blocks, a[0])
        ac = torch.einsum("nhiwj,ij->nhw", blocks[:, 0], a[1])
        return torch.cat([dc, ac[:, None]], dim=1)

    def _place(self, z: torch.Tensor) -> torch.Tensor:
        """Pseudo-inverse of :meth:`_project`: latents [N, 4, h, w] -> YCbCr [N, 3, 8h, 8w]."""
        n, _, h, w = z.shape
        b = self.block
        s = self.synthesis.to(z.dtype)
        blocks = torch.einsum("nchw,ij->nchiwj", z[:, :3], s[0])
        blocks = blocks.clone()
        blocks[:, 0] += torch.einsum("nhw,ij->nhiwj", z[:, 3], s[1])
        return blocks.reshape(n, 3, h * b, w * b)

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.latent_scale, dtype=like.dtype, device=like.device)[:, None, None]

    def _color(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        return torch.einsum("dc,nchw->ndhw", matrix.to(x.dtype), x)

    # -- public API -----------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_video(x)
        bsz, _, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(bsz * t, 3, h, w)
        z = self._project(self._color(frames, self.rgb_to_ycbcr)) * self._scale(frames)
        return z.reshape(bsz, t, 4, h // self.block, w // self.block).permute(0, 2, 1, 3, 4)

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latents -> video. ``clamp=False`` skips the final clamp to ``[-1, 1]``
        (the only non-linear step, so then ``encode(decode(z)) == z`` for any z)."""
        self._check_latent(z)
        bsz, _, t, h, w = z.shape
        planes = z.permute(0, 2, 1, 3, 4).reshape(bsz * t, 4, h, w)
        planes = planes / self._scale(planes)
        if self.smooth:
            base = F.interpolate(
                planes[:, :3], scale_factor=self.block, mode="bilinear", align_corners=False
            )
            ycc = base + self._place(planes - self._project(base))
        else:
            ycc = self._place(planes)
        rgb = self._color(ycc, self.ycbcr_to_rgb)
        if clamp:
            rgb = rgb.clamp(-1.0, 1.0)
        hh, ww = h * self.block, w * self.block
        return rgb.reshape(bsz, t, 3, hh, ww).permute(0, 2, 1, 3, 4)


# ------------------------------------------------------------------------- SD KL


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
        # Each level but the last halves the resolution: 8x for the 4-level SD VAE.
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
            # Hashing ~84M parameters takes a moment; weights are frozen, so once is enough.
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


# ----------------------------------------------------------------------- factory


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
