from __future__ import annotations

import math

import pytest
import torch

from opensora_core.diffusion.iddpm import GaussianDiffusion
from opensora_core.diffusion.samplers import (
    build_sampler,
    classifier_free_guidance,
    denoise,
    respaced_timesteps,
)

from ..models.model_fixtures import build_random_model


def _published_alphas_cumprod() -> torch.Tensor:
    """Written out independently of the library: linear betas 1e-4 .. 2e-2, 1000 steps."""
    betas = torch.tensor([1e-4 + (2e-2 - 1e-4) * i / 999 for i in range(1000)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def _oracle(x0: torch.Tensor, alphas_cumprod: torch.Tensor, range_value: float = 0.0):
    """A "model" that knows the clean latent and returns the exact noise in x_t."""

    def model_fn(z, t, x_mask):
        abar = alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
        eps = (z - abar.sqrt() * x0) / (1 - abar).sqrt()
        return torch.cat([eps, torch.full_like(eps, range_value)], dim=1)

    return model_fn


@pytest.mark.parametrize(("name", "steps"), [("iddpm", 100), ("iddpm", 25), ("dpm-solver", 20)])
def test_samplers_recover_the_clean_latent_from_an_exact_noise_oracle(name, steps):
    x0 = torch.randn(2, 4, 3, 4, 4)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    out = denoise(_oracle(x0, _published_alphas_cumprod()), build_sampler(name, steps), z,
                  generator=torch.Generator().manual_seed(2), progress=False)
    assert (out - x0).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["iddpm", "dpm-solver"])
def test_an_oracle_with_the_wrong_schedule_does_not_recover(name):
    x0 = torch.randn(1, 4, 2, 4, 4)
    wrong = torch.cumprod(1 - torch.linspace(5e-4, 4e-2, 1000, dtype=torch.float64), 0)
    out = denoise(_oracle(x0, wrong), build_sampler(name, 20), torch.randn_like(x0),
                  generator=torch.Generator().manual_seed(0), progress=False)
    assert (out - x0).abs().max() > 1e-2


def test_iddpm_step_uses_the_learned_range_variance():
    """v=+1 selects the largest variance (the respaced beta), v=-1 the posterior variance."""
    abar = _published_alphas_cumprod()
    x0, x_t = torch.randn(1, 4, 1, 2, 2), torch.randn(1, 4, 1, 2, 2)
    sampler = build_sampler("iddpm", 100)
    t, t_prev = sampler.timesteps[49], sampler.timesteps[50]
    a_t, a_prev = abar[t].item(), abar[t_prev].item()
    beta = 1 - a_t / a_prev
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x_t
    posterior_var = beta * (1 - a_prev) / (1 - a_t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    for range_value, variance in ((1.0, beta), (-1.0, posterior_var)):
        sampler = build_sampler("iddpm", 100)
        output = _oracle(x0, abar, range_value)(x_t, torch.tensor([t]), None)
        stepped = sampler.step(output, t, x_t, torch.Generator().manual_seed(5))
        torch.testing.assert_close(stepped, mean + math.sqrt(variance) * noise, atol=1e-4, rtol=1e-4)


def test_respacing_matches_iddpm_even_spacing():
    steps = respaced_timesteps(100)
    assert len(steps) == 100 and steps[0] == 999 and steps[-1] == 0
    assert set(steps) == {round(i * 999 / 99) for i in range(100)}
    with pytest.raises(ValueError, match="steps must be"):
        respaced_timesteps(0)


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sampler 'ddim'.*iddpm, dpm-solver"):
        build_sampler("ddim", 10)


def test_classifier_free_guidance_only_on_the_first_channels():
    cond, uncond = torch.randn(2, 8, 1, 2, 2), torch.randn(2, 8, 1, 2, 2)
    guided = classifier_free_guidance(torch.cat([cond, uncond]), cfg_scale=7.0, cfg_channel=3)
    torch.testing.assert_close(guided[:, :3], uncond[:, :3] + 7.0 * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(guided[:, 3:], cond[:, 3:])


def test_training_loss_ignores_conditioning_frames():
    diffusion = GaussianDiffusion()
    x0 = torch.randn(2, 4, 4, 4, 4)
    t = torch.tensor([10, 700])
    frame_mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    seen = {}

    def model_fn(x_t, t_in, x_mask, garbage=0.0):
        seen["x_t"], seen["x_mask"] = x_t, x_mask
        out = torch.zeros(x_t.shape[0], 8, *x_t.shape[2:])
        out[0, :, 0] += garbage  # nonsense on the conditioning frames only
        out[1, :, 2:] += garbage
        return out

    noise = torch.randn_like(x0)
    clean = diffusion.training_losses(model_fn, x0, t, frame_mask, noise)
    # Conditioning frames reach the model clean and flagged.
    torch.testing.assert_close(seen["x_t"][0, :, 0], x0[0, :, 0])
    assert not torch.allclose(seen["x_t"][0, :, 1], x0[0, :, 1])
    assert torch.equal(seen["x_mask"], frame_mask)
    noisy = diffusion.training_losses(lambda *a: model_fn(*a, garbage=1e3), x0, t, frame_mask, noise)
    torch.testing.assert_close(noisy.loss, clean.loss)
    # ...while the same nonsense on a generated frame does count.
    unmasked = diffusion.training_losses(lambda *a: model_fn(*a, garbage=1e3), x0, t, None, noise)
    assert (unmasked.loss > clean.loss * 10).all()


def test_hybrid_loss_is_mse_plus_bound_and_fits_one_batch():
    torch.manual_seed(0)
    model = build_random_model(class_dropout_prob=0.0).train()
    diffusion = GaussianDiffusion()
    x0 = torch.randn(2, 4, 4, 4, 4)
    y = torch.randn(2, 1, 8, 16)
    t = torch.tensor([50, 600])
    noise = torch.randn_like(x0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def model_fn(x_t, t_in, x_mask):
        return model(x_t, t_in, y, x_mask=x_mask)

    losses = []
    for _ in range(30):
        terms = diffusion.training_losses(model_fn, x0, t, noise=noise)
        torch.testing.assert_close(terms.loss, terms.mse + terms.vb)
        optimizer.zero_grad()
        terms.loss.mean().backward()
        optimizer.step()
        losses.append(terms.loss.mean().item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_decoder_term_is_used_at_t_zero():
    diffusion = GaussianDiffusion()
    x0 = torch.rand(1, 4, 1, 2, 2) * 2 - 1

    def model_fn(x_t, t_in, x_mask):
        return torch.zeros(1, 8, 1, 2, 2)

    at_zero = diffusion.training_losses(model_fn, x0, torch.tensor([0]), noise=torch.zeros_like(x0))
    at_one = diffusion.training_losses(model_fn, x0, torch.tensor([1]), noise=torch.zeros_like(x0))
    assert at_zero.vb.item() > 0 and at_zero.vb.item() != pytest.approx(at_one.vb.item())
