"""Resources: adapters to outside systems. They import nothing of `assets_defs`."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

import torchx.runner.config as torchx_config
import yaml
from dagster import ConfigurableResource, EnvVar, Failure, MetadataValue
from pydantic import Field
from torchx import specs
from torchx.runner import Runner
from torchx.schedulers import get_scheduler_factories

from opensora_core.config import (
    ProfileConfig,
    find_config,
    load_profile,
    project_root,
    referenced_env_vars,
)
from opensora_core.curation.config import CurationConfig, load_curation_config
from opensora_core.curation.storage import FileList, Storage, open_source
from opensora_core.eval.evaluate import PROMOTION_FLOORS, PROMOTION_METRICS
from opensora_core.eval.round import RoundSettings
from opensora_core.tracking.store import TrackingStore, TrackingUnreachable
from orchestration.launch.components import DEFAULT_IMAGE
from orchestration.launch.pipes import run_with_pipes
from orchestration.launch.slurm import create_scheduler as create_slurm_scheduler

# The folder holding opensora_core/ and orchestration/: what a local job must import.
_CHECKOUT = str(Path(__file__).resolve().parents[1])


def env_or(name: str, default: str) -> str | EnvVar:
    """Dagster's `EnvVar(name)` when the variable is set (resolved when a run starts, and
    shown as such in the UI's resource view), else `default` (from the profile)."""
    return EnvVar(name) if name in os.environ else default



def active_profile_name() -> str:
    """The profile this Dagster code location runs with: `OPENSORA_PROFILE`, else embedded."""
    return os.environ.get("OPENSORA_PROFILE", "embedded")


def active_profile() -> ProfileConfig:
    """`active_profile_name()`'s profile, loaded now (its `${VAR}`s read now)."""
    return load_profile(active_profile_name())

class CurationStorage(ConfigurableResource):
    """Where raw files arrive and where curated partitions and the training table go.

    Both roots are fsspec URLs or local folders; with an object store every worker
    reads and writes the same place, so partitions can run on different machines.
    """

    raw_root: str = Field(description="Folder or fsspec URL the sensor watches for raw videos and images, or a "
                                      "list of them (.txt, one path or URL per line; .csv with a 'path' column).")
    curated_root: str = Field(description="Folder or fsspec URL of partitions and the training table.")
    data_config: str = Field("default", description="configs/data stem or YAML path with scene and filter settings.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (credentials, endpoint).")

    def source(self) -> Storage | FileList:
        return open_source(self.raw_root, **self.storage_options)

    def out(self) -> Storage:
        return Storage(self.curated_root, **self.storage_options)

    def curation_config(self) -> CurationConfig:
        return load_curation_config(self.data_config)


def curation_storage_from_env(profile: ProfileConfig | None = None) -> CurationStorage:
    """Roots from `OPENSORA_RAW_ROOT` / `OPENSORA_CURATED_ROOT`, else `raw/` and
    `curated/` under the data root of the profile named by `OPENSORA_PROFILE`
    (default `embedded`)."""
    data_root = (profile or active_profile()).data_root.rstrip("/")
    return CurationStorage(
        raw_root=env_or("OPENSORA_RAW_ROOT", f"{data_root}/raw"),
        curated_root=env_or("OPENSORA_CURATED_ROOT", f"{data_root}/curated"),
        data_config=env_or("OPENSORA_DATA_CONFIG", "default"),
    )


class CacheSettings(ConfigurableResource):
    """Where the text and video caches live and what decides their contents.

    Caches are local folders on the machine that trains (safetensors are memory-mapped);
    the video cache covers every bucket size any of `stages` can assign.
    """

    root: str = Field(description="Local folder holding text/ and video/ caches.")
    profile: str = Field("embedded", description="Profile naming the VAE and text encoder.")
    preset: str = Field("stdit2-tiny", description="Model preset: caption width and length.")
    stages: list[str] = Field(description="Stage configs whose buckets decide the cached video sizes.")

    def text_root(self) -> str:
        return f"{self.root.rstrip('/')}/text"

    def video_root(self) -> str:
        return f"{self.root.rstrip('/')}/video"


