"""The EMA of the weights: shadow <- decay * shadow + (1 - decay) * weight, for every weight."""

import torch
from torch import nn

from opensora_core.train.ema import EMA


def test_update_moves_every_shadow_toward_its_weight_by_one_minus_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, param in model.named_parameters():
        torch.testing.assert_close(ema.state_dict()[name], 0.9 * start[name] + 0.1 * param.detach())
    target = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    ema.copy_to(target)
    assert all(torch.equal(ema.state_dict()[n], p) for n, p in target.named_parameters())
