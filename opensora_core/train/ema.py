"""Exponential moving average of the trainable weights, kept in fp32 (sharded like the
weights under FSDP2, since the shadow tensors are clones of the DTensor parameters)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = [(self.shadow[name], param.detach().float()) for name, param in model.named_parameters()
                 if name in self.shadow]
        if any(isinstance(t, DTensor) for pair in pairs for t in pair):
            for shadow, param in pairs:
                shadow.lerp_(param, 1.0 - self.decay)
        elif pairs:  # one multi-tensor op instead of one op per weight
            torch._foreach_lerp_([s for s, _ in pairs], [p for _, p in pairs], 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)
