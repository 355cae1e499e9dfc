"""One training step: a bucket batch through the loss (IDDPM hybrid or rectified flow,
under the model's micro-condition convention), grad clipping, the lr schedule, AdamW and
the EMA; and `StepMeter`, the loss and throughput reported between steps."""

from __future__ import annotations

import math
import resource
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from opensora_core.config import StageConfig
from opensora_core.data.buckets import Bucket
from opensora_core.data.dataset import collate
from opensora_core.models.accounting import estimate_step_cost
from opensora_core.models.stdit2 import MicroConditionConvention
from opensora_core.train.fsdp import all_reduce_gradients
from opensora_core.train.stage import Stage

# Dense bf16 peak of GPUs we know, for the MFU estimate (none on CPU).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def learning_rate(stage: StageConfig, step: int, max_steps: int) -> float:
    """The lr of 0-based `step` of a `max_steps` run: linear warm-up, then `lr_schedule`."""
    warmup = stage.warmup_steps
    if warmup and step < warmup:
        return stage.lr * (step + 1) / warmup
    if stage.lr_schedule == "constant" or max_steps <= warmup + 1:
        return stage.lr
    progress = min(1.0, (step - warmup) / (max_steps - 1 - warmup))
    return stage.min_lr + (stage.lr - stage.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def _grad_norm_and_clip(groups: list[list[nn.Parameter]], max_norm: float) -> float:
    """Clip over all parameters; sharded (DTensor) and replicated groups are normed apart."""
    norms = []
    for params in groups:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not norms:
        return 0.0
    total = torch.stack([n.float() for n in norms]).norm()
    for params in groups:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def train_step(s: Stage, items: list[tuple[int, Bucket]], step: int) -> tuple[float, float, float]:
    """One optimizer step on one bucket batch: (loss, grad norm, lr)."""
    batch = collate([s.dataset[item] for item in items])
    autocast = s.mesh is None and s.compute_dtype != torch.float32
    # The sampler gives every rank its slice of one global batch: rank r holds global
    # samples [r * B, (r + 1) * B), whose random draws are the same at any world size.
    draws = StepDraws(s.streams, step, len(items) * s.world, s.rank * len(items), len(items))
    with torch.autocast(s.device.type, dtype=s.compute_dtype, enabled=autocast):
        conditions = micro_conditions(batch, s.config.micro_condition_convention)
        loss = _loss(s.model, s.text_encoder, s.vae, s.diffusion, s.timesteps, s.masks, batch, conditions, s.device,
                     draws, s.config.class_dropout_prob)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    groups = [[p for p in s.model.parameters() if p.requires_grad]]
    if s.trains_text:
        all_reduce_gradients(s.text_encoder, s.world)
        groups.append(list(s.text_encoder.parameters()))
    grad_norm = _grad_norm_and_clip(groups, s.stage.grad_clip)
    lr = learning_rate(s.stage, step, s.max_steps)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    s.optimizer.step()
    if s.ema is not None:
        s.ema.update(s.model)
    reported = loss.detach().float()
    if s.world > 1:  # the global batch's loss, as one process with the whole batch reports it
        dist.all_reduce(reported, op=dist.ReduceOp.AVG)
    return float(reported), grad_norm, lr


def micro_conditions(batch: dict, convention: MicroConditionConvention) -> dict[str, torch.Tensor]:
    """The micro-conditions a training batch feeds the model, under the model's convention.
    The dataset gives ar = height/width and the fps of the frames it sampled (source fps /
    frame_interval; images 120): the 'consistent' convention as it is. 'opensora-1.1'
    feeds what Open-Sora 1.1's training fed its published weights: ar = width/height and
    the clip's source fps (the dataset's `source_fps`; images keep 120)."""
    conditions = {k: batch[k] for k in ("height", "width", "ar", "num_frames", "fps")}
    if convention == "opensora-1.1":
        conditions["ar"] = batch["width"] / batch["height"]
        conditions["fps"] = batch["source_fps"]
    return conditions


def _seeded(*key: int) -> torch.Generator:
    """A generator for `key`; SeedSequence mixes the key so nearby keys give unrelated streams."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


class StepDraws:
    """A step's random draws, keyed by (seed, step) and the sample's place in the global
    batch rather than by rank, so W processes with batch B draw what one process with
    batch W * B draws (and a resumed run what an uninterrupted one draws, with no RNG
    state to restore). The per-batch draws (timesteps, whose SpeeDiT pairs span the
    batch; frame masks; caption drops) are cheap and drawn for the whole global batch on
    every rank; the noise, the large draw, only for this rank's samples, one generator
    each."""

    def __init__(self, seed: int, step: int, global_size: int, offset: int, size: int):
        self.seed, self.step, self.global_size, self.offset, self.size = seed, step, global_size, offset, size
        self.batch_generator = _seeded(seed, step, 0)

    def mine(self, drawn: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a draw for the global batch."""
        return drawn[self.offset : self.offset + self.size]

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """`[size, *shape]` noise, sample i from its own generator (seed, step, global index)."""
        return torch.stack([torch.randn(shape, generator=_seeded(self.seed, self.step, 1, self.offset + i))
                            for i in range(self.size)])


def _loss(model, text_encoder, vae, diffusion, timesteps, masks, batch, conditions, device, draws: StepDraws,
          caption_dropout: float) -> torch.Tensor:
    if "latents" in batch:
        x0 = batch["latents"].to(device)
    else:
        with torch.no_grad():
            x0 = vae.encode(batch["video"].to(device)).float()
    if "ids" in batch:
        y, y_mask = text_encoder.embed(batch["ids"].to(device)), batch["mask"].to(device)
    elif "y" in batch:
        y, y_mask = batch["y"].to(device), batch["mask"].to(device)
    else:
        encoded = text_encoder.encode(batch["text"])
        y, y_mask = encoded["y"].to(device), encoded["mask"].to(device)
    if x0.shape[0] != draws.size:
        raise ValueError(f"batch of {x0.shape[0]} samples, expected {draws.size}")
    total, gen = draws.global_size, draws.batch_generator
    t = draws.mine(timesteps.sample(total, gen)).to(device)
    weights = timesteps.weights(t)
    frame_mask = None
    if masks and x0.shape[2] > 1:
        frame_mask = draws.mine(masks.get_masks(total, x0.shape[2], gen)).to(device)
    drop_caption = draws.mine(torch.rand(total, generator=gen) < caption_dropout).to(device)
    noise = draws.noise(tuple(x0.shape[1:])).to(device)
    conditions = {k: v.to(device) for k, v in conditions.items()}

    def model_fn(x_t, t_in, x_mask):
        return model(x_t, t_in, y, mask=y_mask, x_mask=x_mask, drop_caption=drop_caption, **conditions)

    return diffusion.training_losses(model_fn, x0, t, frame_mask, noise, weights).loss.mean()


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


class StepMeter:
    """Loss and throughput over the steps since the last report, with the model's FLOPs
    per bucket (counted once per bucket size on the meta device)."""

    def __init__(self, s: Stage):
        self.s = s
        self.peak = _peak_flops(s.device)
        self.flops_per_sample: dict[tuple, float] = {}
        self.total_tokens = 0
        self._reset()

    def _reset(self) -> None:
        self.loss, self.steps, self.samples, self.tokens, self.flops = 0.0, 0, 0, 0, 0.0
        self.start = time.perf_counter()

    def add(self, items: list[tuple[int, Bucket]], loss: float) -> None:
        bucket, s = items[0][1], self.s
        if bucket.key not in self.flops_per_sample:
            self.flops_per_sample[bucket.key] = estimate_step_cost(
                s.config, bucket.num_frames, bucket.height, bucket.width, 1, s.compute_dtype).train_flops
        tokens = bucket.tokens(s.config.patch_size[1]) * len(items) * s.world
        self.loss += loss
        self.steps += 1
        self.samples += len(items) * s.world
        self.tokens += tokens
        self.total_tokens += tokens
        self.flops += self.flops_per_sample[bucket.key] * len(items) * s.world

    def report(self, grad_norm: float, lr: float) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        metrics = {"loss": self.loss / self.steps, "grad_norm": grad_norm, "lr": lr,
                   "samples_per_s": self.samples / elapsed, "tokens_per_s": self.tokens / elapsed,
                   "tflops_per_s": self.flops / elapsed / 1e12,
                   "peak_memory_gib": _peak_memory(self.s.device) / 2**30, "epoch": float(self.s.sampler.epoch)}
        if self.peak:
            metrics["mfu"] = self.flops / elapsed / (self.peak * self.s.world)
        self._reset()
        return metrics
