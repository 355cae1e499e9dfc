from __future__ import annotations

import pytest
import torch

from opensora_core.diffusion.rflow import RectifiedFlow, RFlowSampler, shift_time
from opensora_core.diffusion.samplers import build_sampler, denoise


def _velocity_oracle(x0: torch.Tensor):
    """A "model" that knows the clean latent: the velocity x0 - noise of the straight path through z."""

    def model_fn(z, t, x_mask):
        s = (t.float() / 1000).view(-1, 1, 1, 1, 1)
        noise = (z - (1 - s) * x0) / s
        velocity = x0 - noise
        return torch.cat([velocity, torch.zeros_like(velocity)], dim=1)

    return model_fn


@pytest.mark.parametrize(("name", "steps", "shift"), [("rflow", 30, 1.0), ("rflow", 5, 1.0), ("dpm-solver", 20, 1.0),
                                                    ("auto", 10, 1.0), ("rflow", 10, 3.0), ("dpm-solver", 10, 3.0)])
def test_flow_samplers_recover_the_clean_latent_from_an_exact_velocity_oracle(name, steps, shift):
    x0 = torch.randn(2, 4, 3, 4, 4)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sampler = build_sampler(name, steps, "rflow", shift)
    plain = build_sampler(name, steps, "rflow").timesteps
    if shift > 1:  # shifted toward noise: every step at least as noisy, the middle ones more
        assert all(a >= b - 1e-3 for a, b in zip(sampler.timesteps, plain)) and sampler.timesteps[steps // 2] > plain[steps // 2] + 50
    out = denoise(_velocity_oracle(x0), sampler, z, progress=False)
    assert (out - x0).abs().max() < 1e-3


def test_a_flow_oracle_with_the_wrong_sign_does_not_recover():
    x0 = torch.randn(1, 4, 2, 4, 4)
    oracle = _velocity_oracle(x0)
    out = denoise(lambda z, t, m: -oracle(z, t, m), build_sampler("rflow", 20, "rflow"), torch.randn_like(x0),
                  progress=False)
    assert (out - x0).abs().max() > 0.5


def test_conditioning_frames_are_kept_and_edited_frames_renoised_on_the_flow_path():
    x0 = torch.randn(1, 4, 4, 4, 4)
    reference = torch.randn_like(x0)
    frame_mask = torch.tensor([[0.0, 1.0, 1.0, 0.5]])
    out = denoise(_velocity_oracle(x0), build_sampler("rflow", 10, "rflow"), torch.randn_like(x0), frame_mask,
                  reference, torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(out[:, :, 0], reference[:, :, 0])
    assert (out[:, :, 1:] - x0[:, :, 1:]).abs().max() < 1e-3  # the oracle pulls renoised frames to x0


def test_velocity_loss_is_zero_for_the_oracle_and_ignores_conditioning_frames():
    flow = RectifiedFlow()
    x0, noise = torch.randn(3, 4, 4, 2, 2), torch.randn(3, 4, 4, 2, 2)
    t = torch.tensor([100.0, 500.0, 900.0])
    exact = flow.training_losses(lambda x, tt, m: torch.cat([x0 - noise, x0], 1), x0, t, None, noise)
    assert exact.loss.abs().max() < 1e-10
    frame_mask = torch.tensor([[False, True, True, True]] * 3)

    def wrong_on_frame0(x_t, tt, m):
        v = (x0 - noise).clone()
        v[:, :, 0] += 5.0
        return torch.cat([v, v], 1)

    def checked(x_t, tt, m):
        # The conditioning frame arrives clean and the model is told which frames it generates.
        assert torch.equal(x_t[:, :, 0], x0[:, :, 0]) and torch.equal(m, frame_mask)
        return wrong_on_frame0(x_t, tt, m)

    assert flow.training_losses(checked, x0, t, frame_mask, noise).loss.abs().max() < 1e-10
    assert flow.training_losses(wrong_on_frame0, x0, t, None, noise).loss.min() > 1.0


def test_samplers_refuse_a_model_trained_for_the_other_objective():
    with pytest.raises(ValueError, match="does not fit a model trained with rflow: use rflow or dpm-solver"):
        build_sampler("iddpm", 20, "rflow")
    with pytest.raises(ValueError, match="does not fit a model trained with iddpm"):
        build_sampler("rflow", 20, "iddpm")
    with pytest.raises(ValueError, match="unknown training objective"):
        build_sampler("rflow", 20, "edm")
    assert build_sampler("auto", 20, "iddpm").name == "iddpm" and build_sampler("auto", 20, "rflow").name == "rflow"


def test_timestep_shift_moves_toward_noise():
    ratio = 2.0
    assert shift_time(500.0, ratio) == pytest.approx(2 * 0.5 / 1.5 * 1000)
    assert shift_time(0.0, ratio) == 0.0 and shift_time(1000.0, ratio) == pytest.approx(1000.0)
    sampler = RFlowSampler(4, ratio)
    assert sampler.timesteps[0] == pytest.approx(1000.0) and all(a > b for a, b in zip(sampler.timesteps, sampler.timesteps[1:]))
