"""TorchX's Slurm scheduler, made to work on a cluster without job accounting.

TorchX 0.7.0's `SlurmScheduler.describe` asks `sacct`, which on a Slurm without a
database daemon (`AccountingStorageType=accounting_storage/none`, the default of a
fresh install and of many small clusters) exits 1 with "Slurm accounting storage is
disabled"; `describe` raises `CalledProcessError`, so `runner.wait` fails on its first
poll of a job that is running fine. Its state table also lacks states a job passes
through (`COMPLETING`, `CONFIGURING`, ...) and `sacct`'s "CANCELLED by <uid>", which
fail its assertion. Here:

- `describe` asks the controller first (`squeue --states=all`: every job it still
  holds, `MinJobAge` seconds after the end, up to date), and `sacct` only for a job the
  controller has forgotten; without accounting that job is unknown (None), as TorchX
  reports a job that no longer exists.
- the run option `log_dir` puts the replicas' logs (and the batch script's own) in one
  folder rather than in the submitting process's working directory.
- an environment value with a comma is refused before submission: `srun --export`
  separates variables with commas and would cut it.
- following a log asks for the job's state once a second, not TorchX's ten times
  (each is an RPC to the controller).

`orchestration/resources.py:torchx_runner` hands this class to TorchX for `slurm`.
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from torchx.schedulers import slurm_scheduler as torchx_slurm
from torchx.schedulers.api import DescribeAppResponse, Stream, filter_regex, split_lines_iterator
from torchx.schedulers.local_scheduler import LogIterator
from torchx.specs import (
    AppDef,
    AppDryRunInfo,
    AppState,
    ReplicaStatus,
    Role,
    RoleStatus,
    macros,
    runopts,
)

# Every state `squeue --format=%T` and `sacct` print (Slurm 22.05's job_state_string).
SLURM_STATES: dict[str, AppState] = {
    **torchx_slurm.SLURM_STATES,
    "COMPLETING": AppState.RUNNING,
    "CONFIGURING": AppState.PENDING,
    "REQUEUE_FED": AppState.PENDING,
    "REQUEUE_HOLD": AppState.PENDING,
    "RESV_DEL_HOLD": AppState.PENDING,
    "SIGNALING": AppState.RUNNING,
    "SPECIAL_EXIT": AppState.FAILED,
    "STAGE_OUT": AppState.RUNNING,
    "STOPPED": AppState.PENDING,
}

ACCOUNTING_DISABLED = "accounting storage is disabled"


def slurm_state(text: str) -> AppState:
    """`CANCELLED by 0` -> CANCELLED; a state this table lacks is UNKNOWN, not an error."""
    word = text.strip().split(" ")[0].rstrip("+")
    return SLURM_STATES.get(word, AppState.UNKNOWN)


def describe_rows(app_id: str, rows: Iterable[dict[str, str]]) -> DescribeAppResponse | None:
    """The job's status from rows with `JobID` (`<id>` or `<id>+<het offset>`, steps
    `<id>.<step>` skipped), `JobName` (`<role>-<replica>`, as TorchX names them) and
    `State`; None when no row is the job's."""
    roles: dict[str, Role] = {}
    statuses: dict[str, RoleStatus] = {}
    states: list[AppState] = []
    messages: list[str] = []
    for row in rows:
        job_id, _, offset = row["JobID"].partition("+")
        if job_id != app_id or "." in job_id or "." in offset:
            continue
        state = slurm_state(row["State"])
        states.append(state)
        messages.append(row["State"].strip())
        role, _, replica = row["JobName"].rpartition("-")
        if not role or not replica.isdigit():
            continue
        if role not in roles:
            roles[role] = Role(name=role, num_replicas=0, image="")
            statuses[role] = RoleStatus(role, [])
        roles[role].num_replicas += 1
        statuses[role].replicas.append(ReplicaStatus(id=int(replica), role=role, state=state, hostname=""))
    if not states:
        return None
    return DescribeAppResponse(app_id=app_id, roles=list(roles.values()), roles_statuses=list(statuses.values()),
                               state=_job_state(states), msg=", ".join(dict.fromkeys(messages)))


def _job_state(states: list[AppState]) -> AppState:
    """A heterogeneous job's state from its components': any still going keeps it going;
    once all are over, the worst outcome."""
    for state in (AppState.RUNNING, AppState.PENDING, AppState.FAILED, AppState.CANCELLED, AppState.UNKNOWN):
        if state in states:
            return state
    return states[0]


