"""Rectified flow (Open-Sora 1.2's objective), selectable as a stage's `scheduler: rflow`.

Time runs over [0, 1000] with 1000 = pure noise: `x_t = (1 - t/1000) x0 + (t/1000) noise`.
The model's first `C` output channels predict the velocity `x0 - noise` (the variance
channels of a `pred_sigma` model are left untrained); the loss is their MSE over the
generated frames, conditioning frames given clean (t = 0) as in IDDPM's masked loss.
Training draws t logit-normally (more steps in the middle of the path, where the
velocity is hardest to predict); sampling takes Euler steps from 1000 to 0. Both can
shift t toward noise (a stage's `timestep_shift`, `shift_time`).
"""

from __future__ import annotations

import torch

from opensora_core.diffusion.iddpm import LossTerms, _masked_mean, frame_weights, noised_input

NUM_TIMESTEPS = 1000


def shift_time(t: torch.Tensor | float, ratio: float) -> torch.Tensor | float:
    """Map t in [0, 1000] toward noise: t' = r t / (1 + (r - 1) t) on normalised t."""
    if ratio == 1.0:
        return t
    u = t / NUM_TIMESTEPS
    return ratio * u / (1 + (ratio - 1) * u) * NUM_TIMESTEPS


class RectifiedFlow:
    """The forward path and the masked velocity loss."""

    num_timesteps = NUM_TIMESTEPS

    @staticmethod
    def q_sample(x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        s = (t.float() / NUM_TIMESTEPS).reshape(-1, *([1] * (x_start.ndim - 1)))
        return (1 - s) * x_start + s * noise

    def training_losses(
        self,
        model_output_fn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        mse_weights: torch.Tensor | None = None,
    ) -> LossTerms:
        """Velocity MSE per sample; `model_output_fn(x_t, t, x_mask)` as for IDDPM."""
        x_t, frame_mask, noise = noised_input(self.q_sample, x_start, t, frame_mask, noise)
        velocity = model_output_fn(x_t, t, frame_mask).float()[:, : x_start.shape[1]]
        mse = _masked_mean((x_start.float() - noise.float() - velocity) ** 2, frame_weights(frame_mask, x_start))
        if mse_weights is not None:
            mse = mse * mse_weights.float()
        return LossTerms(loss=mse, mse=mse, vb=torch.zeros_like(mse))


class LogitNormalTimesteps:
    """Training t: sigmoid(N(0, 1)) * 1000 (continuous), shifted by `ratio`."""

    def __init__(self, ratio: float = 1.0):
        self.ratio = ratio
        self.num_timesteps = NUM_TIMESTEPS

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = torch.sigmoid(torch.randn(batch, generator=generator)) * NUM_TIMESTEPS
        return shift_time(t, self.ratio)

    def weights(self, t: torch.Tensor) -> None:
        return None


class RFlowSampler:
    """Euler steps at t_i = (1 - i/N) * 1000 (shifted by `ratio`), the last to 0."""

    name = "rflow"

    def __init__(self, num_steps: int = 30, ratio: float = 1.0):
        if num_steps < 1:
            raise ValueError(f"steps must be >= 1, got {num_steps}")
        grid = [float(shift_time((1 - i / num_steps) * NUM_TIMESTEPS, ratio)) for i in range(num_steps)]
        self.timesteps = grid
        self._next = dict(zip(grid, grid[1:] + [0.0]))

    @staticmethod
    def q_sample(x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return RectifiedFlow.q_sample(x_start, t, noise)

    def step(self, output: torch.Tensor, t: float, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        velocity = output[:, : z.shape[1]].float()
        return z.float() + velocity * (t - self._next[t]) / NUM_TIMESTEPS
