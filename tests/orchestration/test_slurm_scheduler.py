"""The Slurm scheduler we hand TorchX (orchestration/launch/slurm.py), without a Slurm:
its reading of squeue/sacct rows, its fallbacks (fake commands on PATH) and the batch
script it writes. tests/cluster/test_slurm.py runs it against a real Slurm."""

from __future__ import annotations

import os
import stat
import sys

import pytest
from torchx import specs
from torchx.specs import AppState

from orchestration.launch.components import train_stage_component
from orchestration.launch.slurm import SlurmScheduler, describe_rows, slurm_state
from orchestration.resources import _CHECKOUT, TorchXLauncher


def _rows(*lines: str) -> list[dict[str, str]]:
    return [dict(zip(("JobID", "JobName", "State"), line.split("|"), strict=True)) for line in lines]


def test_states_torchx_lacks_are_read():
    assert slurm_state("CANCELLED by 0") == AppState.CANCELLED  # sacct's spelling
    assert slurm_state("COMPLETING") == AppState.RUNNING
    assert slurm_state("CONFIGURING") == AppState.PENDING
    assert slurm_state("SOMETHING_NEW") == AppState.UNKNOWN


def test_a_heterogeneous_job_is_running_until_every_component_ends():
    rows = _rows("7+0|trainer-0|COMPLETED", "7+1|trainer-1|RUNNING", "7+0.batch|batch|COMPLETED", "8|trainer-0|FAILED")
    status = describe_rows("7", rows)
    assert status.state == AppState.RUNNING
    assert [(r.id, r.state) for r in status.roles_statuses[0].replicas] == [(0, AppState.SUCCEEDED),
                                                                            (1, AppState.RUNNING)]
    assert describe_rows("7", _rows("7+0|trainer-0|COMPLETED", "7+1|trainer-1|FAILED")).state == AppState.FAILED
    assert describe_rows("9", rows) is None


def _fake(bin_dir, name: str, stdout: str, stderr: str = "", code: int = 0) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\nprintf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_describe_asks_the_controller_first(fake_bin):
    _fake(fake_bin, "squeue", "12|trainer-0|COMPLETED\n")
    _fake(fake_bin, "sacct", "", "sacct must not be asked", 3)
    assert SlurmScheduler("s").describe("12").state == AppState.SUCCEEDED


def test_a_job_the_controller_forgot_is_unknown_without_accounting(fake_bin):
    _fake(fake_bin, "squeue", "", "slurm_load_jobs error: Invalid job id specified", 1)
    _fake(fake_bin, "sacct", "", "sacct: error: Slurm accounting storage is disabled", 1)
    assert SlurmScheduler("s").describe("12") is None
    _fake(fake_bin, "sacct", "JobID|JobName|State\n12|trainer-0|CANCELLED by 0\n12.batch|batch|CANCELLED\n")
    assert SlurmScheduler("s").describe("12").state == AppState.CANCELLED


def test_an_unreachable_controller_is_an_error_not_a_vanished_job(fake_bin):
    _fake(fake_bin, "squeue", "", "slurm_load_jobs error: Unable to contact slurm controller", 1)
    with pytest.raises(RuntimeError, match="squeue failed .*Unable to contact slurm controller"):
        SlurmScheduler("s").describe("12")


def test_the_batch_script_runs_this_checkout_and_logs_to_the_log_dir(tmp_path):
    launcher = TorchXLauncher(scheduler="slurm", log_dir=str(tmp_path / "logs"))
    app = train_stage_component(stage="tiny/stage0", data="/d/meta.parquet", out="/d/stage0", profile="embedded",
                                nproc_per_node=2, python=launcher.python(), env={"DAGSTER_PIPES_CONTEXT": "abc"})
    script = str(launcher.dryrun(app))
    logs = tmp_path / "logs" / "slurm"
    assert f"--output={logs}/slurm-%j.out" in script
    assert f'--error={logs}/slurm-"$SLURM_JOB_ID"-trainer-0.err' in script
    assert f"{sys.executable} -m torch.distributed.run --nnodes 1 --nproc-per-node 2 --standalone" in script
    assert f"PYTHONPATH={_CHECKOUT}" in script and "DAGSTER_PIPES_CONTEXT=abc" in script
    assert not logs.exists()  # a dry run creates nothing


def test_an_environment_value_with_a_comma_is_refused_before_submission(tmp_path):
    role = specs.Role(name="trainer", image="x", entrypoint="true", env={"MLFLOW_TAGS": "a=1,b=2"})
    launcher = TorchXLauncher(scheduler="slurm", log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="MLFLOW_TAGS of role trainer contains a comma"):
        launcher.dryrun(specs.AppDef(name="x", roles=[role]))