def cache_settings_from_env(profile: ProfileConfig | None = None) -> CacheSettings:
    """`OPENSORA_CACHE_ROOT` (default `caches/` under the profile's artifacts root),
    `OPENSORA_PRESET` and `OPENSORA_STAGES` (comma-separated; default the tiny stages)."""
    artifacts = (profile or active_profile()).artifacts_root.rstrip("/")
    stages = os.environ.get("OPENSORA_STAGES", "tiny/stage0,tiny/stage1,tiny/stage2,tiny/stage3")
    return CacheSettings(
        root=env_or("OPENSORA_CACHE_ROOT", f"{artifacts}/caches"),
        profile=active_profile_name(),
        preset=env_or("OPENSORA_PRESET", "stdit2-tiny"),
        stages=[s.strip() for s in stages.split(",") if s.strip()],
    )


class TrainingSettings(ConfigurableResource):
    """What the `stdit2_stage0..3` assets train and where their stage folders go.

    `out_root` must be the same path for Dagster and for the training job (on
    Kubernetes: the same volume mounted at the same place), since the job writes the
    stage folders and the next stage reads the previous one's export from there.
    """

    profile: str = Field("embedded", description="Profile the training job runs under.")
    stages: list[str] = Field(description="Stage configs of stdit2_stage0 .. stdit2_stage3, in order.")
    out_root: str = Field(description="Folder of the stage folders stage0/ .. stage3/ (checkpoints, export).")
    max_steps: int | None = Field(None, description="Overrides every stage config's max_steps (demo, tests).")
    nnodes: int = Field(1, ge=1, description="Hosts per training job.")
    nproc_per_node: int = Field(1, ge=1, description="Training processes per host (one per GPU).")
    gpu_per_node: int = Field(0, ge=0, description="GPUs requested per host.")
    cpu_per_node: int = Field(2, ge=1, description="CPUs requested per host.")
    mem_mb_per_node: int = Field(8192, ge=1, description="Memory requested per host, MiB.")
    image: str = Field(DEFAULT_IMAGE, description="Container image of the job (kubernetes).")
    mounts: list[str] = Field(default_factory=list, description="TorchX mounts, e.g. type=volume,src=pvc,dst=/data.")
    max_retries: int = Field(0, ge=0, description="Job restarts after a failure; each resumes from a checkpoint.")
    forward_env: list[str] = Field(default_factory=list, description=(
        "Variables copied, where set here, into the job's environment: a pod inherits nothing from Dagster's."))

    def job_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The job's environment: `forward_env` as set in this process, then `extra` (Pipes)."""
        return {**{k: os.environ[k] for k in self.forward_env if k in os.environ}, **(extra or {})}

    def stage_config(self, index: int) -> str:
        if not 0 <= index < len(self.stages):
            raise ValueError(f"stdit2_stage{index}: TrainingSettings.stages has {len(self.stages)} entries "
                             f"({', '.join(self.stages)}); expected one per stage 0..3")
        return self.stages[index]

    def stage_dir(self, index: int) -> Path:
        return Path(self.out_root) / f"stage{index}"

    def export_path(self, index: int) -> Path:
        """Where stage `index`'s trainer writes its consolidated weights."""
        return self.stage_dir(index) / "export" / "model.safetensors"


# Read by the job itself, not through the profile: MLflow's artifact root and s3 endpoint.
JOB_STORE_ENV = ("OPENSORA_MLFLOW_ARTIFACT_ROOT", "MLFLOW_S3_ENDPOINT_URL")


def profile_env_names(name: str) -> list[str]:
    """The `${VAR}`s the profile file `name` reads: the job loads the same file, so it needs them too."""
    try:
        return referenced_env_vars(yaml.safe_load(find_config("profiles", name).read_text()))
    except (OSError, ValueError, yaml.YAMLError):  # a profile that does not load fails elsewhere, with its own message
        return []


