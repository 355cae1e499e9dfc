"""Training stages as real Slurm jobs: a stage asset with the launcher set to `slurm`
submits a TorchX job (sbatch) of two torchrun workers (FSDP2 over gloo) to the
single-node Slurm of tests/cluster/conftest.py."""

from __future__ import annotations

import math
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from dagster import materialize
from safetensors.torch import load_file
from torchx.schedulers.slurm_scheduler import SlurmScheduler as TorchXSlurmScheduler

from assets_defs.training import stdit2_stage0
from opensora_core.config import find_config, load_profile
from orchestration.launch.slurm import SlurmScheduler
from orchestration.resources import (
    CacheSettings,
    CurationStorage,
    MlflowTracking,
    TrainingSettings,
    torchx_launcher_from_env,
)
from tests.stills import write_stills

pytestmark = pytest.mark.slurm

STEPS = 4


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curated")
    # Eight: one full batch of the 64px bucket (4 per rank) on each of the two ranks.
    return write_stills(folder, ["red", "green", "blue", "yellow"] * 2)


@pytest.fixture(scope="module")
def stage_config(tmp_path_factory):
    """tiny/stage0 with a checkpoint every 2 steps, so a job cancelled midway has one."""
    path = tmp_path_factory.mktemp("stages") / "stage0.yaml"
    path.write_text(yaml.safe_dump({"extends": "tiny/stage0", "ckpt_every": 2, "max_steps": STEPS,
                                   "warmup_steps": 2}))
    return str(path)


def _profile(folder: Path, mlflow: Path, **overrides) -> Path:
    """The embedded profile with the launcher set to slurm (the one setting a cluster
    changes), its MLflow store at `mlflow`."""
    data = yaml.safe_load(find_config("profiles", "embedded").read_text())
    data.update({"torchx_scheduler": "slurm", "mlflow_tracking_uri": f"sqlite:///{mlflow}",
                 "artifacts_root": str(folder / "artifacts"), **overrides})
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _resources(folder: Path, curated: Path, stage_config: str, profile: Path, nproc: int = 2) -> dict:
    return {"curation_storage": CurationStorage(raw_root=str(folder), curated_root=str(curated)),
            "cache_settings": CacheSettings(root=str(folder / "caches"), stages=[stage_config]),
            "training_settings": TrainingSettings(profile=str(profile), stages=[stage_config],
                                                  out_root=str(folder / "train"), nproc_per_node=nproc,
                                                  cpu_per_node=2, mem_mb_per_node=2048),
            # As Dagster's definitions build it: the scheduler is the profile's.
            "torchx_launcher": torchx_launcher_from_env(load_profile(str(profile))),
            "mlflow_tracking": MlflowTracking(tracking_uri=load_profile(str(profile)).mlflow_tracking_uri)}


def _squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", *args], capture_output=True, text=True, check=True).stdout
    return out.split()


def _scancel_after_first_checkpoint(out: Path, cancelled: list[str], timeout: float = 240) -> None:
    first = out / "checkpoints" / "step-00000002"
    deadline = time.monotonic() + timeout
    while not first.is_dir() and time.monotonic() < deadline:
        time.sleep(0.02)
    jobs = _squeue("--states=RUNNING", "--format=%i")
    if first.is_dir() and jobs:
        subprocess.run(["scancel", *jobs], check=True)
        cancelled.extend(jobs)


def test_torchx_own_slurm_scheduler_needs_accounting_which_ours_does_not(slurm_cluster, tmp_path):
    # Why orchestration/launch/slurm.py exists: TorchX 0.7.0 asks sacct for a job's state.
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={tmp_path}", "--job-name=trainer-0", "--mem=64",
                          "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    with pytest.raises(subprocess.CalledProcessError, match="sacct"):
        TorchXSlurmScheduler("torchx").describe(job)
    deadline = time.monotonic() + 30
    while (status := SlurmScheduler("torchx").describe(job)).state.name != "SUCCEEDED":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert [(r.role, r.id) for role in status.roles_statuses for r in role.replicas] == [("trainer", 0)]
    assert SlurmScheduler("torchx").describe("999999") is None  # unknown to the controller and to sacct


