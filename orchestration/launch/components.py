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

from opensora_core.train.args import TrainArgs, train_argv, train_flags

ENTRY_MODULE = "orchestration.launch.train_entry"
ROLE_NAME = "trainer"
# The image built from this repository (docs/torchx.md); local_cwd ignores it and runs
# in the working directory with the current environment.
DEFAULT_IMAGE = "opensora-mlops:latest"
RDZV_PORT = 29500


def app_name(stage: str) -> str:
    """`tiny/stage0` -> `opensora-tiny-stage0`: schedulers accept lowercase, digits and dashes."""
    return "opensora-" + re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")


def train_stage_component(
    stage: str,
    data: str,
    out: str,
    profile: str,
    cache: Optional[str] = None,
    init: Optional[str] = None,
    max_steps: Optional[int] = None,
    ckpt_every: Optional[int] = None,
    seed: Optional[int] = None,
    keep_last: int = 2,
    parent_run_id: Optional[str] = None,
    lr: Optional[float] = None,
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

    The parameters before `nnodes` are `opensora train`'s flags (`TrainArgs`, declared
    in opensora_core/train/args.py, with their help); `profile` has no default here, so
    a job always names the machines it runs on.

    Args:
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
    # The parameters, read before any other local exists; those before `nnodes` are
    # exactly the declared fields (tests/orchestration/test_launch.py checks it).
    given = dict(locals())
    train = TrainArgs(**{flag.name: given[flag.name] for flag in train_flags()})
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes ({nnodes}) and nproc_per_node ({nproc_per_node}) must be >= 1")
    launcher = [python, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node)]
    program = ["-m", ENTRY_MODULE, *train_argv(train)]
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


def _document_train_parameters() -> None:
    """Put each declared field's help into the docstring's Args, where `torchx run
    ... --help` reads it."""
    doc = (train_stage_component.__doc__ or "").splitlines(keepends=True)
    at = next(i for i, line in enumerate(doc) if line.strip() == "Args:")
    indent = doc[at][: len(doc[at]) - len(doc[at].lstrip())] + "    "
    doc[at + 1:at + 1] = [f"{indent}{flag.name}: {flag.info.help}\n" for flag in train_flags()]
    train_stage_component.__doc__ = "".join(doc)


_document_train_parameters()
