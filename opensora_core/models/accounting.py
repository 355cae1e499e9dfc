"""What a training step costs: parameters, FLOPs and memory, counted by running the
real model on the meta device (shapes only, no memory, no time).

FLOPs come from `torch.utils.flop_counter` (matmuls, convolutions and attention), so
they follow the code instead of a hand formula. Activation memory is the size of the
distinct tensors autograd saves for backward, measured with saved-tensor hooks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from opensora_core.models.stdit2 import VAE_DOWNSAMPLE, STDiT2, STDiT2Config

# AdamW keeps two fp32 moments per trainable parameter.
ADAM_STATE_BYTES = 8


@dataclass(frozen=True)
class StepCost:
    parameters: int
    trainable_parameters: int
    tokens_per_sample: int
    forward_flops: int
    train_flops: int  # forward + backward
    activation_bytes: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.param_bytes + self.grad_bytes + self.optimizer_bytes


class SavedActivationCounter(contextlib.AbstractContextManager):
    """Sums the bytes of distinct storages autograd saves for backward, excluding the
    storages of `exclude` (the model's parameters and buffers)."""

    def __init__(self, exclude: torch.nn.Module | None = None):
        self._skip = set()
        if exclude is not None:
            tensors = list(exclude.parameters()) + list(exclude.buffers())
            self._skip = {t.untyped_storage()._cdata for t in tensors}
        self._seen: set[int] = set()
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self._skip and key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def estimate_step_cost(
    config: STDiT2Config,
    num_frames: int,
    height: int,
    width: int,
    batch_size: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    gradient_checkpointing: bool = False,
    caption_tokens: int | None = None,
    vae_downsample: int = VAE_DOWNSAMPLE,
) -> StepCost:
    """Cost of one forward+backward on `batch_size` videos of `num_frames x height x
    width` pixels. Weights are assumed in fp32 (sharded master copy), compute and
    activations in `dtype`, AdamW states in fp32."""
    if height % vae_downsample or width % vae_downsample:
        raise ValueError(f"height and width must be multiples of {vae_downsample}, got {height}x{width}")
    tokens = caption_tokens or config.model_max_length
    with torch.device("meta"):
        model = STDiT2(config).to(dtype)
        model.enable_gradient_checkpointing(gradient_checkpointing)
        model.train()
        x = torch.empty(batch_size, config.in_channels, num_frames, height // vae_downsample, width // vae_downsample)
        y = torch.empty(batch_size, 1, tokens, config.caption_channels)
        timestep = torch.empty(batch_size)
    forward_flops, backward_flops, activation_bytes = _count(model, x, timestep, y, height, width)
    if gradient_checkpointing:
        # Backward re-creates one block's activations at a time: the peak adds one
        # block's worth to what the checkpointed forward kept.
        model.enable_gradient_checkpointing(False)
        stored_all = _count(model, x, timestep, y, height, width)[2]
        activation_bytes += max(stored_all - activation_bytes, 0) // config.depth

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pt, ph, pw = config.patch_size
    frames, grid_h, grid_w = (-(-n // p) for n, p in zip(x.shape[2:], (pt, ph, pw)))
    return StepCost(
        parameters=params,
        trainable_parameters=trainable,
        tokens_per_sample=frames * grid_h * grid_w,
        forward_flops=forward_flops,
        train_flops=forward_flops + backward_flops,
        activation_bytes=activation_bytes,
        param_bytes=params * 4,
        grad_bytes=trainable * 4,
        optimizer_bytes=trainable * ADAM_STATE_BYTES,
    )


def _count(model: STDiT2, x, timestep, y, height: int, width: int) -> tuple[int, int, int]:
    """(forward FLOPs, backward FLOPs, bytes saved for backward) of one step."""
    with FlopCounterMode(display=False) as forward_counter, SavedActivationCounter(model) as saved:
        out = model(x, timestep, y, height=float(height), width=float(width))
    with FlopCounterMode(display=False) as backward_counter:
        out.sum().backward()
    return forward_counter.get_total_flops(), backward_counter.get_total_flops(), saved.bytes
