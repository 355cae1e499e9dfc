from __future__ import annotations

import pytest
import torch

from opensora_core.diffusion.iddpm import GaussianDiffusion
from opensora_core.diffusion.masks import MaskGenerator, make_mask
from opensora_core.diffusion.speedit import SpeeDiTTimestepSampler, build_timestep_sampler

PUBLISHED_RATIOS = {"no_mask": 0.75, "quarter_random": 0.025, "quarter_head": 0.025, "quarter_tail": 0.025,
                    "quarter_head_tail": 0.05, "image_random": 0.025, "image_head": 0.025, "image_tail": 0.025,
                    "image_head_tail": 0.05}


def test_speedit_favours_steps_where_noise_still_changes():
    sampler = SpeeDiTTimestepSampler(GaussianDiffusion())
    p = sampler.probabilities
    assert torch.isclose(p.sum(), torch.tensor(1.0))
    assert p[:100].mean() > 3 * p[-100:].mean()
    assert 0 < sampler.meaningful_steps < 1000
    weights = sampler.loss_weights
    assert (weights[1:] >= weights[:-1]).all() and weights[0] < 0.01 and weights[-1] > 0.99  # 1/(1+SNR)

    first = sampler.sample(9, torch.Generator().manual_seed(3))
    again = sampler.sample(9, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == (9,)
    assert ((first >= 0) & (first < 1000)).all()
    drawn, mirrored = first[:5], first[5:]
    m = sampler.meaningful_steps
    expected = torch.where(drawn < m, m - drawn, drawn - m)[:4]
    assert torch.equal(mirrored, expected)


def test_training_scheduler_names():
    assert build_timestep_sampler("iddpm", GaussianDiffusion()).weights(torch.tensor([3])) is None
    t = build_timestep_sampler("rflow").sample(4000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1000
    assert abs(t.median().item() - 500) < 25 and ((t > 250) & (t < 750)).float().mean() > 0.6  # logit-normal
    with pytest.raises(ValueError, match="iddpm-speed' or 'rflow'"):
        build_timestep_sampler("ddpm", GaussianDiffusion())


def test_mask_generator_validates_ratios():
    with pytest.raises(ValueError, match="unknown mask 'quarter_middle'.*no_mask"):
        MaskGenerator({"no_mask": 0.5, "quarter_middle": 0.5})
    with pytest.raises(ValueError, match="sum to 0.9"):
        MaskGenerator({"no_mask": 0.8, "image_head": 0.1})


def test_mask_generator_is_seeded_and_follows_the_ratios():
    generator = MaskGenerator(PUBLISHED_RATIOS)
    a = generator.get_masks(64, 16, torch.Generator().manual_seed(0))
    b = generator.get_masks(64, 16, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (64, 16) and a.dtype == torch.bool
    kinds = generator.kinds(4000, torch.Generator().manual_seed(1))
    assert abs(kinds.count("no_mask") / 4000 - 0.75) < 0.03
    assert abs(kinds.count("image_head_tail") / 4000 - 0.05) < 0.015
    assert "quarter_random" in kinds


@pytest.mark.parametrize("seed", range(5))
def test_mask_kinds_give_the_frames_they_name(seed):
    g = torch.Generator().manual_seed(seed)
    frames = 16
    head = make_mask("quarter_head", frames, g)
    given = int((~head).sum())
    assert 1 <= given <= 4 and not head[:given].any() and head[given:].all()
    tail = make_mask("quarter_tail", frames, g)
    given = int((~tail).sum())
    assert 1 <= given <= 4 and not tail[frames - given :].any() and tail[: frames - given].all()
    both = make_mask("quarter_head_tail", frames, g)
    assert not both[0] and not both[-1] and both.sum() >= frames - 8
    random = make_mask("quarter_random", frames, g)
    assert 1 <= int((~random).sum()) <= 4
    assert (~make_mask("image_random", frames, g)).sum() == 1
    image_both = make_mask("image_head_tail", frames, g)
    assert not image_both[0] and not image_both[-1] and image_both[1:-1].all()
    assert make_mask("no_mask", frames, g).all()


def test_half_masks_give_up_to_half_the_frames_at_one_end():
    g = torch.Generator().manual_seed(0)
    heads = [int((~make_mask("half_head", 8, g)).sum()) for _ in range(200)]
    assert set(heads) == {1, 2, 3, 4}  # a quarter would stop at 2
    head = make_mask("half_head", 8, g)
    given = int((~head).sum())
    assert not head[:given].any() and head[given:].all()
    tail = make_mask("half_tail", 8, g)
    given = int((~tail).sum())
    assert not tail[8 - given :].any() and tail[: 8 - given].all()


def test_masks_never_leave_nothing_to_generate():
    assert make_mask("image_head", 1).all()  # images: nothing to condition on
    assert make_mask("image_head_tail", 2).all()
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("half", 8)
