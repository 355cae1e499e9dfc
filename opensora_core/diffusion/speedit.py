"""SpeeDiT ("iddpm-speed"): non-uniform timestep sampling and loss weighting for training.

The forward process changes x_t fastest over the early, low-noise steps and hardly
at all near t=1000. SpeeDiT spends more of each batch where the noise level still
changes: steps where d sqrt(1 - abar_t)/dt exceeds 1e-4 are drawn five times as
often as the rest (a smoothed step function: 2.5 vs 0.5 before normalising). Each
draw is paired with its mirror image around the first step where that rise falls
below 1e-4 ("meaningful steps"), which balances the batch across the two regimes. The
MSE term is weighted by 1/(1 + SNR_t), down-weighting easy low-noise steps.
"""

from __future__ import annotations

import torch

from opensora_core.diffusion.iddpm import GaussianDiffusion


class SpeeDiTTimestepSampler:
    def __init__(self, diffusion: GaussianDiffusion, rise_threshold: float = 1e-4):
        abar = diffusion.alphas_cumprod
        rise = torch.gradient((1.0 - abar).sqrt())[0]  # how fast the noise level still grows
        weights = torch.tanh(1e6 * (rise - rise_threshold)) + 1.5
        self.probabilities = (weights / weights.sum()).float()
        flat = torch.nonzero(rise < rise_threshold)
        self.meaningful_steps = int(flat[0]) + 1 if len(flat) else diffusion.num_timesteps
        snr = abar / (1.0 - abar)
        self.loss_weights = (1.0 / (1.0 + snr)).float()
        self.num_timesteps = diffusion.num_timesteps

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`batch` timesteps: half drawn from `probabilities`, half their mirrors."""
        drawn = torch.multinomial(self.probabilities, batch // 2 + 1, replacement=True, generator=generator)
        mirrored = torch.where(
            drawn < self.meaningful_steps, self.meaningful_steps - drawn, drawn - self.meaningful_steps
        ).clamp(0, self.num_timesteps - 1)
        return torch.cat([drawn, mirrored])[:batch]

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        return self.loss_weights.to(t.device)[t]


class UniformTimestepSampler:
    """Plain IDDPM training: t uniform over all steps, unweighted."""

    def __init__(self, diffusion: GaussianDiffusion):
        self.num_timesteps = diffusion.num_timesteps

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator)

    def weights(self, t: torch.Tensor) -> None:
        return None


def build_timestep_sampler(name: str, diffusion: GaussianDiffusion | None = None, shift: float = 1.0):
    """`iddpm` (uniform), `iddpm-speed` (SpeeDiT) or `rflow` (logit-normal, shifted by
    `shift`), the names of the stage configs' `scheduler`."""
    if name == "rflow":
        from opensora_core.diffusion.rflow import LogitNormalTimesteps

        return LogitNormalTimesteps(shift)
    if name == "iddpm":
        return UniformTimestepSampler(diffusion)
    if name == "iddpm-speed":
        return SpeeDiTTimestepSampler(diffusion)
    raise ValueError(f"unknown training scheduler {name!r} (expected 'iddpm', 'iddpm-speed' or 'rflow')")