def training_settings_from_env(profile: ProfileConfig | None = None) -> TrainingSettings:
    """`OPENSORA_PROFILE`; `OPENSORA_TRAIN_STAGES` (comma-separated; default the tiny
    stages on a CPU profile, the published ones otherwise); `OPENSORA_TRAIN_ROOT`
    (default `train/` under the artifacts root); `OPENSORA_MAX_STEPS`;
    `OPENSORA_NPROC_PER_NODE` (default the profile's); on clusters, `OPENSORA_TRAIN_CPU` and
    `OPENSORA_TRAIN_MEM_MB` (per host), `OPENSORA_TRAIN_IMAGE`,
    `OPENSORA_TRAIN_MOUNTS` (TorchX mounts separated by `;`) and `OPENSORA_TRAIN_ENV`
    (more variable names to forward, comma-separated; the profile's `${VAR}`s and
    JOB_STORE_ENV always are)."""
    name = active_profile_name()
    profile = profile or active_profile()
    prefix = "tiny/" if profile.device == "cpu" else ""
    stages = os.environ.get("OPENSORA_TRAIN_STAGES", ",".join(f"{prefix}stage{i}" for i in range(4)))
    nproc = int(os.environ.get("OPENSORA_NPROC_PER_NODE", profile.nproc_per_node))
    max_steps = os.environ.get("OPENSORA_MAX_STEPS")
    return TrainingSettings(
        profile=name,
        stages=[s.strip() for s in stages.split(",") if s.strip()],
        out_root=env_or("OPENSORA_TRAIN_ROOT", f"{profile.artifacts_root.rstrip('/')}/train"),
        max_steps=int(max_steps) if max_steps else None,
        nnodes=profile.nnodes,
        nproc_per_node=nproc,
        gpu_per_node=nproc if profile.device == "cuda" else 0,
        cpu_per_node=int(os.environ.get("OPENSORA_TRAIN_CPU", "2")),
        mem_mb_per_node=int(os.environ.get("OPENSORA_TRAIN_MEM_MB", "8192")),
        image=os.environ.get("OPENSORA_TRAIN_IMAGE") or DEFAULT_IMAGE,
        mounts=[m.strip() for m in os.environ.get("OPENSORA_TRAIN_MOUNTS", "").split(";") if m.strip()],
        forward_env=list(dict.fromkeys([
            *profile_env_names(name), *JOB_STORE_ENV,
            *(v.strip() for v in os.environ.get("OPENSORA_TRAIN_ENV", "").split(",") if v.strip())])),
    )


class MlflowTracking(ConfigurableResource):
    """The MLflow store the training jobs log to, and its model registry.

    A small adapter around `MlflowClient` (rather than dagster-mlflow's op-era
    resource): the tracking URI is the profile's, so Dagster and the training jobs
    always talk to the same store.
    """

    tracking_uri: str = Field(description="MLflow tracking (and registry) URI.")
    experiment: str = Field("opensora-stdit2", description="Experiment of the training and evaluation runs.")
    model_name: str = Field("stdit2", description="Registered model that evaluation promotes into.")
    ui_url: str | None = Field(None, description="Base URL of the MLflow UI for links (http URIs link to themselves).")

    def store(self) -> TrackingStore:
        return TrackingStore(self.tracking_uri, self.experiment, self.model_name, self.ui_url)

    def client(self):
        try:
            return self.store().client()
        except TrackingUnreachable as err:
            raise Failure(str(err)) from None

    def experiment_id(self, client) -> str:
        return self.store().experiment_id(client)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return self.store().run_url(experiment_id, run_id)


def mlflow_tracking_from_env(profile: ProfileConfig | None = None) -> MlflowTracking:
    """The tracking URI of the profile named by `OPENSORA_PROFILE`; `OPENSORA_MODEL_NAME`
    (default `stdit2`); `OPENSORA_MLFLOW_UI_URL` for links to a SQLite store's UI."""
    profile = profile or active_profile()
    return MlflowTracking(tracking_uri=profile.mlflow_tracking_uri,
                          model_name=env_or("OPENSORA_MODEL_NAME", "stdit2"),
                          ui_url=os.environ.get("OPENSORA_MLFLOW_UI_URL"))


class EvaluationSettings(ConfigurableResource):
    """What `eval_samples` generates and scores, and the score that decides promotion."""

    out_root: str = Field(description="Folder of evaluation rounds (samples, metrics.json, previews).")
    prompts: str = Field("default", description="'default' (configs/eval/prompts.yaml), a YAML or a text file.")
    seeds: int = Field(2, ge=1, description="Samples per prompt (seeds 0..N-1).")
    steps: int = Field(20, ge=1, description="DPM-Solver++ steps per sample.")
    cfg_scale: float = Field(7.0, description="Classifier-free guidance scale.")
    metric: Literal[PROMOTION_METRICS] = Field(
        "prompt_following", description="Score compared with the champion's to decide promotion.")
    clip: str | None = Field(None, description="Local CLIP folder: adds clip_score (none is downloaded).")
    promotion_floor: Literal[PROMOTION_FLOORS] = Field(
        "chance", description="'chance': a score at or below chance on the prompt set is never promoted.")

    def round_settings(self) -> RoundSettings:
        return RoundSettings(self.out_root, self.prompts, self.seeds, self.steps, self.cfg_scale, self.metric,
                             self.clip, self.promotion_floor)


