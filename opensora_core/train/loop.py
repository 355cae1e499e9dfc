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

This module runs the steps and reports; the set-up is `train.stage`, the step
`train.step`, checkpoints and the export `train.saving`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.distributed as dist
from tqdm.auto import tqdm

from opensora_core.train.args import TrainArgs, parse_train_args
from opensora_core.train.inputs import TrainingError
from opensora_core.train.saving import export_model, resume, save_checkpoint
from opensora_core.train.stage import Stage, prepare_stage
from opensora_core.train.step import StepMeter, train_step
from opensora_core.utils.atomic import write_text_atomic
from opensora_core.utils.hashing import file_sha256
from opensora_core.utils.host_memory import release_free_memory
from opensora_core.utils.jsonl import append_jsonl

# Imported from here by the CLI, the TorchX entry, the benchmarks and the tests.
__all__ = ["TrainArgs", "TrainResult", "TrainingError", "main", "parse_train_args", "prepare_stage",
           "result_summary", "train_stage"]

EXPORT_ARTIFACT_PATH = "export"  # the MLflow run's copy of the stage's export/ folder


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
                save_checkpoint(s, step)
            if step >= s.max_steps:
                break
    progress.close()

    export = export_model(s.out, s.model, s.text_encoder if s.trains_text else None, s.ema, s.rank,
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
