"""Benchmark: training throughput on CPU: samples/s, tokens/s and peak memory of real
`opensora train` runs (one process, and two under torchrun with FSDP2 over gloo), with
and without activation checkpointing, from the caches, for the tiny and a mid-size
preset.

`python bench/train_step.py [options]` or `opensora bench train [options]` (`--help`).

Each configuration is a separate run of the real trainer on the same synthetic table;
the first steps (start-up, first-bucket cost estimates) are left out of the averages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from opensora_core.config import find_config, load_profile, load_stage, read_stage_data
from opensora_core.data.buckets import BucketAssigner
from opensora_core.data.caches import ShardedTensorCache, build_text_cache, build_video_cache
from opensora_core.models.encoders import load_text_encoder, load_vae
from opensora_core.train.args import TrainArgs, train_argv
from opensora_core.utils.jsonl import read_jsonl

WARMUP_STEPS = 2


def _run(stage_file: Path, profile_file: Path, meta: Path, cache: Path, out: Path, procs: int, steps: int) -> dict:
    train = ["-m", "opensora_core.train.loop", *train_argv(TrainArgs(
        stage=str(stage_file), data=str(meta), cache=str(cache), out=str(out), profile=str(profile_file),
        max_steps=steps, ckpt_every=steps))]
    if procs == 1:
        command = [sys.executable, *train]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training run failed: {done.stderr[-2000:]}")
    lines = read_jsonl(out / "metrics.jsonl")
    timed = lines[WARMUP_STEPS:] or lines
    return {"samples_per_s": sum(x["samples_per_s"] for x in timed) / len(timed),
            "tokens_per_s": sum(x["tokens_per_s"] for x in timed) / len(timed),
            "peak_memory_gib": max(x["peak_memory_gib"] for x in lines)}


def run_train_step_benchmark(presets: list[str], steps: int = 8, clips: int = 16, console: Console | None = None) -> list[dict]:
    console = console or Console()
    base_stage = read_stage_data("tiny/stage1")
    # Here, not at the top: `python bench/train_step.py` runs this file before its
    # `__main__` block can put the repository root (and so `bench`) on sys.path.
    from bench.dataloader import _corpus

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = _corpus(folder, clips, 24, 64)
        meta = folder / "meta.csv"
        table.to_csv(meta, index=False)
        profile = yaml.safe_load(find_config("profiles", "embedded").read_text())
        profile["mlflow_tracking_uri"] = f"sqlite:///{folder / 'mlruns.db'}"
        profile_file = folder / "profile.yaml"
        profile_file.write_text(yaml.safe_dump(profile))
        settings = load_profile(profile_file)
        vae = load_vae(settings)
        build_video_cache(table, BucketAssigner(load_stage("tiny/stage1")), vae,
                          ShardedTensorCache(folder / "cache" / "video"), progress=False)
        for preset in presets:
            encoder = load_text_encoder(settings, preset)
            build_text_cache(table["text"], encoder, ShardedTensorCache(folder / "cache" / "text"), progress=False)
            for procs in (1, 2):
                for checkpointing in (False, True):
                    stage_file = folder / f"{preset}-{procs}-{checkpointing}.yaml"
                    stage_file.write_text(yaml.safe_dump({**base_stage, "model_preset": preset,
                                                          "grad_checkpoint": checkpointing, "log_every": 1}))
                    out = folder / stage_file.stem
                    measured = _run(stage_file, profile_file, meta, folder / "cache", out, procs, steps)
                    results.append({"preset": preset, "processes": procs, "checkpointing": checkpointing, **measured})
                    console.print(f"  {preset} x{procs} ckpt={'on' if checkpointing else 'off'}: "
                                  f"{measured['samples_per_s']:.1f} samples/s", highlight=False)
    view = Table(title=f"training steps from caches, tiny/stage1 buckets, CPU ({os.cpu_count()} cores), "
                       f"mean over steps {WARMUP_STEPS + 1}..{steps}")
    for column in ("preset", "processes", "act. ckpt", "samples/s", "tokens/s", "peak RSS GiB (per process)"):
        view.add_column(column, justify="right")
    for r in results:
        view.add_row(r["preset"], str(r["processes"]), "on" if r["checkpointing"] else "off",
                     f"{r['samples_per_s']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_gib']:.2f}")
    console.print(view)
    return results


if __name__ == "__main__":
    import sys
    from pathlib import Path

    try:
        import bench.cli  # noqa: F401  (installed with the project, or on PYTHONPATH)
    except ImportError:  # sys.path[0] is bench/ itself: add the repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cli import run_script

    run_script("train")
