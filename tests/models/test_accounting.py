from __future__ import annotations

import torch

from opensora_core.models import STDiT2Config
from opensora_core.models.accounting import SavedActivationCounter, estimate_step_cost

from .model_fixtures import get_init_dict


def test_cost_of_a_step_follows_the_model():
    config = STDiT2Config(**get_init_dict())
    plain = estimate_step_cost(config, num_frames=8, height=64, width=64, dtype=torch.float32)
    with torch.device("meta"):
        params = sum(p.numel() for p in __import__("opensora_core").models.STDiT2(config).parameters())
    assert plain.parameters == params
    assert plain.tokens_per_sample == 8 * 4 * 4
    assert 2.5 < plain.train_flops / plain.forward_flops < 3.5  # backward ~ 2x forward

    ckpt = estimate_step_cost(config, num_frames=8, height=64, width=64, dtype=torch.float32,
                              gradient_checkpointing=True)
    assert ckpt.forward_flops == plain.forward_flops
    assert ckpt.train_flops > plain.train_flops  # the forward runs again in backward
    assert ckpt.activation_bytes < 0.7 * plain.activation_bytes

    longer = estimate_step_cost(config, num_frames=32, height=64, width=64, dtype=torch.float32)
    # Linear in frames apart from the small T^2 temporal attention term.
    assert 3.9 < longer.forward_flops / plain.forward_flops < 4.5
    bf16 = estimate_step_cost(config, num_frames=8, height=64, width=64, dtype=torch.bfloat16)
    # Not half: QK-norm and RoPE keep fp32 intermediates for precision.
    assert 0.4 < bf16.activation_bytes / plain.activation_bytes < 0.8


def test_saved_activation_counter_counts_each_storage_once():
    weight = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(4, 16, requires_grad=True)
    with SavedActivationCounter() as saved:
        h = x @ weight
        (h * h).sum()  # h saved twice by one op, once as a storage
    # x and h are saved (weight too, counted here as no module was excluded).
    assert saved.bytes == (4 * 16 + 16 * 16 + 4 * 16) * 4
