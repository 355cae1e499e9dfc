"""A training stage's set-up: `prepare_stage` checks every input, claims `--out`, and
builds the model, the profile's encoders, the optimizer, the EMA and the data path into
one `Stage` that the step (`train.step`), the checkpoints (`train.saving`) and the loop
(`train.loop`) read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from opensora_core.config import ProfileConfig, StageConfig
from opensora_core.data.buckets import BucketBatchSampler, stage_streams
from opensora_core.data.caches import ShardedTensorCache
from opensora_core.data.dataset import VideoTextDataset
from opensora_core.diffusion.iddpm import GaussianDiffusion
from opensora_core.diffusion.masks import MaskGenerator
from opensora_core.diffusion.rflow import RectifiedFlow
from opensora_core.diffusion.speedit import build_timestep_sampler
from opensora_core.models import STDiT2, STDiT2Config
from opensora_core.models.encoders import TEXT_ENCODER_WEIGHTS, load_text_encoder, load_vae
from opensora_core.train.args import TrainArgs
from opensora_core.train.checkpoint import CheckpointManager
from opensora_core.train.ema import EMA
from opensora_core.train.fsdp import init_distributed, parallelize_stdit2
from opensora_core.train.inputs import CheckedInputs, TrainingError, check_inputs, stage_inputs
from opensora_core.train.stage_folder import StageFolder
from opensora_core.utils.dtypes import resolve_dtype
from opensora_core.utils.folder_lock import FolderLock, FolderLocked
from opensora_core.utils.host_memory import retain_freed_memory


class _Trainable(nn.Module):
    """The model and (when it trains jointly) the text encoder, as one module so that
    one optimizer and one DCP state dict cover both."""

    def __init__(self, stdit2: nn.Module, text_encoder: nn.Module | None):
        super().__init__()
        self.stdit2 = stdit2
        self.text_encoder = text_encoder


@dataclass
class Stage:
    """Everything a running stage needs, built once by `prepare_stage`."""

    args: TrainArgs
    stage: StageConfig
    profile: ProfileConfig
    config: STDiT2Config
    seed: int
    max_steps: int
    ckpt_every: int
    rank: int
    world: int
    mesh: object
    device: torch.device
    out: Path
    model: nn.Module
    text_encoder: object
    trains_text: bool
    vae: nn.Module
    trainable: _Trainable
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    dataset: VideoTextDataset
    sampler: BucketBatchSampler
    diffusion: GaussianDiffusion | RectifiedFlow
    timesteps: object
    masks: MaskGenerator | None
    checkpoints: CheckpointManager
    lock: FolderLock | None = None  # rank 0's hold on `out` while the stage runs

    @property
    def streams(self) -> int:
        """`stage_streams`: the seed of the data order, temporal windows and step draws."""
        return stage_streams(self.seed, self.stage.stage)

    @property
    def compute_dtype(self) -> torch.dtype:
        return resolve_dtype(self.stage.mixed_precision)


@dataclass
class _Models:
    model: nn.Module
    text_encoder: object
    trains_text: bool
    vae: nn.Module


def _claim_out(args: TrainArgs, checked: CheckedInputs, rank: int, world: int) -> FolderLock | None:
    """Rank 0 locks `--out` and clears checkpoints of other inputs; every rank waits for it."""
    lock = None
    if rank == 0:
        try:  # one run per stage folder: a second would resume from and prune the same checkpoints
            lock = FolderLock(Path(args.out), f"training {Path(args.stage).stem}").acquire()
        except FolderLocked as err:
            raise TrainingError(str(err)) from None
        folder = StageFolder(Path(args.out))
        folder.sweep_leftovers()  # a killed run's unfinished checkpoint and temporary files
        # Checkpoints of other inputs (table, stage config, init, seed, steps) are not resumed from.
        folder.reuse_or_reset(stage_inputs(args, checked, world))
    if dist.is_initialized():
        dist.barrier()  # no rank lists checkpoints while rank 0 may still be clearing them
    return lock


def _build_models(args: TrainArgs, checked: CheckedInputs, device: torch.device, mesh) -> _Models:
    """The model (from `--init` when given), the profile's text encoder (with the trained
    state beside `--init`) and VAE, placed and parallelized."""
    stage, profile, config = checked.stage, checked.profile, checked.config
    torch.manual_seed(checked.seed)
    model = STDiT2(config)
    if checked.init_state is not None:
        model.load_state_dict(checked.init_state, strict=True)
    model.use_attention_backend(profile.attention_backend)
    init_text = Path(args.init).parent / TEXT_ENCODER_WEIGHTS if args.init else None
    text_encoder = load_text_encoder(
        profile, config, state=load_file(str(init_text)) if init_text is not None and init_text.is_file() else None,
    )
    trains_text = isinstance(text_encoder, nn.Module) and any(p.requires_grad for p in text_encoder.parameters())
    vae = load_vae(profile, device)
    model.to(device)
    if trains_text:
        text_encoder.to(device)
    compile_blocks = profile.compile if stage.compile is None else stage.compile
    model = parallelize_stdit2(model, mesh, stage.mixed_precision, stage.grad_checkpoint, compile_blocks)
    return _Models(model, text_encoder, trains_text, vae)


def prepare_stage(args: TrainArgs) -> Stage:
    """Check every input (before any process group or model exists), then build the
    model, text encoder, VAE, optimizer, EMA and data path."""
    checked = check_inputs(args)
    stage, profile, seed = checked.stage, checked.profile, checked.seed

    rank, world, mesh = init_distributed(profile.dist_backend, profile.device)
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if profile.device == "cuda" else "cpu")
    if device.type == "cpu":
        retain_freed_memory()  # activations reuse mapped pages step after step (utils/host_memory.py)
    out = Path(args.out)
    lock = _claim_out(args, checked, rank, world)
    built = _build_models(args, checked, device, mesh)
    model, text_encoder = built.model, built.text_encoder
    trainable = _Trainable(model, text_encoder if built.trains_text else None)
    # One fused kernel for the whole update where the weights are plain tensors (one
    # process): the per-tensor loop costs more than the arithmetic at small models.
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=stage.lr,
                                  weight_decay=stage.weight_decay, fused=mesh is None)

    caches = (None, None)
    if args.cache:
        caches = (ShardedTensorCache(Path(args.cache) / "text"), ShardedTensorCache(Path(args.cache) / "video"))
    diffusion = RectifiedFlow() if stage.scheduler == "rflow" else GaussianDiffusion()
    return Stage(
        args=args, stage=stage, profile=profile, config=checked.config, seed=seed, max_steps=checked.max_steps,
        ckpt_every=checked.ckpt_every, rank=rank, world=world, mesh=mesh, device=device, out=out, model=model,
        text_encoder=text_encoder, trains_text=built.trains_text, vae=built.vae, trainable=trainable,
        optimizer=optimizer, ema=EMA(model, stage.ema_decay) if stage.ema_decay else None,
        dataset=VideoTextDataset(checked.table, stage.frame_interval, text_encoder, built.vae.identity(), *caches,
                                 seed=checked.streams),
        sampler=BucketBatchSampler(checked.assigner, checked.rows, seed=checked.streams, rank=rank,
                                   world_size=world),
        diffusion=diffusion, timesteps=build_timestep_sampler(stage.scheduler, diffusion, stage.timestep_shift),
        masks=MaskGenerator(stage.mask_ratios) if stage.mask_ratios else None,
        checkpoints=CheckpointManager(out / "checkpoints", args.keep_last, rank), lock=lock,
    )
