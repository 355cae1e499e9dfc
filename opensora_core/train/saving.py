"""What a stage keeps: DCP checkpoints of the shared state (model, optimizer, EMA) with
the trainer's position (step, sampler), resuming from the newest on any number of
processes with the same global batch (DCP reshards; the sampler's position counts global
batches and the random draws are keyed by step and sample, `train.step.StepDraws`, so
there is no per-rank state to carry over), and the end-of-stage
export (`export/model.safetensors`, + the jointly trained text encoder) that
`load_stdit2`, `opensora sample` and the next stage's `--init` read."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from opensora_core.models import STDiT2
from opensora_core.models.checkpoint_io import (
    OBJECTIVE_METADATA_KEY,
    SHIFT_METADATA_KEY,
    save_model,
)
from opensora_core.models.encoders import TEXT_ENCODER_WEIGHTS
from opensora_core.train.checkpoint import UnverifiedCheckpoint
from opensora_core.train.ema import EMA
from opensora_core.train.inputs import TrainingError
from opensora_core.train.stage import Stage
from opensora_core.utils.atomic import atomic_path

_KERNEL_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def _shared_state(s: Stage) -> dict:
    model_state, optim_state = get_state_dict(s.trainable, s.optimizer)
    state = {"model": model_state, "optim": optim_state}
    if s.ema is not None:
        state["ema"] = s.ema.state_dict()
    return state


def resume(s: Stage) -> int:
    """Load the newest complete checkpoint of `--out`, if any; return the step to continue from."""
    latest = s.checkpoints.latest()
    if latest is None:
        return 0
    state = _shared_state(s)
    try:
        own = s.checkpoints.load(latest, state)
    except UnverifiedCheckpoint as err:
        raise TrainingError(str(err)) from None
    # The optimizer's kernel choice belongs to this process, not to the checkpoint's
    # writer: a 1-process checkpoint records fused=True, which DTensor weights refuse.
    kernels = [{k: group[k] for k in _KERNEL_OPTIONS if k in group} for group in s.optimizer.param_groups]
    set_state_dict(s.trainable, s.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for group, own_kernels in zip(s.optimizer.param_groups, kernels, strict=True):
        group.update(own_kernels)
    if s.ema is not None:
        s.ema.load_state_dict(state["ema"])
    s.sampler.load_state_dict(own["sampler"])
    return int(own["step"])


def save_checkpoint(s: Stage, step: int) -> None:
    own = {"step": step, "sampler": s.sampler.state_dict()}
    s.checkpoints.save(step, _shared_state(s), own)


def export_model(out: Path, model, text_encoder, ema: EMA | None, rank: int, objective: str = "iddpm",
                 shift: float = 1.0) -> Path:
    """Consolidated `export/model.safetensors` (EMA weights when the stage keeps an EMA)."""
    if ema is not None:
        state = {name: tensor for name, tensor in ema.state_dict().items()}
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        for name, tensor in state.items():
            full[name] = tensor.full_tensor().cpu() if hasattr(tensor, "full_tensor") else tensor.cpu()
    else:
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path = out / "export" / "model.safetensors"
    if rank == 0:
        with torch.device("meta"):
            shell = STDiT2(model.config)
        shell.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in full.items()}, assign=True)
        save_model(shell, path, extra_metadata={"weights": "ema" if ema is not None else "raw",
                                                OBJECTIVE_METADATA_KEY: objective, SHIFT_METADATA_KEY: repr(shift)})
        if text_encoder is not None:
            with atomic_path(path.with_name(TEXT_ENCODER_WEIGHTS)) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in text_encoder.state_dict().items()}, str(tmp))
    return path
