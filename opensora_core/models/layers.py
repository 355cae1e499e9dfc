"""Building blocks of STDiT-2: attention layers, embedders, the final layer.

Module and parameter names follow the published Open-Sora 1.1 checkpoint, so that its
state dict loads with `strict=True`; see `../shared/reference/stdit2_xl2_state_dict.tsv`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from opensora_core.models.attention import AttentionBackend, attention
from opensora_core.models.rope import apply_rotary

# 1. Elementwise helpers


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation as in PixArt-alpha: `x * (1 + scale) + shift`."""
    return x * (1 + scale) + shift


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def sinusoidal_embedding(values: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """`[N]` scalars -> `[N, dim]` as `cat(cos, sin)` (the DiT/PixArt order), in fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    )
    args = values.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def spatial_sincos_pos_embed(
    dim: int,
    grid_h: int,
    grid_w: int,
    scale: float,
    base_size: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Parameter-free 2-D sin-cos position table `[grid_h * grid_w, dim]` (row-major).

    The first half of the channels encodes the column index, the second half the row,
    each as `cat(sin, cos)`. Grid coordinates are divided by `scale` and stretched to
    `base_size`, so that different resolutions share one coordinate range.
    Angles and sinusoids are fp32 but the inverse frequencies are first rounded to
    `dtype`, as the published model (which keeps them in a buffer cast with the
    model) computed them in bf16.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim % 4 == 0, got {dim}")
    half = dim // 2
    inv_freq = 1.0 / 10000 ** (torch.arange(0, half, 2, dtype=torch.float32, device=device) / half)
    inv_freq = inv_freq.to(dtype).float()
    rows = torch.arange(grid_h, dtype=torch.float32, device=device) / scale * (base_size / grid_h)
    cols = torch.arange(grid_w, dtype=torch.float32, device=device) / scale * (base_size / grid_w)

    def encode_1d(positions: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(positions, inv_freq)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    col_emb = encode_1d(cols)[None, :, :].expand(grid_h, grid_w, half)
    row_emb = encode_1d(rows)[:, None, :].expand(grid_h, grid_w, half)
    return torch.cat([col_emb, row_emb], dim=-1).reshape(grid_h * grid_w, dim).to(dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a weight only, computed in fp32 (QK-norm over head_dim)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# 2. Attention layers


class SelfAttention(nn.Module):
    """Multi-head self-attention with one qkv projection and optional QK-norm / RoPE.

    `rope_before_norm=True` reproduces the published weights' order (rotate q and k,
    then RMS-normalise them).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = True,
        rope_before_norm: bool = True,
        backend: AttentionBackend = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.rope_before_norm = rope_before_norm
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, D]
        if rope is not None and self.rope_before_norm:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None and not self.rope_before_norm:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out = attention(q, k, v, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class CrossAttention(nn.Module):
    """Attention from video tokens to caption tokens; each sample sees only its own
    real (unpadded) tokens."""

    def __init__(self, dim: int, num_heads: int, backend: AttentionBackend = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, dim = x.shape
        q = self.q_linear(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_linear(cond).view(batch, cond.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, kv_mask=cond_mask, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    """Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# 3. Embedders


class PatchEmbed3D(nn.Module):
    """`[B, C, T, H, W]` -> `[B, T'*H'*W', hidden]` by a strided 3-D convolution.

    Inputs whose size is not a multiple of the patch are zero-padded at the end of
    each axis; the model crops the output back.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        _, _, t, h, w = x.shape
        pad = (0, (-w) % pw, 0, (-h) % ph, 0, (-t) % pt)
        if any(pad):
            x = F.pad(x, pad)
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Scalar (diffusion timestep) -> 256-d sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_embedding(t, self.frequency_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class SizeEmbedder(TimestepEmbedder):
    """Micro-condition embedder: each scalar of `[B, D]` is embedded separately and the
    D embeddings are concatenated to `[B, D * hidden]`."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(values.reshape(-1)).reshape(values.shape[0], -1)


class CaptionEmbedder(nn.Module):
    """Projects text-encoder tokens to the hidden size; in training, replaces whole
    captions by the learned null caption `y_embedding` with probability
    `class_dropout_prob` (classifier-free guidance)."""

    def __init__(self, caption_channels: int, hidden_size: int, class_dropout_prob: float, token_num: int):
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, caption_channels) / caption_channels**0.5)
        self.class_dropout_prob = class_dropout_prob

    def forward(self, caption: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.class_dropout_prob > 0) or force_drop_ids is not None:
            if force_drop_ids is None:
                drop = torch.rand(caption.shape[0], device=caption.device) < self.class_dropout_prob
            else:
                drop = force_drop_ids.to(caption.device).bool()
            null = self.y_embedding.to(caption.dtype)[None, None]
            caption = torch.where(drop[:, None, None, None], null, caption)
        return self.y_proj(caption)


# 4. Output


class FinalLayer(nn.Module):
    """LayerNorm -> modulation by its own (2, C) table plus the raw timestep embedding
    -> Linear to patch pixels."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, t0: torch.Tensor | None, x_mask: torch.Tensor | None) -> torch.Tensor:
        """x `[B, T, S, C]`; t, t0 `[B, C]`; x_mask `[B, T]` (True: use t, False: use t0)."""
        shift, scale = (self.scale_shift_table[None] + t[:, None]).unbind(1)  # [B, C] each
        out = modulate(self.norm_final(x), shift[:, None, None], scale[:, None, None])
        if x_mask is not None:
            # Keep: the published model modulates conditioning frames a second time,
            # normalising the already t-modulated tokens and modulating them with t0.
            shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).unbind(1)
            out0 = modulate(self.norm_final(out), shift0[:, None, None], scale0[:, None, None])
            out = torch.where(x_mask[:, :, None, None], out, out0)
        return self.linear(out)


def select_per_frame(mods: torch.Tensor, mods_t0: torch.Tensor | None, x_mask: torch.Tensor | None) -> torch.Tensor:
    """Per-frame modulation tensor `[B, T or 1, K, C]` from `[B, K, C]` tables.

    Frames with `x_mask` True (being generated) take the timestep-t table, frames with
    False (conditioning frames) take the timestep-0 table.
    """
    if x_mask is None:
        return mods[:, None]
    return torch.where(x_mask[:, :, None, None], mods[:, None], mods_t0[:, None])