def test_stage_runs_as_a_slurm_job_and_resumes_after_scancel(slurm_cluster, tmp_path, curated, stage_config):
    mlflow = tmp_path / "mlruns.db"  # one store for the three runs: it is created once
    straight = tmp_path / "straight"
    straight.mkdir()
    result = materialize([stdit2_stage0],
                         resources=_resources(straight, curated, stage_config, _profile(straight, mlflow)))
    metadata = result.asset_materializations_for_node("stdit2_stage0")[0].metadata
    assert metadata["torchx_app"].value.startswith("slurm://")  # sbatch, not a local process
    job = metadata["torchx_app"].value.rsplit("/", 1)[1]
    assert _squeue("--states=all", f"--jobs={job}", "--format=%T") == ["COMPLETED"]
    # Pipes brought rank 0's metrics; the DCP checkpoint holds one shard per rank (two
    # torchrun workers in the one Slurm task); the export is there.
    assert metadata["steps"].value == STEPS and math.isfinite(metadata["final_loss"].value)
    assert metadata["loss_curve"].value.startswith("![loss curve](data:image/png;base64,")
    stage = straight / "train" / "stage0"
    assert sorted(p.name for p in (stage / "checkpoints" / f"step-{STEPS:08d}").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]
    assert Path(metadata["checkpoint"].value) == stage / "export" / "model.safetensors"
    # The replica's log is where the launcher put it, not in the working directory.
    assert (straight / "artifacts" / "torchx" / "slurm" / f"slurm-{job}-trainer-0.err").is_file()
    assert not list(Path.cwd().glob(f"slurm-{job}*"))

    killed = tmp_path / "killed"
    killed.mkdir()
    resources = _resources(killed, curated, stage_config, _profile(killed, mlflow))
    cancelled: list[str] = []
    watcher = threading.Thread(target=_scancel_after_first_checkpoint, args=(killed / "train" / "stage0", cancelled))
    watcher.start()
    interrupted = materialize([stdit2_stage0], resources=resources, raise_on_error=False)
    watcher.join()
    assert cancelled, "the job ended before its first checkpoint was seen"
    assert not interrupted.success
    assert f"slurm://torchx/{cancelled[0]} ended CANCELLED" in str(interrupted.all_events)
    assert _squeue("--states=all", f"--jobs={cancelled[0]}", "--format=%T") == ["CANCELLED"]
    assert not (killed / "train" / "stage0" / "export").exists()
    first = killed / "train" / "stage0" / "checkpoints" / "step-00000002"
    kept = first.stat().st_ino

    resumed = materialize([stdit2_stage0], resources=resources)
    metadata = resumed.asset_materializations_for_node("stdit2_stage0")[0].metadata
    assert metadata["steps"].value == STEPS
    # Resumed, not retrained: the cancelled job's checkpoint is the same directory, and
    # the new job's progress starts at step 2.
    assert first.stat().st_ino == kept
    job = metadata["torchx_app"].value.rsplit("/", 1)[1]
    log = (killed / "artifacts" / "torchx" / "slurm" / f"slurm-{job}-trainer-0.err").read_text(errors="replace")
    assert f"| 2/{STEPS} [" in log and f"| 1/{STEPS} [" not in log
    a = load_file(str(stage / "export" / "model.safetensors"))
    b = load_file(str(killed / "train" / "stage0" / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_failing_slurm_job_shows_its_log_tail_in_the_dagster_run(slurm_cluster, tmp_path, curated, stage_config):
    # A cluster profile requires MLflow; with nothing listening the job itself stops.
    profile = _profile(tmp_path, tmp_path / "unused.db", mlflow_tracking_uri="http://127.0.0.1:9",
                       mlflow_required=True)
    result = materialize([stdit2_stage0], resources=_resources(tmp_path, curated, stage_config, profile, nproc=1),
                         raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.event_specific_data.error)
    assert "ended FAILED" in text and "trainer replica 0, last 60 log lines" in text
    assert "http://127.0.0.1:9" in text  # the job's own error, from its log
