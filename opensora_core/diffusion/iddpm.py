"""IDDPM: the Gaussian diffusion process STDiT-2 is trained with.

1000 steps, linear betas 1e-4..2e-2, learned-range variance (the model predicts the
noise and, in its second half of channels, an interpolation between the posterior
variance and beta), hybrid loss = epsilon MSE + variational bound. The loss takes a
per-frame mask: conditioning frames are given clean (noised at t=0) and contribute
nothing to the loss.

Sampling lives in `samplers.py` on top of diffusers' schedulers; this module holds what
no library has: the masked hybrid training loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 2e-2


def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Linear schedule in fp64, rescaled so other step counts keep the same total noise."""
    scale = 1000 / num_timesteps
    return torch.linspace(scale * BETA_START, scale * BETA_END, num_timesteps, dtype=torch.float64)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of `x` in [-1, 1] under a Gaussian discretised into 256 bins
    (the decoder term of the bound at t=0), elementwise, in nats."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


@dataclass
class LossTerms:
    loss: torch.Tensor  # [B]
    mse: torch.Tensor  # [B]
    vb: torch.Tensor  # [B]


class GaussianDiffusion:
    """The forward process and the hybrid training loss of IDDPM."""

    def __init__(self, num_timesteps: int = NUM_TIMESTEPS):
        self.num_timesteps = num_timesteps
        betas = linear_betas(num_timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # The posterior variance is 0 at t=0; its log is clipped to the t=1 value.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] as float32, broadcastable against `like` ([B, ...])."""
        values = table.to(t.device)[t].float()
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        return (self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / self._at(
            self.sqrt_alphas_cumprod, t, x_t
        )

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x_start + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)

    def p_mean_logvar(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from a learned-range output
        `[B, 2C, ...]` (noise, then a value in [-1, 1] per element)."""
        eps, range_value = model_output.chunk(2, dim=1)
        min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
        max_log = self._at(torch.log(self.betas), t, x_t)
        fraction = (range_value + 1) / 2
        log_variance = fraction * max_log + (1 - fraction) * min_log
        mean, _ = self.q_posterior(self.predict_start_from_noise(x_t, t, eps), x_t, t)
        return mean, log_variance

    def training_losses(
        self,
        model_output_fn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        mse_weights: torch.Tensor | None = None,
    ) -> LossTerms:
        """Hybrid loss per sample.

        `model_output_fn(x_t, t, x_mask)` returns `[B, 2C, T, H, W]`. `frame_mask`
        `[B, T]` bool: True frames are noised at t and scored; False frames are given
        clean (t=0) and excluded from both terms. `mse_weights` `[B]` scales the MSE
        term (SpeeDiT); the bound term is unweighted so the variance still learns.
        """
        x_t, frame_mask, noise = noised_input(self.q_sample, x_start, t, frame_mask, noise)
        output = model_output_fn(x_t, t, frame_mask).float()
        channels = x_start.shape[1]
        if output.shape[1] != 2 * channels:
            raise ValueError(f"the model must predict noise and variance ({2 * channels} channels), got {output.shape[1]}")
        eps, range_value = output.split(channels, dim=1)

        weights = frame_weights(frame_mask, x_start)
        mse = _masked_mean((noise.float() - eps) ** 2, weights)
        if mse_weights is not None:
            mse = mse * mse_weights.float()

        # The bound trains only the variance: the mean comes from a detached noise estimate.
        frozen = torch.cat([eps.detach(), range_value], dim=1)
        model_mean, model_logvar = self.p_mean_logvar(frozen, x_t.float(), t)
        true_mean, true_logvar = self.q_posterior(x_start.float(), x_t.float(), t)
        kl = _masked_mean(normal_kl(true_mean, true_logvar, model_mean, model_logvar), weights) / math.log(2.0)
        nll = -_masked_mean(
            discretized_gaussian_log_likelihood(x_start.float(), model_mean, 0.5 * model_logvar), weights
        ) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl) * (self.num_timesteps / 1000.0)
        return LossTerms(loss=mse + vb, mse=mse, vb=vb)


def noised_input(q_sample, x_start: torch.Tensor, t: torch.Tensor, frame_mask: torch.Tensor | None,
                 noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(x_t, bool frame mask, noise): generated frames noised by `q_sample` at t,
    conditioning frames (mask False) left clean; noise drawn when None."""
    if noise is None:
        noise = torch.randn_like(x_start)
    x_t = q_sample(x_start, t, noise)
    if frame_mask is not None:
        frame_mask = frame_mask.to(device=x_start.device, dtype=torch.bool)
        x_t = torch.where(frame_mask[:, None, :, None, None], x_t, x_start)
    return x_t, frame_mask, noise


def frame_weights(frame_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """`[B, 1, T, 1, 1]`: 1 for the frames that are scored."""
    if frame_mask is None:
        return torch.ones(like.shape[0], 1, like.shape[2], 1, 1, device=like.device)
    return frame_mask.float()[:, None, :, None, None]


def _masked_mean(values: torch.Tensor, frame_weights: torch.Tensor) -> torch.Tensor:
    """Mean over every element of the scored frames, per sample `[B]`."""
    weighted = (values * frame_weights).flatten(1).sum(1)
    per_frame = values[0, :, 0].numel()  # C * H * W elements in one frame
    count = frame_weights.expand(-1, 1, values.shape[2], 1, 1).flatten(1).sum(1) * per_frame
    return weighted / count.clamp(min=1)
