"""Distributed training proven against one process, not just run.

W processes with batch B train exactly as one process with batch W * B (the sampler
hands every rank its slice of one global batch, the random draws are keyed by step and
sample: `BucketBatchSampler`, `train.step.StepDraws`), so every check here compares a
run under `torchrun` with one uninterrupted single-process reference, in fp32, within
float tolerance: two processes from the start, resumed after a kill of the whole torchrun
tree, after a kill inside a checkpoint save, and across 1 -> 2 and 2 -> 1 processes (DCP
resharding). The exports are checked to hold the EMA weights of the last checkpoint.

Each torchrun launch costs seconds of start-up, so two tests chain the scenarios over
three launches against one reference computed once per module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from opensora_core.config import find_config, read_stage_data
from opensora_core.data.buckets import BucketAssigner, BucketBatchSampler
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import write_video
from opensora_core.train.args import train_argv
from opensora_core.train.checkpoint import KILL_IN_SAVE_ENV
from opensora_core.train.loop import TrainArgs, train_stage
from opensora_core.train.step import StepDraws

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
GLOBAL_BATCH = 2  # one process with batch 2, or two with batch 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 4-clip table, a profile with one MLflow store and the stage config for each world size."""
    folder = tmp_path_factory.mktemp("dist")
    rows = []
    for i, (color, direction) in enumerate([("red", "left"), ("green", "right"), ("blue", "up"), ("yellow", "down")]):
        path = folder / f"clip{i}.mp4"
        write_video(path, moving_square_clip(16, 32, 32, color=color, direction=direction, seed=i), fps=8)
        rows.append({"path": str(path), "text": f"a {color} square moving {direction}", "num_frames": 16,
                     "height": 32, "width": 32, "fps": 8.0})
    meta = folder / "meta.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    profile = yaml.safe_load(find_config("profiles", "embedded").read_text())
    profile["mlflow_tracking_uri"] = f"sqlite:///{folder / 'mlruns.db'}"
    (folder / "profile.yaml").write_text(yaml.safe_dump(profile))
    stages = {}
    for world in (1, 2):
        stage = read_stage_data("tiny/stage1")
        # fp32 (the tiny stages' precision), caption dropout, masks and EMA all on.
        assert stage.get("mixed_precision", "fp32") == "fp32"
        stage["bucket_config"] = {"32px": {4: [1.0, GLOBAL_BATCH // world]}}
        stages[world] = folder / f"world{world}.yaml"
        stages[world].write_text(yaml.safe_dump(stage))
    return {"folder": folder, "meta": meta, "profile": folder / "profile.yaml", "stages": stages}


def _args(setup, world: int, out: Path) -> TrainArgs:
    return TrainArgs(stage=str(setup["stages"][world]), data=str(setup["meta"]), out=str(out),
                     profile=str(setup["profile"]), max_steps=STEPS, ckpt_every=1)


def _torchrun(setup, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "opensora_core.train.loop", *train_argv(_args(setup, 2, out))]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def reference(setup):
    """One process, batch 2, never interrupted."""
    out = setup["folder"] / "reference"
    result = train_stage(_args(setup, 1, out))
    assert result.steps == STEPS
    return out


def _logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _logged_losses(out: Path) -> dict[int, float]:
    """Each step's loss, the last logged (a resumed run logs its steps again)."""
    return {row["step"]: row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _assert_same_training(out: Path, reference: Path) -> None:
    """Same exported weights (model and jointly trained text encoder) and losses as the reference."""
    for name in ("model.safetensors", "text_encoder.safetensors"):
        got, want = load_file(str(out / "export" / name)), load_file(str(reference / "export" / name))
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    losses, expected = _logged_losses(out), _logged_losses(reference)
    assert losses.keys() == expected.keys()
    assert [losses[s] for s in sorted(losses)] == pytest.approx([expected[s] for s in sorted(expected)], rel=1e-5)


def _assert_exports_the_ema(out: Path) -> None:
    """export/model.safetensors holds the EMA of the last checkpoint, not its raw weights."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    consolidated = out.parent / f"{out.name}-last.pt"
    dcp_to_torch_save(str(out / "checkpoints" / f"step-{STEPS:08d}"), str(consolidated))
    state = torch.load(consolidated, weights_only=True)
    exported = load_file(str(out / "export" / "model.safetensors"))
    ema, raw = state["ema"], state["model"]
    assert ema.keys() <= exported.keys() and len(ema) > 10
    assert all(torch.equal(exported[name], ema[name]) for name in ema)
    moved = [name for name in ema if not torch.equal(exported[name], raw[f"stdit2.{name}"])]
    assert len(moved) > len(ema) // 2, "the export holds the raw weights, not the EMA"


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (torchrun starts each worker in a session of its own,
    so a signal to torchrun's process group does not reach them)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return tree


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _kill_tree_when(process: subprocess.Popen, ready: Path, log: Path, timeout: float = 240) -> None:
    """SIGKILL torchrun and its workers at once, as a scheduler ends a job, once `ready` exists."""
    deadline = time.monotonic() + timeout
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    tree = _process_tree(process.pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
    assert len(tree) == 3, f"expected torchrun and two workers, found {tree}"


def test_world_size_does_not_change_batches_or_draws():
    """The unit facts the process tests rest on: rank slices of the 2-process plan, and
    of a step's random draws, put together give the 1-process ones."""
    from opensora_core.config import load_stage

    per_process = load_stage("stage2")
    doubled = per_process.model_copy(update={"bucket_config": {
        res: {t: entry.model_copy(update={"batch_size": entry.batch_size * 2}) if entry.batch_size else entry
              for t, entry in frames.items()} for res, frames in per_process.bucket_config.items()}})
    rows = [(60 + i % 40, 480, 854) for i in range(400)]
    one = list(BucketBatchSampler(BucketAssigner(doubled), rows, seed=3, rank=0, world_size=1))
    halves = [list(BucketBatchSampler(BucketAssigner(per_process), rows, seed=3, rank=r, world_size=2))
              for r in (0, 1)]
    assert len(one) > 3 and len(halves[0]) == len(halves[1]) == len(one)
    for whole, a, b in zip(one, *halves, strict=True):
        assert [i for i, _ in a] + [i for i, _ in b] == [i for i, _ in whole]
        assert len(a) == len(b) == a[0][1].batch_size

    from opensora_core.diffusion.iddpm import GaussianDiffusion
    from opensora_core.diffusion.masks import MaskGenerator
    from opensora_core.diffusion.speedit import build_timestep_sampler

    timesteps = build_timestep_sampler("iddpm-speed", GaussianDiffusion())
    masks = MaskGenerator({"quarter_random": 0.5, "image_head": 0.5})
    whole = StepDraws(7, 5, 4, 0, 4)
    parts = [StepDraws(7, 5, 4, 2 * r, 2) for r in (0, 1)]

    def draw(d: StepDraws):
        t = d.mine(timesteps.sample(d.global_size, d.batch_generator))
        return t, d.mine(masks.get_masks(d.global_size, 4, d.batch_generator)), d.noise((3, 2, 2))

    expected = draw(whole)
    got = [draw(d) for d in parts]
    for i in range(3):
        assert torch.equal(torch.cat([g[i] for g in got]), expected[i])
    assert not torch.equal(draw(StepDraws(7, 6, 4, 0, 4))[2], expected[2])  # each step draws anew


@pytest.mark.slow
def test_two_processes_train_as_one_and_survive_a_kill_inside_a_checkpoint_save(setup, reference):
    """2 processes x batch 1 from the start; rank 0 SIGKILLs itself inside the save of
    the last step, 3 (its shards written, not yet renamed); one process with batch 2
    resumes from step 2 (DCP resharding 2 -> 1) and ends where the reference does."""
    out = setup["folder"] / "killed-in-save"
    killed = subprocess.run(_torchrun(setup, out), env=_env(**{KILL_IN_SAVE_ENV: "3"}), capture_output=True,
                            text=True, timeout=300, check=False)
    assert killed.returncode != 0, killed.stderr[-3000:]
    checkpoints = out / "checkpoints"
    partial = checkpoints / "step-00000003.partial"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001", "step-00000002",
                                                             "step-00000003.partial"]
    assert list(partial.glob("*.distcp")) and (partial / "rank0.pt").is_file()
    assert not (out / "export").exists()
    # Two processes with batch 1 report the losses one process with batch 2 does.
    assert [_logged_losses(out)[s] for s in (1, 2)] == pytest.approx(
        [_logged_losses(reference)[s] for s in (1, 2)], rel=1e-5)

    resumed = train_stage(_args(setup, 1, out))
    assert [s for s, _ in resumed.loss_curve] == [3]  # from step 2, not from 0
    assert not partial.exists()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002", "step-00000003"]
    _assert_same_training(out, reference)
    _assert_exports_the_ema(out)
    _assert_exports_the_ema(reference)


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_a_killed_torchrun_resumes_and_one_process_checkpoints_resume_on_two(setup, reference):
    """One process (batch 2) stops after step 1's checkpoint; two processes (batch 1)
    resume it (DCP resharding 1 -> 2) and are SIGKILLed, torchrun and workers at once,
    once they have saved step 2; the same torchrun command resumes and finishes where
    the reference does."""
    out = setup["folder"] / "resharded"

    def crash_at_step_2(step: int, metrics: dict) -> None:
        if step == 2:  # reported before step 2's checkpoint: step 1 is the newest
            raise _Crash

    with pytest.raises(_Crash):
        train_stage(_args(setup, 1, out), on_metrics=crash_at_step_2)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]

    log = setup["folder"] / "killed-torchrun.log"
    with log.open("w") as sink:
        process = subprocess.Popen(_torchrun(setup, out), env=_env(), stdout=sink, stderr=subprocess.STDOUT)
        _kill_tree_when(process, out / "checkpoints" / "step-00000002", log)
    assert (out / "checkpoints" / "step-00000002" / "rank1.pt").is_file()  # written by two processes
    assert not (out / "export").exists()

    done = subprocess.run(_torchrun(setup, out), env=_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = _logged_steps(out)
    assert steps.count(1) == 1 and steps[-1] == STEPS, steps  # every run resumed, none restarted at 0
    _assert_same_training(out, reference)
    _assert_exports_the_ema(out)


def test_a_folder_records_the_global_batch_so_either_world_size_resumes_it(setup):
    """`inputs.json` holds global batch sizes: 2 processes x 1 and 1 process x 2 record
    the same inputs (so each resumes the other's checkpoints, as the tests above do);
    2 x 2 is another global batch, which starts again."""
    from opensora_core.train.inputs import check_inputs, stage_inputs

    out = setup["folder"] / "unused"
    one, two = _args(setup, 1, out), _args(setup, 2, out)
    record = stage_inputs(one, check_inputs(one), 1)
    assert record["stage_config"]["bucket_config"]["32px"]["4"]["batch_size"] == GLOBAL_BATCH
    assert stage_inputs(two, check_inputs(two), 2) == record
    assert stage_inputs(one, check_inputs(one), 2) != record


def test_a_checkpoint_is_complete_only_with_every_writers_rank_file(tmp_path):
    """Rank 0's file records how many ranks wrote the checkpoint; one missing rank file
    (a folder copied in part) makes it incomplete, whatever world reads it."""
    import shutil

    from opensora_core.train.checkpoint import WRITERS_KEY, CheckpointManager

    manager = CheckpointManager(tmp_path / "checkpoints")
    first = manager.save(1, {"x": torch.ones(3)}, {"step": 1})
    assert manager.latest() == first
    state = {"x": torch.zeros(3)}
    assert manager.load(first, state) == {"step": 1, WRITERS_KEY: 1} and torch.equal(state["x"], torch.ones(3))

    two = tmp_path / "checkpoints" / "step-00000002"
    shutil.copytree(first, two)
    torch.save({"step": 2, WRITERS_KEY: 2}, two / "rank0.pt")
    assert manager.latest() == first  # rank1.pt missing
    torch.save({"step": 2, WRITERS_KEY: 2}, two / "rank1.pt")
    assert manager.latest() == two
    (two / ".metadata").unlink()
    assert manager.latest() == first
