"""The weight-free block-DCT codec: the embedded default autoencoder, with the latent
geometry of the SD VAE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from opensora_core.models.autoencoder import VideoAutoencoder

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
