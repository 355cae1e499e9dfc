"""Parallelisation, applied from outside the model (torchtitan's order): activation
checkpointing per block, then `torch.compile` per block (the profile's `compile`), then
`fully_shard` per STDiT-2 block and the root, with the mixed-precision policy as an
argument. The model file knows nothing of distribution."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from opensora_core.utils.dtypes import resolve_dtype


def init_distributed(backend: str, device_type: str) -> tuple[int, int, DeviceMesh | None]:
    """(rank, world size, mesh) from torchrun's environment; a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    if not dist.is_initialized():
        dist.init_process_group(backend)
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), world, init_device_mesh(device_type, (world,))


def parallelize_stdit2(model: nn.Module, mesh: DeviceMesh | None, mixed_precision: str, grad_checkpoint: bool,
                       compile: bool = False) -> nn.Module:
    """Activation checkpointing per block (switchable), then each block compiled in place
    (`compile`; parameter names unchanged, so checkpoints stay interchangeable), then
    FSDP2 per block and root when there is more than one process. Weights stay fp32 (the
    sharded master copy); compute runs in `mixed_precision`, gradients reduce in fp32."""
    model.enable_gradient_checkpointing(grad_checkpoint)
    if compile:
        model.compile_blocks()
    if mesh is None:
        return model
    policy = MixedPrecisionPolicy(param_dtype=resolve_dtype(mixed_precision), reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def all_reduce_gradients(module: nn.Module, world: int) -> None:
    """Average the gradients of a small replicated module (the tiny text encoder)."""
    if world == 1:
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world)