class SlurmScheduler(torchx_slurm.SlurmScheduler):
    """`torchx_slurm.SlurmScheduler` that works without `sacct` (see the module's docstring)."""

    def __init__(self, session_name: str) -> None:
        super().__init__(session_name)
        self._log_dirs: dict[str, str] = {}

    def _run_opts(self) -> runopts:
        opts = super()._run_opts()
        opts.add("log_dir", type_=str, default=None,
                 help="Folder (shared with the nodes) of the replica logs slurm-<jobid>-<role>-<replica>.out/.err "
                      "and the batch script's slurm-<jobid>.out; default: the submitting directory.")
        return opts

    def _submit_dryrun(self, app: AppDef, cfg: Any) -> AppDryRunInfo:
        for role in app.roles:
            for key, value in role.env.items():
                if "," in value:
                    raise ValueError(f"slurm: environment variable {key} of role {role.name} contains a comma, "
                                     "which srun --export cannot pass; set it in the submitting environment instead")
        info = super()._submit_dryrun(app, cfg)
        log_dir = cfg.get("log_dir")
        if log_dir:
            log_dir = os.path.abspath(log_dir)
            for i, (name, replica) in enumerate(info.request.replicas.items()):
                for stream in ("output", "error"):
                    suffix = "out" if stream == "output" else "err"
                    replica.srun_opts[stream] = os.path.join(log_dir, f"slurm-{macros.app_id}-{name}.{suffix}")
                if i == 0:  # the batch script's own output (its `set -x` trace, the exit code)
                    replica.sbatch_opts["output"] = os.path.join(log_dir, "slurm-%j.out")
            info.request.log_dir = log_dir
        return info

    def schedule(self, dryrun_info: AppDryRunInfo) -> str:
        log_dir = getattr(dryrun_info.request, "log_dir", None)
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        job_id = super().schedule(dryrun_info)
        if log_dir:
            self._log_dirs[job_id] = log_dir
        return job_id

    def describe(self, app_id: str) -> DescribeAppResponse | None:
        queued = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={app_id}", "--format=%i|%j|%T"],
                                capture_output=True, text=True, check=False)
        if queued.returncode == 0:
            rows = [dict(zip(("JobID", "JobName", "State"), line.split("|", 2), strict=True))
                    for line in queued.stdout.splitlines() if line.count("|") >= 2]
            found = describe_rows(app_id, rows)
            if found is not None:
                return found
        elif "invalid job id" not in queued.stderr.lower():
            raise RuntimeError(f"squeue failed (exit {queued.returncode}): {queued.stderr.strip()}")
        # The controller has forgotten the job (MinJobAge): only accounting still knows it.
        past = subprocess.run(["sacct", "--parsable2", "--format=JobID,JobName,State", "-j", app_id],
                              capture_output=True, text=True, check=False)
        if past.returncode != 0:
            if ACCOUNTING_DISABLED in past.stderr.lower():
                return None
            raise RuntimeError(f"sacct failed (exit {past.returncode}): {past.stderr.strip()}")
        return describe_rows(app_id, csv.DictReader(past.stdout.splitlines(), delimiter="|"))

    def log_iter(self, app_id: str, role_name: str, k: int = 0, regex: str | None = None,
                 since: datetime | None = None, until: datetime | None = None, should_tail: bool = False,
                 streams: Stream | None = None) -> Iterable[str]:
        if app_id not in self._log_dirs:
            return super().log_iter(app_id, role_name, k, regex, since, until, should_tail, streams)
        if streams == Stream.COMBINED:
            raise ValueError("slurm keeps stdout and stderr apart: ask for one of them")
        extension = "out" if streams == Stream.STDOUT else "err"
        path = os.path.join(self._log_dirs[app_id], f"slurm-{app_id}-{role_name}-{k}.{extension}")
        lines = split_lines_iterator(_ThrottledLogIterator(app_id, path, self, should_tail=should_tail))
        return filter_regex(regex, lines) if regex else lines


class _ThrottledLogIterator(LogIterator):
    """TorchX's log iterator, asking whether the job has ended at most every `poll_s`."""

    poll_s = 1.0
    _next_check = 0.0

    def _check_finished(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.poll_s
            super()._check_finished()


def create_scheduler(session_name: str, **kwargs: Any) -> SlurmScheduler:
    return SlurmScheduler(session_name)