def evaluation_settings_from_env(profile: ProfileConfig | None = None) -> EvaluationSettings:
    """`OPENSORA_EVAL_ROOT` (default `eval/` under the artifacts root), `OPENSORA_EVAL_PROMPTS`,
    `OPENSORA_EVAL_SEEDS`, `OPENSORA_EVAL_STEPS`, `OPENSORA_EVAL_METRIC`, `OPENSORA_EVAL_CLIP`,
    `OPENSORA_EVAL_PROMOTION_FLOOR` (chance, or none)."""
    profile = profile or active_profile()
    return EvaluationSettings(
        out_root=env_or("OPENSORA_EVAL_ROOT", f"{profile.artifacts_root.rstrip('/')}/eval"),
        prompts=env_or("OPENSORA_EVAL_PROMPTS", "default"),
        seeds=int(os.environ.get("OPENSORA_EVAL_SEEDS", "2")),  # read now: EnvVar.int skips the bounds check
        steps=int(os.environ.get("OPENSORA_EVAL_STEPS", "20")),
        metric=os.environ.get("OPENSORA_EVAL_METRIC", "prompt_following"),
        clip=os.environ.get("OPENSORA_EVAL_CLIP") or None,
        promotion_floor=os.environ.get("OPENSORA_EVAL_PROMOTION_FLOOR", "chance"),
    )


class TorchXLaunchError(Failure):
    """A TorchX job ended in a state other than SUCCEEDED; carries the failing replicas' log tails."""


