"""Checking and shaping what `STDiT2.forward` is given: the caption and its mask, and
micro-conditions as one value per sample in the model's dtype."""

from __future__ import annotations

from typing import Any

import torch


def first_value(value: Any, default: float, dtype: torch.dtype) -> float:
    """The first value of a condition, rounded to `dtype`, read without a device op
    when it is a Python number (so the meta-device cost model works)."""
    if isinstance(value, torch.Tensor):
        return float(value.reshape(-1)[0].to(dtype))
    return float(torch.tensor(float(default if value is None else value)).to(dtype))


def micro_condition(value: Any, default: Any, dtype: torch.dtype, batch: int, device: torch.device) -> torch.Tensor:
    """A micro-condition (scalar, `[n]` or `[B]`) as `[B]`, rounded to the model dtype
    and tiled when n divides B (Open-Sora doubles the batch for classifier-free
    guidance but not the conditions)."""
    value = default if value is None else value
    values = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1).to(dtype).float()
    if batch % values.numel():
        raise ValueError(f"a condition has {values.numel()} values for a batch of {batch}")
    return values.repeat(batch // values.numel())


def caption_4d(y: torch.Tensor, batch: int, caption_channels: int) -> torch.Tensor:
    if y.ndim == 3:
        y = y.unsqueeze(1)
    if y.ndim != 4 or y.shape[0] != batch or y.shape[1] != 1 or y.shape[3] != caption_channels:
        raise ValueError(
            f"y must be [B={batch}, 1, N, caption_channels={caption_channels}], got {tuple(y.shape)}"
        )
    return y


def caption_mask(mask: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    batch, tokens = y.shape[0], y.shape[2]
    mask = mask.reshape(mask.shape[0], -1).to(device=y.device)
    if mask.shape[1] != tokens or batch % mask.shape[0]:
        raise ValueError(f"mask must be [B={batch}, N={tokens}], got {tuple(mask.shape)}")
    mask = mask.bool().repeat(batch // mask.shape[0], 1)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every caption needs at least one real token (a mask row is all zeros)")
    return mask
