"""Samplers on top of diffusers' schedulers, and the denoising loop that honours
per-frame conditioning masks.

- `iddpm`: IDDPM ancestral sampling with learned-range variance over an evenly
  respaced subset of the 1000 training steps (diffusers' `DDPMScheduler`, given the
  respaced timesteps explicitly so each step jumps to the true previous one).
- `dpm-solver`: DPM-Solver++ (2nd order, multistep) over the same linear-beta
  process (diffusers' `DPMSolverMultistepScheduler`); it uses the noise half of
  the model output only; for rectified-flow models over flow sigmas.
- `rflow`: Euler steps of rectified flow (`diffusion/rflow.py`), for models trained
  with `scheduler: rflow`; the model's first channels are the velocity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from opensora_core.diffusion.iddpm import BETA_END, BETA_START, NUM_TIMESTEPS, GaussianDiffusion
from opensora_core.diffusion.rflow import RectifiedFlow, RFlowSampler

SAMPLERS = ("iddpm", "dpm-solver", "rflow")

# model_fn(z, t [B], x_mask [B, T] bool | None) -> [B, 2C, T, H, W]
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def respaced_timesteps(num_steps: int, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """IDDPM's evenly spaced subset of steps, descending (100 steps: 999, 989, ..., 0)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {num_steps}")
    if num_steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (num_steps - 1)
    return sorted({round(i * stride) for i in range(num_steps)}, reverse=True)


class IDDPMSampler:
    name = "iddpm"

    def __init__(self, num_steps: int = 100):
        self.scheduler = DDPMScheduler(
            num_train_timesteps=NUM_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear",
            variance_type="learned_range", clip_sample=False, prediction_type="epsilon",
        )
        self.scheduler.set_timesteps(timesteps=respaced_timesteps(num_steps))
        self.timesteps = [int(t) for t in self.scheduler.timesteps]

    def step(self, output: torch.Tensor, t: int, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.scheduler.step(output.float(), t, z.float(), generator=generator).prev_sample


class DPMSolverSampler:
    """DPM-Solver++ (2nd order). For a rectified-flow model (`flow`) it runs over flow
    sigmas (t/1000) with the velocity turned into diffusers' flow convention."""

    name = "dpm-solver"

    def __init__(self, num_steps: int = 20, flow: bool = False, shift: float = 1.0):
        if num_steps < 1:
            raise ValueError(f"steps must be >= 1, got {num_steps}")
        self.flow = flow
        if flow:
            process = {"use_flow_sigmas": True, "flow_shift": shift, "prediction_type": "flow_prediction",
                       "final_sigmas_type": "zero"}
            self.q_sample = RectifiedFlow.q_sample
        else:
            process = {"beta_start": BETA_START, "beta_end": BETA_END, "beta_schedule": "linear",
                       "prediction_type": "epsilon"}
        self.scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=NUM_TIMESTEPS, solver_order=2, algorithm_type="dpmsolver++", lower_order_final=True,
            **process,
        )
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        if flow:
            # The scheduler keeps integer timesteps; the model must see t = 1000 * sigma exactly.
            exact = [float(sigma) * NUM_TIMESTEPS for sigma in self.scheduler.sigmas[:-1]]
            self._scheduler_t = dict(zip(exact, self.timesteps))
            self.timesteps = exact

    def step(self, output: torch.Tensor, t, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        prediction = output[:, : z.shape[1]].float()
        if self.flow:
            prediction = -prediction  # ours is x0 - noise; diffusers' flow is noise - x0
            t = self._scheduler_t[t]
        return self.scheduler.step(prediction, t, z.float(), generator=generator).prev_sample


OBJECTIVES = ("iddpm", "rflow")


def build_sampler(name: str, num_steps: int, objective: str = "iddpm", shift: float = 1.0):
    """A sampler by name for a model trained with `objective` ("iddpm" covers
    iddpm-speed); "auto" is the objective's own (iddpm or rflow); `shift` is rflow's timestep shift ratio (1 = none)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown training objective {objective!r} (expected one of {', '.join(OBJECTIVES)})")
    if name == "auto":  # the objective's own sampler
        name = "rflow" if objective == "rflow" else "iddpm"
    if name in ("dpm-solver", "dpm-solver++"):
        return DPMSolverSampler(num_steps, flow=objective == "rflow", shift=shift)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} (expected one of {', '.join(SAMPLERS)})")
    if (name == "rflow") != (objective == "rflow"):
        wanted = "rflow or dpm-solver" if objective == "rflow" else "iddpm or dpm-solver"
        raise ValueError(f"sampler {name!r} does not fit a model trained with {objective}: use {wanted}")
    return RFlowSampler(num_steps, shift) if name == "rflow" else IDDPMSampler(num_steps)


def guided_channels(sampler, cfg_channel: int | None) -> int | None:
    """How many channels `sampler` guides: Open-Sora limits guidance to the first
    `cfg_channel` channels for IDDPM only; its DPM-Solver (and rflow) guide them all (None)."""
    return cfg_channel if isinstance(sampler, IDDPMSampler) else None


def classifier_free_guidance(output: torch.Tensor, cfg_scale: float, cfg_channel: int | None) -> torch.Tensor:
    """Combine `[2B, ...]` outputs (conditional first, then unconditional) into `[B, ...]`.

    Guidance applies to the first `cfg_channel` channels only (Open-Sora 1.1 guides 3
    of the 4 noise channels); the other channels keep the conditional prediction.
    """
    cond, uncond = output.chunk(2)
    channels = cond.shape[1] if cfg_channel is None else cfg_channel
    guided = cond.clone()
    guided[:, :channels] = uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels])
    return guided


@torch.no_grad()
def denoise(
    model_fn: ModelFn,
    sampler,
    z: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Run the sampler from noise `z` `[B, C, T, H, W]`.

    `frame_mask` `[B, T]` in [0, 1] says how much of the denoising each frame takes
    part in: 1 = generated from noise, 0 = a conditioning frame copied from `reference`
    and kept exactly, r in (0, 1) = a reference frame kept for the noisiest (1 - r)
    share of the steps, then noised to the current level and denoised with the rest
    (video editing). The model is told which frames it generates (`x_mask`).
    """
    if (frame_mask is None) != (reference is None):
        raise ValueError("frame_mask and reference go together")
    q_sample = getattr(sampler, "q_sample", GaussianDiffusion().q_sample)
    started = torch.zeros(z.shape[:1] + z.shape[2:3], dtype=torch.bool, device=z.device)
    generating = None
    for t in tqdm(sampler.timesteps, desc=f"{sampler.name} sampling", disable=not progress, leave=False):
        t_batch = torch.full((z.shape[0],), t, dtype=torch.float32 if isinstance(t, float) else torch.long,
                             device=z.device)
        if frame_mask is not None:
            generating = frame_mask * NUM_TIMESTEPS > t
            starting = generating & ~started & (frame_mask < 1)
            if starting.any():
                noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
                renoised = q_sample(reference, t_batch, noise)
                z = torch.where(starting[:, None, :, None, None], renoised, z)
            z = torch.where(generating[:, None, :, None, None], z, reference)
            started |= generating
        z = sampler.step(model_fn(z, t_batch, generating), t, z, generator)
    if frame_mask is not None:
        z = torch.where(generating[:, None, :, None, None], z, reference)
    return z