class TorchXLauncher(ConfigurableResource):
    """Runs TorchX AppDefs and waits for them: `local_cwd` on one machine, `kubernetes`
    or `slurm` on clusters (run options in `scheduler_cfg`, then `.torchxconfig`).

    The job's output is copied to this process's stdout while it runs (Dagster keeps it
    as the step's compute log); a failed job raises :class:`TorchXLaunchError` whose
    message ends with the failing replicas' last log lines.
    """

    scheduler: Literal["local_cwd", "kubernetes", "slurm"] = Field("local_cwd", description="TorchX scheduler.")
    scheduler_cfg: dict[str, Any] = Field(default_factory=dict, description="Scheduler run options (torchx runopts).")
    log_dir: str = Field(description="Replica logs: local_cwd <log_dir>/torchx/<app_id>/<role>/<replica>/, "
                                     "slurm <log_dir>/slurm/slurm-<jobid>-<role>-<replica>.out/.err.")
    config_dir: str | None = Field(None, description="Folder whose .torchxconfig supplies options not set here.")
    wait_interval_s: float = Field(1.0, gt=0, description="Seconds between status polls.")
    log_tail_lines: int = Field(60, ge=1, description="Log lines per failing replica in the error.")

    def python(self) -> str:
        """The interpreter jobs run: this one on local_cwd and slurm (whose nodes share the
        project folder and its virtualenv, docs/torchx.md), the image's `python` on kubernetes."""
        return "python" if self.scheduler == "kubernetes" else sys.executable

    def run_config(self) -> dict[str, Any]:
        cfg = dict(self.scheduler_cfg)
        if self.scheduler == "local_cwd":
            cfg.setdefault("log_dir", self.log_dir)
        elif self.scheduler == "slurm":
            cfg.setdefault("log_dir", str(Path(self.log_dir) / "slurm"))
        if self.config_dir:
            torchx_config.apply(self.scheduler, cfg, dirs=[self.config_dir])
        return cfg

    def dryrun(self, app: specs.AppDef) -> Any:
        """What `launch` would submit (the scheduler's request), without submitting it."""
        with _own_signal_handlers(), torchx_runner() as runner:
            return runner.dryrun(self._prepared(app), self.scheduler, cfg=self.run_config())

    def launch(self, app: specs.AppDef, follow: bool = True, stream: TextIO | None = None) -> str:
        """Run `app` to completion and return its handle; raise TorchXLaunchError unless it succeeded.

        With `follow`, replica 0's log is copied to `stream` (default: stdout) as it grows.
        """
        with _own_signal_handlers(), torchx_runner() as runner:
            handle = runner.run(self._prepared(app), self.scheduler, cfg=self.run_config())
            follower = None
            if follow:
                follower = threading.Thread(target=_follow, daemon=True,
                                            args=(runner, handle, app.roles[0].name, stream or sys.stdout))
                follower.start()
            try:
                status = runner.wait(handle, wait_interval=self.wait_interval_s)
            except BaseException:
                runner.cancel(handle)  # interrupted (Dagster run terminated): do not leave the job behind
                raise
            if follower is not None:
                follower.join(timeout=10)
            if status is None or status.state != specs.AppState.SUCCEEDED:
                raise self._failure(runner, handle, app, status)
            return handle

    def run_pipes(self, context, build_app, messages: Path) -> tuple[str, Any]:
        """Launch `build_app(env)` inside a Dagster Pipes session reading `messages`
        (`orchestration.launch.pipes`): (the job's handle, the session with its results)."""
        return run_with_pipes(self.launch, context, build_app, Path(messages))

    def _prepared(self, app: specs.AppDef) -> specs.AppDef:
        if self.scheduler == "kubernetes":
            return app
        # The job imports this checkout's code, whatever the working directory (on slurm:
        # the checkout on the shared filesystem).
        app = copy.deepcopy(app)
        for role in app.roles:
            role.env["PYTHONPATH"] = os.pathsep.join(p for p in (_CHECKOUT, os.environ.get("PYTHONPATH")) if p)
        return app

    def _failure(self, runner, handle: str, app: specs.AppDef, status) -> TorchXLaunchError:
        state = status.state.name if status is not None else "UNKNOWN (the scheduler no longer knows the job)"
        failed = [(r.role, r.id) for role in (status.roles if status else []) for r in role.replicas
                  if r.state == specs.AppState.FAILED]
        replicas = failed or [(role.name, k) for role in app.roles for k in range(role.num_replicas)][:1]
        tails = []
        for role_name, k in replicas:
            try:
                lines = list(runner.log_lines(handle, role_name, k))[-self.log_tail_lines :]
                text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
            except Exception as err:  # noqa: BLE001 - the error must still be raised without logs
                text = f"(logs unavailable: {type(err).__name__}: {err})\n"
            tails.append(f"--- {role_name} replica {k}, last {self.log_tail_lines} log lines ---\n{text}")
        message = status.msg if status is not None and status.msg not in ("", specs.NONE) else ""
        return TorchXLaunchError(
            description=f"TorchX job {handle} ended {state}{': ' + message if message else ''}\n" + "".join(tails),
            metadata={"app_handle": handle, "state": state, "log_tail": MetadataValue.text("".join(tails))},
        )


def torchx_runner() -> Runner:
    """TorchX's runner with its schedulers, `slurm` replaced by ours, which works without
    job accounting (orchestration/launch/slurm.py)."""
    return Runner("torchx", {**get_scheduler_factories(), "slurm": create_slurm_scheduler})


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """TorchX's local scheduler replaces the process's SIGINT/SIGTERM handlers; put the
    host's (Dagster's, pytest's) back once the job is over."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _follow(runner, handle: str, role_name: str, stream: TextIO) -> None:
    """Copy replica 0's log to `stream` until the job ends (best effort: a scheduler
    without log access leaves the stream quiet, and the error still carries the tail)."""
    try:
        for line in runner.log_lines(handle, role_name, 0, should_tail=True):
            stream.write(line if line.endswith("\n") else line + "\n")
            stream.flush()
    except Exception as err:  # noqa: BLE001
        stream.write(f"(not following {handle}'s log: {type(err).__name__}: {err})\n")


def torchx_launcher_from_env(profile: ProfileConfig | None = None) -> TorchXLauncher:
    """Scheduler from the profile (`OPENSORA_PROFILE`); run options as JSON in
    `OPENSORA_TORCHX_CFG`; local logs under `<artifacts>/torchx`; `.torchxconfig` from
    the project folder."""
    profile = profile or active_profile()
    return TorchXLauncher(
        scheduler=profile.torchx_scheduler,
        scheduler_cfg=json.loads(os.environ.get("OPENSORA_TORCHX_CFG", "{}")),
        log_dir=f"{profile.artifacts_root.rstrip('/')}/torchx",
        config_dir=str(project_root()),
    )
