"""TorchX component for one training stage: `torchrun` over `orchestration.launch.train_entry`.

The same AppDef runs on `local_cwd`, `kubernetes` and `slurm`; only the scheduler and
its run config differ (see docs/torchx.md). From the TorchX CLI:

    torchx run --scheduler local_cwd orchestration/launch/components.py:train_stage_component \\
        --stage tiny/stage0 --profile embedded --data data/curated/meta.parquet --out artifacts/train/stage0
"""

# The TorchX CLI reads the component's annotations (from the source, and at run time, so
# no `from __future__ import annotations`) and accepts only typing's Optional/Dict/List.
# ruff: noqa: UP006, UP035, UP045

import re
import shlex
from typing import Dict, List, Optional

from torchx import specs

ENTRY_MODULE = "orchestration.launch.train_entry"
ROLE_NAME = "trainer"
# The image built from this repository (docs/torchx.md); local_cwd ignores it and runs
# in the working directory with the current environment.
DEFAULT_IMAGE = "opensora-mlops:latest"
RDZV_PORT = 29500


def train_args(
    stage: str,
    profile: str,
    data: str,
    out: str,
    cache: str | None = None,
    init: str | None = None,
    max_steps: int | None = None,
    ckpt_every: int | None = None,
    seed: int | None = None,
    parent_run_id: str | None = None,
) -> list[str]:
    """The command-line flags of `opensora train` (and of the entry) for these values."""
    args = ["--stage", stage, "--profile", profile, "--data", data, "--out", out]
    optional = {"--cache": cache, "--init": init, "--max-steps": max_steps, "--ckpt-every": ckpt_every,
                "--seed": seed, "--parent-run-id": parent_run_id}
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    return args


def app_name(stage: str) -> str:
    """`tiny/stage0` -> `opensora-tiny-stage0`: schedulers accept lowercase, digits and dashes."""
    return "opensora-" + re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")


def train_stage_component(
    stage: str,
    profile: str,
    data: str,
    out: str,
    cache: Optional[str] = None,
    init: Optional[str] = None,
    max_steps: Optional[int] = None,
    ckpt_every: Optional[int] = None,
    seed: Optional[int] = None,
    parent_run_id: Optional[str] = None,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    python: str = "python",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,  # TorchX's own name for the field
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    max_retries: int = 0,
) -> specs.AppDef:
    """Train one STDiT-2 stage under torchrun.

    Args:
        stage: stage config, path or stem (stage1, tiny/stage1)
        profile: profile name or path (embedded, cluster)
        data: training table (meta.csv or meta.parquet) as the job sees it
        out: stage folder; one holding checkpoints resumes from the newest
        cache: cache folder with text/ and video/
        init: weights to start from (the previous stage's model.safetensors)
        max_steps: overrides the stage config's max_steps
        ckpt_every: overrides the stage config's ckpt_every
        seed: overrides the stage config's seed
        parent_run_id: MLflow run to nest this stage's run under
        nnodes: number of hosts; more than one uses c10d rendezvous on replica 0
        nproc_per_node: processes per host (one per GPU)
        image: container image (kubernetes); ignored by local_cwd and slurm
        python: interpreter on the hosts (local_cwd: the current one)
        cpu: CPUs per host
        gpu: GPUs per host
        memMB: memory per host in MiB
        env: extra environment variables (Dagster Pipes bootstrap, credentials)
        mounts: TorchX mount specs, e.g. type=volume,src=opensora-data,dst=/data
        max_retries: whole-job restarts after a failure; each resumes from the newest checkpoint
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes ({nnodes}) and nproc_per_node ({nproc_per_node}) must be >= 1")
    launcher = [python, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node)]
    program = ["-m", ENTRY_MODULE, *train_args(stage, profile, data, out, cache, init, max_steps, ckpt_every,
                                                seed, parent_run_id)]
    if nnodes == 1:
        # --standalone: a private rendezvous on a free local port, so jobs never collide.
        entrypoint, args = python, [*launcher[1:], "--standalone", *program]
    else:
        # The scheduler names an environment variable that holds replica 0's host; only a
        # shell can read it. `$$` escapes TorchX's macro syntax, leaving `${VAR:-localhost}`.
        endpoint = f'"$${{{specs.macros.rank0_env}:-localhost}}:{RDZV_PORT}"'
        command = " ".join([
            "exec", shlex.join(launcher), "--rdzv-backend", "c10d", "--rdzv-id", specs.macros.app_id,
            "--rdzv-endpoint", endpoint, shlex.join(program),
        ])
        entrypoint, args = "sh", ["-c", command]
    role = specs.Role(
        name=ROLE_NAME,
        image=image,
        entrypoint=entrypoint,
        args=args,
        env=dict(env or {}),
        num_replicas=nnodes,
        resource=specs.Resource(cpu=cpu, gpu=gpu, memMB=memMB),
        port_map={"c10d": RDZV_PORT} if nnodes > 1 else {},
        max_retries=max_retries,
        retry_policy=specs.RetryPolicy.APPLICATION,
        mounts=specs.parse_mounts([opt for mount in mounts or [] for opt in mount.split(",")]),
    )
    return specs.AppDef(name=app_name(stage), roles=[role])
