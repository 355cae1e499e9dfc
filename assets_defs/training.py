"""Training assets `stdit2_stage0` .. `stdit2_stage3`: one TorchX job per stage.

Each asset checks its inputs in this process with `opensora train`'s own check
(`opensora_core.train.inputs`: stage config, the `--init` weights' names and shapes, a
non-empty training table with a sample that fits a bucket), so bad input fails before
anything is launched, and applies the stage folder's inputs rule (`StageFolder`); then it runs `opensora train`'s code under
torchrun through the TorchX launcher and receives metrics and the result through
Dagster Pipes. Stage N+1 starts from stage N's export when its config says
`init_from: previous`.
"""

import base64
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field
from torchx.specs import AppDef

from assets_defs.caches import text_embeddings, video_latents
from opensora_core.config import ConfigError, StageConfig, load_stage
from opensora_core.tracking.registry import download_champion
from opensora_core.train.args import TrainArgs
from opensora_core.train.inputs import TrainingError, check_inputs, stage_inputs
from opensora_core.train.metrics import RISE_LIMIT, TREND_POINTS, summarize_loss
from opensora_core.train.stage_folder import TABLE, StageFolder
from opensora_core.utils.atomic import atomic_path
from opensora_core.utils.folder_lock import FolderLock, FolderLocked
from orchestration.launch.components import train_stage_component
from orchestration.resources import (
    CacheSettings,
    CurationStorage,
    MlflowTracking,
    TorchXLauncher,
    TrainingSettings,
)


class StageRunConfig(Config):
    """Run configuration of a stage asset (Launchpad, or a job's `ops:` config)."""

    init: Literal["config", "champion"] = Field(
        "config", description="'config': the stage config's init_from (stage N-1's export, a path or random); "
                              "'champion': the MLflow registry's champion (retraining fine-tunes from it).")


@dataclass
class StagePlan:
    """Everything one stage job is launched with, checked."""

    index: int
    config_name: str
    config: StageConfig
    args: TrainArgs
    inputs: dict  # what the result depends on (`stage_inputs`)

    @property
    def out(self) -> Path:
        return Path(self.args.out)

    @property
    def data(self) -> Path:
        return Path(self.args.data)

    @property
    def init(self) -> Path | None:
        return Path(self.args.init) if self.args.init else None


def plan_stage(index: int, settings: TrainingSettings, data: Path, init: Path | None = None,
               cache: str | None = None) -> StagePlan:
    """Resolve stage `index`'s inputs and check them as `opensora train` does
    (`opensora_core.train.inputs`, the init weights by shapes only); raise Failure naming
    what is wrong. `init` replaces the stage config's `init_from`."""
    name = settings.stage_config(index)
    try:
        config = load_stage(name)
    except ConfigError as err:
        raise Failure(f"stdit2_stage{index}: stage config does not validate:\n{err}") from None
    if config.stage != index:
        raise Failure(f"stdit2_stage{index}: stage config {name} is for stage {config.stage}, not {index} "
                      "(check TrainingSettings.stages / OPENSORA_TRAIN_STAGES)")
    init = init or _init_path(index, config, settings)
    args = TrainArgs(stage=name, data=str(data), out=str(settings.stage_dir(index)), profile=settings.profile,
                     cache=cache, init=str(init) if init else None, max_steps=settings.max_steps)
    try:
        world = settings.nnodes * settings.nproc_per_node  # the job's processes share the global batch
        inputs = stage_inputs(args, check_inputs(args, shapes_only=True), world)
    except (TrainingError, ConfigError) as err:
        raise Failure(f"stdit2_stage{index}: {err}") from None
    return StagePlan(index, name, config, args, inputs)


def _init_path(index: int, config: StageConfig, settings: TrainingSettings) -> Path | None:
    if config.init_from is None:
        return None
    if config.init_from == "previous":
        path = settings.export_path(index - 1)
        if not path.is_file():
            raise Failure(f"stdit2_stage{index}: starts from stage {index - 1}'s export {path}, which does not "
                          f"exist; materialize stdit2_stage{index - 1} first")
        return path
    path = Path(config.init_from).expanduser()
    if not path.exists():
        raise Failure(f"stdit2_stage{index}: init_from {path} (from {settings.stage_config(index)}) does not exist")
    return path


