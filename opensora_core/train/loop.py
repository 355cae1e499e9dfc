"""One training stage: `opensora train --stage ... --data meta.csv --out DIR`.

Runs as one process or under `torchrun` (gloo on CPU, NCCL on GPU, from the profile).
Each step: a bucket batch (latents and captions from the caches when they hold it,
decoded and encoded otherwise), a SpeeDiT or uniform timestep per sample, a training
mask per sample from the stage's `mask_ratios`, the IDDPM hybrid loss, AdamW with grad
clipping and warm-up, an fp32 EMA. Checkpoints (DCP) every `ckpt_every` steps and at the
end; an `--out` that holds checkpoints resumes from the newest, exactly. The end of a
stage exports `export/model.safetensors` (+ config, + the jointly trained text encoder)
that `load_stdit2`, `opensora sample` and the next stage's `--init` read. The flags
(`TrainArgs`) are declared once, in `opensora_core.train.args`.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from tqdm.auto import tqdm

from opensora_core.config import ProfileConfig, StageConfig
from opensora_core.data.buckets import Bucket, BucketBatchSampler
from opensora_core.data.caches import ShardedTensorCache
from opensora_core.data.dataset import VideoTextDataset, collate
from opensora_core.diffusion.iddpm import GaussianDiffusion
from opensora_core.diffusion.masks import MaskGenerator
from opensora_core.diffusion.rflow import RectifiedFlow
from opensora_core.diffusion.speedit import build_timestep_sampler
from opensora_core.models import STDiT2, STDiT2Config
from opensora_core.models.accounting import estimate_step_cost
from opensora_core.models.checkpoint_io import (
    OBJECTIVE_METADATA_KEY,
    SHIFT_METADATA_KEY,
    save_model,
)
from opensora_core.models.stdit2 import MicroConditionConvention
from opensora_core.models.text_encoder import build_text_encoder_for_model
from opensora_core.models.vae import build_vae
from opensora_core.train.args import TrainArgs, parse_train_args
from opensora_core.train.checkpoint import CheckpointManager
from opensora_core.train.ema import EMA
from opensora_core.train.fsdp import all_reduce_gradients, init_distributed, parallelize_stdit2
from opensora_core.train.inputs import TrainingError, check_inputs, stage_inputs
from opensora_core.train.stage_folder import StageFolder
from opensora_core.utils.atomic import atomic_path, write_text_atomic
from opensora_core.utils.dtypes import resolve_dtype
from opensora_core.utils.folder_lock import FolderLock, FolderLocked
from opensora_core.utils.hashing import file_sha256
from opensora_core.utils.host_memory import release_free_memory, retain_freed_memory
from opensora_core.utils.jsonl import append_jsonl

TEXT_ENCODER_WEIGHTS = "text_encoder.safetensors"
EXPORT_ARTIFACT_PATH = "export"  # the MLflow run's copy of the stage's export/ folder
# Dense bf16 peak of GPUs we know, for the MFU estimate (none on CPU).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    tokens_per_second: float
    wall_seconds: float
    export_path: str
    dcp_dir: str
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = None
    loss_curve: list[tuple[int, float]] = field(default_factory=list)


# 1. Set-up


class _Trainable(nn.Module):
    """The model and (when it trains jointly) the text encoder, as one module so that
    one optimizer and one DCP state dict cover both."""

    def __init__(self, stdit2: nn.Module, text_encoder: nn.Module | None):
        super().__init__()
        self.stdit2 = stdit2
        self.text_encoder = text_encoder


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


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


# 2. The stage


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
    generator: torch.Generator
    checkpoints: CheckpointManager
    lock: FolderLock | None = None  # rank 0's hold on `out` while the stage runs

    @property
    def compute_dtype(self) -> torch.dtype:
        return resolve_dtype(self.stage.mixed_precision)


def prepare_stage(args: TrainArgs) -> Stage:
    """Check every input (before any process group or model exists), then build the
    model, text encoder, VAE, optimizer, EMA and data path."""
    checked = check_inputs(args)
    stage, profile, config, seed = checked.stage, checked.profile, checked.config, checked.seed
    table, rows, assigner, init_state = checked.table, checked.rows, checked.assigner, checked.init_state

    rank, world, mesh = init_distributed(profile.dist_backend, profile.device)
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if profile.device == "cuda" else "cpu")
    if device.type == "cpu":
        retain_freed_memory()  # activations reuse mapped pages step after step (utils/host_memory.py)
    out = Path(args.out)
    lock = None
    if rank == 0:
        try:  # one run per stage folder: a second would resume from and prune the same checkpoints
            lock = FolderLock(out, f"training {Path(args.stage).stem}").acquire()
        except FolderLocked as err:
            raise TrainingError(str(err)) from None
        # Checkpoints of other inputs (table, stage config, init, seed, steps) are not resumed from.
        StageFolder(out).reuse_or_reset(stage_inputs(args, checked))
    if dist.is_initialized():
        dist.barrier()  # no rank lists checkpoints while rank 0 may still be clearing them

    torch.manual_seed(seed)
    model = STDiT2(config)
    model.use_attention_backend(profile.attention_backend)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    init_text = Path(args.init).parent / TEXT_ENCODER_WEIGHTS if args.init else None
    text_encoder = build_text_encoder_for_model(
        profile.text_encoder.kind, profile.text_encoder.path, config.caption_channels, config.model_max_length,
        load_file(str(init_text)) if init_text is not None and init_text.is_file() else None,
    )
    trains_text = isinstance(text_encoder, nn.Module) and any(p.requires_grad for p in text_encoder.parameters())
    vae = build_vae(profile.vae.kind, profile.vae.path).to(device)
    model.to(device)
    if trains_text:
        text_encoder.to(device)
    model = parallelize_stdit2(model, mesh, stage.mixed_precision, stage.grad_checkpoint, profile.compile)
    trainable = _Trainable(model, text_encoder if trains_text else None)
    # One fused kernel for the whole update where the weights are plain tensors (one
    # process): the per-tensor loop costs more than the arithmetic at small models.
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=stage.lr,
                                  weight_decay=stage.weight_decay, fused=mesh is None)

    caches = (None, None)
    if args.cache:
        caches = (ShardedTensorCache(Path(args.cache) / "text"), ShardedTensorCache(Path(args.cache) / "video"))
    diffusion = RectifiedFlow() if stage.scheduler == "rflow" else GaussianDiffusion()
    return Stage(
        args=args, stage=stage, profile=profile, config=config, seed=seed, max_steps=checked.max_steps,
        ckpt_every=checked.ckpt_every, rank=rank, world=world, mesh=mesh, device=device, out=out, model=model,
        text_encoder=text_encoder, trains_text=trains_text, vae=vae, trainable=trainable, optimizer=optimizer,
        ema=EMA(model, stage.ema_decay) if stage.ema_decay else None,
        dataset=VideoTextDataset(table, stage.frame_interval, text_encoder, vae.identity(), *caches, seed=seed),
        sampler=BucketBatchSampler(assigner, rows, seed=seed, rank=rank, world_size=world),
        diffusion=diffusion, timesteps=build_timestep_sampler(stage.scheduler, diffusion, stage.timestep_shift),
        masks=MaskGenerator(stage.mask_ratios) if stage.mask_ratios else None,
        generator=torch.Generator().manual_seed(seed * 1000 + rank),
        checkpoints=CheckpointManager(out / "checkpoints", args.keep_last, rank, world), lock=lock,
    )


def resume(s: Stage) -> int:
    """Load the newest complete checkpoint of `--out`, if any; return the step to continue from."""
    latest = s.checkpoints.latest()
    if latest is None:
        return 0
    state = _shared_state(s)
    own = s.checkpoints.load(latest, state)
    set_state_dict(s.trainable, s.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if s.ema is not None:
        s.ema.load_state_dict(state["ema"])
    s.sampler.load_state_dict(own["sampler"])
    torch.set_rng_state(own["torch_rng"])
    s.generator.set_state(own["generator"])
    if s.device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda_rng"], s.device)
    return int(own["step"])


def learning_rate(stage: StageConfig, step: int, max_steps: int) -> float:
    """The lr of 0-based `step` of a `max_steps` run: linear warm-up, then `lr_schedule`."""
    warmup = stage.warmup_steps
    if warmup and step < warmup:
        return stage.lr * (step + 1) / warmup
    if stage.lr_schedule == "constant" or max_steps <= warmup + 1:
        return stage.lr
    progress = min(1.0, (step - warmup) / (max_steps - 1 - warmup))
    return stage.min_lr + (stage.lr - stage.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(s: Stage, items: list[tuple[int, Bucket]], step: int) -> tuple[float, float, float]:
    """One optimizer step on one bucket batch: (loss, grad norm, lr)."""
    batch = collate([s.dataset[item] for item in items])
    autocast = s.mesh is None and s.compute_dtype != torch.float32
    with torch.autocast(s.device.type, dtype=s.compute_dtype, enabled=autocast):
        conditions = micro_conditions(batch, s.config.micro_condition_convention)
        loss = _loss(s.model, s.text_encoder, s.vae, s.diffusion, s.timesteps, s.masks, batch, conditions, s.device,
                     s.generator)
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
    return float(loss.detach()), grad_norm, lr


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


def train_stage(args: TrainArgs, on_metrics: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    s = prepare_stage(args)
    try:
        step = resume(s)
        tracker = _start_tracker(s) if s.rank == 0 else None
        try:
            return _run(s, step, tracker, on_metrics)
        except BaseException:
            if tracker is not None:
                tracker.finish("FAILED")  # a stage that fails still closes its MLflow run
            raise
    finally:
        if s.lock is not None:
            s.lock.release()


def _run(s: Stage, step: int, tracker, on_metrics) -> TrainResult:
    meter = StepMeter(s)
    loss_curve: list[tuple[int, float]] = []
    last_loss = float("nan")
    started = time.perf_counter()
    progress = tqdm(total=s.max_steps, initial=step, desc=Path(s.args.stage).stem, disable=s.rank != 0)
    s.trainable.train()
    while step < s.max_steps:
        if len(s.sampler) == 0:
            raise TrainingError(f"epoch {s.sampler.epoch} has no full batch: too few samples for the batch sizes")
        s.dataset.set_epoch(s.sampler.epoch)  # each epoch draws new temporal windows
        for items in s.sampler:
            loss, grad_norm, lr = train_step(s, items, step)
            step += 1
            progress.update(1)
            meter.add(items, loss)
            if step % s.stage.log_every == 0 or step == s.max_steps:
                if s.device.type == "cpu":
                    release_free_memory()  # bounds what heap fragmentation keeps resident
                metrics = meter.report(grad_norm, lr)
                last_loss = metrics["loss"]
                if s.rank == 0:
                    loss_curve.append((step, last_loss))
                    _report(s, step, metrics, tracker, on_metrics)
                    progress.set_postfix(loss=f"{last_loss:.4f}")
            if step % s.ckpt_every == 0 or step == s.max_steps:
                _save(s, step)
            if step >= s.max_steps:
                break
    progress.close()

    export = _export(s.out, s.model, s.text_encoder if s.trains_text else None, s.ema, s.rank,
                     "rflow" if s.stage.scheduler == "rflow" else "iddpm", s.stage.timestep_shift)
    wall = time.perf_counter() - started
    result = TrainResult(steps=step, final_loss=last_loss, tokens_per_second=meter.total_tokens / wall,
                         wall_seconds=wall, export_path=str(export), dcp_dir=str(s.checkpoints.latest()),
                         loss_curve=loss_curve)
    if s.rank == 0:
        if tracker is not None:
            tracker.set_tags({"dcp_dir": Path(result.dcp_dir).resolve().as_uri()})
            for file in sorted(export.parent.iterdir()):  # weights, config, trained text encoder
                tracker.log_artifact(file, EXPORT_ARTIFACT_PATH)
            tracker.finish()
            result.mlflow_run_id, result.mlflow_run_url = tracker.run_id, tracker.run_url
        write_text_atomic(s.out / "result.json", json.dumps(asdict(result), indent=2))
    if dist.is_initialized():
        dist.barrier()
    return result


def _report(s: Stage, step: int, metrics: dict[str, float], tracker, on_metrics) -> None:
    append_jsonl(s.out / "metrics.jsonl", {"step": step, **metrics})
    if tracker is not None:
        tracker.log_metrics(metrics, step)
    if on_metrics is not None:
        on_metrics(step, metrics)


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


def _loss(model, text_encoder, vae, diffusion, timesteps, masks, batch, conditions, device, generator) -> torch.Tensor:
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
    size = x0.shape[0]
    t = timesteps.sample(size, generator).to(device)
    weights = timesteps.weights(t)
    frame_mask = masks.get_masks(size, x0.shape[2], generator).to(device) if masks and x0.shape[2] > 1 else None
    noise = torch.randn(x0.shape, generator=generator).to(device)
    conditions = {k: v.to(device) for k, v in conditions.items()}

    def model_fn(x_t, t_in, x_mask):
        return model(x_t, t_in, y, mask=y_mask, x_mask=x_mask, **conditions)

    return diffusion.training_losses(model_fn, x0, t, frame_mask, noise, weights).loss.mean()


def _shared_state(s: Stage) -> dict:
    model_state, optim_state = get_state_dict(s.trainable, s.optimizer)
    state = {"model": model_state, "optim": optim_state}
    if s.ema is not None:
        state["ema"] = s.ema.state_dict()
    return state


def _save(s: Stage, step: int) -> None:
    own = {"step": step, "sampler": s.sampler.state_dict(), "torch_rng": torch.get_rng_state(),
           "generator": s.generator.get_state()}
    if s.device.type == "cuda":
        own["cuda_rng"] = torch.cuda.get_rng_state(s.device)
    s.checkpoints.save(step, _shared_state(s), own)


def _export(out: Path, model, text_encoder, ema: EMA | None, rank: int, objective: str = "iddpm",
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


def _start_tracker(s: Stage):
    from opensora_core.tracking import EXPERIMENT, StageTracker

    args = s.args
    params = {"stage": s.stage.model_dump(mode="json"), "model": s.config.model_dump(mode="json"),
              "profile": s.profile.name, "seed": s.seed, "max_steps": s.max_steps, "lr": s.stage.lr,
              "data": str(args.data),
              "init": args.init or "", "cache": args.cache or ""}
    tags = {"stage": str(s.stage.stage), "stage_config": str(args.stage), "data_snapshot": file_sha256(args.data)[:16],
            "code_version": _code_version()}
    return StageTracker.start(s.profile.mlflow_tracking_uri, EXPERIMENT, f"stage{s.stage.stage}", params,
                              tags, args.parent_run_id, s.out / "mlflow_offline", required=s.profile.mlflow_required)


def _code_version() -> str:
    """The package version plus the git commit of the checkout it runs from, when there is one."""
    import subprocess

    import opensora_core

    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(opensora_core.__file__).parent,
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{opensora_core.__version__}+{commit}" if commit else opensora_core.__version__


def main(argv: list[str] | None = None) -> None:
    args = parse_train_args(argv)
    print(result_summary(train_stage(args), args.out))


def result_summary(result: TrainResult, out: Path | str) -> str:
    """One JSON line for the terminal: the result without its loss curve (that is in
    result.json and metrics.jsonl beside the export)."""
    short = {k: v for k, v in asdict(result).items() if k != "loss_curve"}
    return json.dumps({**short, "loss_points": len(result.loss_curve), "result": str(Path(out) / "result.json")})


if __name__ == "__main__":
    main()
