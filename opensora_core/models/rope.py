"""Rotary position embedding (RoPE) over the temporal axis of STDiT-2.

Open-Sora 1.1 rotates the full head dimension with interleaved pairs
((x0, x1), (x2, x3), ...), theta 10000, positions 0..T-1. The inverse frequencies are
stored in the published checkpoint as a (non-trained) parameter named `rope.freqs`,
so they live here as an `nn.Parameter` with `requires_grad=False`.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {dim}")
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.freqs = nn.Parameter(inv_freq, requires_grad=False)

    def angles(self, seq_len: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables `[seq_len, dim]`, each frequency repeated for its pair.

        Computed in the dtype the frequencies are kept in (the model's): the published
        bf16 model rotated with bf16 angles, and reproducing its numbers means doing the same.
        """
        freqs = self.freqs.detach().to(device)
        positions = torch.arange(seq_len, device=freqs.device, dtype=freqs.dtype)
        angle = (positions[:, None] * freqs[None]).repeat_interleave(2, dim=-1)
        return angle.cos(), angle.sin()


def rotate_interleaved_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x [..., L, D]` by position."""
    if x.dtype == cos.dtype == sin.dtype == torch.float32 and not torch.compiler.is_compiling():
        # Each pair (x0, x1) as x0 + i*x1 times cos + i*sin: the same rotation in one
        # complex multiply instead of a gather, a negation and two products. Compiled
        # code takes the real form, which Inductor fuses (it cannot generate complex ops).
        turn = torch.complex(cos[..., ::2], sin[..., ::2])
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
        return torch.view_as_real(pairs * turn).flatten(-2)
    return (x * cos + rotate_interleaved_pairs(x) * sin).to(x.dtype)