def snapshot_table(storage: CurationStorage, out: Path) -> Path:
    """Copy the training table into the stage folder: the job reads it from there (a
    local or shared path even when curation writes to an object store), and the folder
    keeps the exact table the stage trained on."""
    target = out / TABLE
    if not storage.out().exists(TABLE):
        raise Failure(f"no training table at {storage.out().path(TABLE)}; materialize training_dataset first")
    with storage.out().local_copy(TABLE) as local, atomic_path(target) as tmp:
        shutil.copyfile(local, tmp)
    return target


def loss_curve_markdown(points: list[tuple[int, float]], title: str, png: Path) -> str:
    """Plot the loss curve to `png` and return Markdown embedding it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    axes.plot([s for s, _ in points], [v for _, v in points], linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    with atomic_path(png) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return f"![loss curve](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def champion_init(index: int, out: Path, mlflow_tracking: MlflowTracking) -> tuple[Path, str]:
    """Download the registry's champion into the stage folder; (weights path, description)."""
    try:
        path, version = download_champion(mlflow_tracking.tracking_uri, out / "init_champion",
                                          mlflow_tracking.model_name)
    except (LookupError, FileNotFoundError) as err:
        raise Failure(f"stdit2_stage{index}: init 'champion': {err}") from None
    return path, f"{mlflow_tracking.model_name} v{version} (champion)"


def _reused(index: int, plan: StagePlan, result: dict, init_source: str | None) -> MaterializeResult:
    metadata = {"up_to_date": MetadataValue.text(f"inputs unchanged since the run that wrote {plan.out / 'result.json'}"
                                                 "; nothing launched"),
                "stage_config": plan.config_name, "init_source": init_source or ("stage config" if plan.init else "random"),
                "final_loss": float(result["final_loss"]), "steps": int(result["steps"]),
                "wall_seconds": float(result["wall_seconds"]), "checkpoint": MetadataValue.path(result["export_path"]),
                "training_table": MetadataValue.path(str(plan.data))}
    if result.get("mlflow_run_url"):
        metadata["mlflow_run"] = MetadataValue.url(result["mlflow_run_url"])
    return MaterializeResult(metadata=metadata)


def stage_app(plan: StagePlan, settings: TrainingSettings, launcher: TorchXLauncher,
              pipes_env: dict[str, str]) -> AppDef:
    """The TorchX app a stage asset submits (docs/cluster.md shows its Kubernetes pod)."""
    return train_stage_component(
        **{k: v for k, v in vars(plan.args).items() if v is not None}, nnodes=settings.nnodes,
        nproc_per_node=settings.nproc_per_node, image=settings.image, python=launcher.python(),
        cpu=settings.cpu_per_node, gpu=settings.gpu_per_node, memMB=settings.mem_mb_per_node,
        env=settings.job_env(pipes_env), mounts=settings.mounts, max_retries=settings.max_retries)


