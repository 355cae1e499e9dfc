"""Tiny STDiT-2 configs and inputs shared by the model tests (diffusers' get_init_dict /
dummy_inputs pattern)."""

from __future__ import annotations

import torch

from opensora_core.models import STDiT2, STDiT2Config


def get_init_dict(**overrides) -> dict:
    init = {
        "hidden_size": 48, "depth": 2, "num_heads": 4, "caption_channels": 16, "model_max_length": 8, "input_sq_size": 64
    }
    init.update(overrides)
    return init


def build_random_model(seed: int = 0, **overrides) -> STDiT2:
    """A tiny model with every weight random: the published init zeroes output
    projections, which would make many comparisons pass trivially."""
    generator = torch.Generator().manual_seed(seed)
    model = STDiT2(STDiT2Config(**get_init_dict(**overrides)))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def dummy_inputs(batch: int = 2, frames: int = 4, height: int = 6, width: int = 8, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    config = STDiT2Config(**get_init_dict())
    return {
        "x": torch.randn(batch, config.in_channels, frames, height, width, generator=generator),
        "timestep": torch.tensor([17.0, 640.0][:batch] + [300.0] * max(0, batch - 2)),
        "y": torch.randn(batch, 1, config.model_max_length, config.caption_channels, generator=generator),
        "mask": torch.ones(batch, config.model_max_length, dtype=torch.long),
    }