def train_stage_asset(context: AssetExecutionContext, index: int, run_config: StageRunConfig,
                      curation_storage: CurationStorage, cache_settings: CacheSettings,
                      training_settings: TrainingSettings, torchx_launcher: TorchXLauncher,
                      mlflow_tracking: MlflowTracking) -> Iterator:
    out = training_settings.stage_dir(index)
    init, init_source = None, None
    if run_config.init == "champion":
        init, init_source = champion_init(index, out, mlflow_tracking)
    plan = plan_stage(index, training_settings, snapshot_table(curation_storage, out), init, cache_settings.root)
    try:  # a stage folder a training job still holds is neither reused nor cleared under it
        with FolderLock(out, f"Dagster asset stdit2_stage{index}, checking its inputs"):
            previous = StageFolder(out).reuse_or_reset(plan.inputs)
    except FolderLocked as err:
        raise Failure(f"stdit2_stage{index}: {err}") from None
    if previous is not None:
        context.log.info(f"stage {index}: inputs unchanged, reusing {plan.out / 'export'}")
        yield _reused(index, plan, previous, init_source)
        return
    context.log.info(f"stage {index}: {plan.config_name}, init {plan.init or 'random'}, out {plan.out}")
    # Messages go through a file in the stage folder, which the job and this process share
    # on every scheduler we support (docs/torchx.md), rather than through /tmp here.
    messages = out / "pipes" / f"{context.run.run_id}.jsonl"
    handle, session = torchx_launcher.run_pipes(
        context, lambda env: stage_app(plan, training_settings, torchx_launcher, env), messages)
    points = [(m["step"], m["metrics"]["loss"]) for m in session.get_custom_messages()
              if isinstance(m, dict) and "loss" in m.get("metrics", {})]
    extra = {"stage_config": plan.config_name, "init": MetadataValue.path(str(plan.init)) if plan.init else "random",
             "init_source": init_source or ("stage config" if plan.init else "random"),
             "torchx_app": handle, "training_table": MetadataValue.path(str(plan.data))}
    if points:
        extra["loss_curve"] = MetadataValue.md(
            loss_curve_markdown(points, f"stdit2_stage{index} ({plan.config_name})", out / "loss_curve.png"))
    results = session.get_results(implicit_materializations=False, metadata=extra)
    if not results:
        raise Failure(f"stdit2_stage{index}: job {handle} succeeded but reported nothing through Dagster Pipes "
                      f"(it writes to {messages}, which must be the same file here; see docs/torchx.md)")
    yield from results


# Every stage launch shares one Dagster pool, so an instance can bound how many training
# jobs run at once across runs: `dagster instance concurrency set training 1`.
TRAINING_POOL = "training"


def _stage_asset(index: int, previous):
    deps = [text_embeddings, video_latents, *([previous] if previous is not None else [])]

    @asset(name=f"stdit2_stage{index}", deps=deps, group_name="training", kinds={"pytorch", "mlflow"}, pool=TRAINING_POOL,
           description=f"STDiT-2 training stage {index} (TorchX job; DCP checkpoints + export/model.safetensors).")
    def stage(context: AssetExecutionContext, config: StageRunConfig, curation_storage: CurationStorage,
              cache_settings: CacheSettings, training_settings: TrainingSettings, torchx_launcher: TorchXLauncher,
              mlflow_tracking: MlflowTracking):
        yield from train_stage_asset(context, index, config, curation_storage, cache_settings, training_settings,
                                     torchx_launcher, mlflow_tracking)

    return stage


stdit2_stage0 = _stage_asset(0, None)
stdit2_stage1 = _stage_asset(1, stdit2_stage0)
stdit2_stage2 = _stage_asset(2, stdit2_stage1)
stdit2_stage3 = _stage_asset(3, stdit2_stage2)

training_assets = [stdit2_stage0, stdit2_stage1, stdit2_stage2, stdit2_stage3]


def _loss_check(index: int, stage_asset):
    # Blocking: a stage whose loss is not finite or rose past RISE_LIMIT stops the run here, so neither
    # the next stage nor the evaluation (and with it promotion) sees a diverged model.
    @asset_check(asset=stage_asset, name=f"stdit2_stage{index}_loss", blocking=True,
                 description=f"Every logged loss is finite and, from {TREND_POINTS} logged steps on, the last "
                             f"quarter's mean is at most {RISE_LIMIT}x the first quarter's (a flat fine-tune passes, "
                             "a diverging run does not). Blocks the next stage and the evaluation.")
    def check(training_settings: TrainingSettings) -> AssetCheckResult:
        metrics = training_settings.stage_dir(index) / "metrics.jsonl"
        if not metrics.is_file():
            return AssetCheckResult(passed=False, metadata={"problem": f"{metrics} not found"})
        summary = summarize_loss(metrics)
        return AssetCheckResult(passed=summary.healthy, metadata={
            "logged_steps": summary.points, "all_finite": summary.finite,
            "trend": ("decreasing" if summary.decreased else "rising" if summary.rose else "flat")
            if summary.trend_judged
            else f"not judged (fewer than {TREND_POINTS} logged steps)",
            "first_quarter_loss": summary.first, "last_quarter_loss": summary.last})

    return check


training_checks = [_loss_check(i, a) for i, a in enumerate(training_assets)]
