"""Benchmark: prompt following against training minutes: held-out colour, direction,
image-to-video and extension accuracy of the demo's model, for several training recipes
(`RECIPES`) side by side.

`python bench/prompt_following.py [options]` or `opensora bench prompt-following
[options]` (`--help`).

Each recipe is a stage config (the demo's stage files with overrides) trained by the
real trainer (`train_stage`, in-process, one process) from the real caches of a
synthetic dataset that leaves out `held_out_combinations()`. Every `eval_every` steps
the stage's export samples the held-out prompts (and, at the last point, image-to-video
and extension cases of the same combinations) and the pixel metrics score them.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from rich.console import Console
from rich.table import Table

from opensora_core.config import find_config, load_stage, read_stage_data
from opensora_core.data.buckets import BucketAssigner
from opensora_core.data.caches import ShardedTensorCache, build_text_cache, build_video_cache
from opensora_core.data.synthetic import DEMO_DATASET, synth
from opensora_core.eval.evaluate import DEFAULT_PROMPT_SET, run_eval
from opensora_core.models.encoders import load_encoders
from opensora_core.train.loop import TrainArgs, train_stage


def synthetic_table(folder: Path, seed: int = 0, **data) -> Path:
    """The synthetic dataset (`synth` with `data`) written as clips plus a training table
    (what curation keeps of it: every sample, with its caption), as meta.csv."""
    samples = synth(folder / "raw", seed=seed, **data)
    num_frames = data["num_frames"]
    rows = [{"path": str(folder / "raw" / s.path), "text": s.text, "num_frames": 1 if s.direction is None else num_frames,
             "height": 64, "width": 64, "fps": 8.0} for s in samples]
    meta = folder / "meta.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    return meta


def build_caches(meta: Path, stage: str, profile: str, cache: Path) -> None:
    encoder, vae = load_encoders(profile, load_stage(stage).model_preset)
    table = pd.read_csv(meta)
    build_text_cache(table["text"], encoder, ShardedTensorCache(cache / "text"), progress=False)
    build_video_cache(table, BucketAssigner(load_stage(stage)), vae, ShardedTensorCache(cache / "video"),
                      progress=False)


def run_recipe(name: str, stages: list[dict], meta: Path, cache: Path, profile: str, folder: Path, eval_every: int,
               steps: int, cfg_scale: float, seeds: int, console: Console) -> list[dict]:
    """Train the stages in order (each from the previous export), evaluating every
    `eval_every` steps with `opensora eval-samples`'s `run_eval` on the held-out prompts (the
    conditioned cases at the last point only); returns one row per evaluation point."""
    rows, minutes, init = [], 0.0, None
    for index, stage in enumerate(stages):
        stage_file = folder / f"{name}-stage{index}.yaml"
        stage_file.write_text(yaml.safe_dump(stage))
        out = folder / f"{name}-stage{index}"
        total = int(stage["max_steps"])
        # A cosine schedule spans the stage's max_steps: stopping early would be another schedule.
        points = [total] if stage.get("lr_schedule") == "cosine" else [*range(eval_every, total, eval_every), total]
        for upto in points:
            started = time.perf_counter()
            result = train_stage(TrainArgs(stage=str(stage_file), data=str(meta), out=str(out), profile=profile,
                                           cache=str(cache), init=init, max_steps=upto, ckpt_every=eval_every))
            minutes += (time.perf_counter() - started) / 60
            last = index == len(stages) - 1 and upto == total
            metrics = run_eval(result.export_path, DEFAULT_PROMPT_SET, seeds, steps, folder / f"eval-{index}-{upto}",
                               profile, cfg_scale=cfg_scale, conditioned=last)["metrics"]
            row = {"recipe": name, "stage": index, "step": upto, "minutes": minutes, "loss": result.final_loss,
                   **metrics}
            rows.append(row)
            console.print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                          highlight=False)
        init = str(folder / f"{name}-stage{index}" / "export" / "model.safetensors")
    return rows


def demo_stages(overrides: dict | None = None, per_stage: list[dict] | None = None) -> list[dict]:
    """The demo's stage configs (configs/stages/demo) with `overrides` on every stage and
    `per_stage[i]` on stage i."""
    stages = []
    for index in range(4):
        stage = read_stage_data(f"demo/stage{index}")
        stage.update(overrides or {})
        if per_stage and index < len(per_stage):
            stage.update(per_stage[index])
        stages.append(stage)
    return [s for s in stages if s.get("max_steps", 0) > 0]


# Open-Sora 1.1's published mask ratios (its stages 1-3): a quarter of the clips conditioned.
PUBLISHED_MASK_RATIOS = {"no_mask": 0.75, "quarter_random": 0.025, "quarter_head": 0.025, "quarter_tail": 0.025,
                         "quarter_head_tail": 0.05, "image_random": 0.025, "image_head": 0.025, "image_tail": 0.025,
                         "image_head_tail": 0.05}

# What `opensora bench prompt-following` compares: the demo's recipe; the same with the
# published mask ratios; with a cosine decay of the lr over its last stage; without the
# frame-index embedding and the timestep shift (STDiT-2's RoPE alone, plain logit-normal
# t); with IDDPM (the published 1.1 objective); and on fewer, slower, longer clips
# (`slow-data`).
RECIPES: dict[str, dict] = {
    "demo": {},
    "published-masks": {"per_stage": [{}, *[{"mask_ratios": PUBLISHED_MASK_RATIOS}] * 3]},
    "demo-cosine": {"per_stage": [{}, {}, {}, {"lr_schedule": "cosine"}]},
    "demo-rope-only": {"overrides": {"model_preset": "stdit2-tiny", "timestep_shift": 1.0}},
    "demo-iddpm": {"overrides": {"model_preset": "stdit2-tiny", "scheduler": "iddpm", "timestep_shift": 1.0}},
    "slow-data": {"data": {"videos": 48, "images": 16, "num_frames": 16, "speed": (1.0, 2.5)}},
}


def run_prompt_following_benchmark(recipes: dict[str, dict], eval_every: int = 200, steps: int = 20,
                                   cfg_scale: float = 7.0, seeds: int = 1, console: Console | None = None,
                                   workdir: Path | None = None) -> list[dict]:
    """`recipes`: name -> {"overrides": {...}, "per_stage": [...], "data": {...}}: stage
    fields for every stage, per stage, and `synth` arguments over `DEMO_DATASET`. Samples
    with DPM-Solver++ (flow sigmas for rflow), as `opensora eval-samples` does."""
    console = console or Console()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        profile_data = yaml.safe_load(find_config("profiles", "embedded").read_text())
        profile_data["mlflow_tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
        profile = root / "profile.yaml"
        profile.write_text(yaml.safe_dump(profile_data))
        for name, recipe in recipes.items():
            folder = root / name
            folder.mkdir()
            meta = synthetic_table(folder, **{**DEMO_DATASET, **recipe.get("data", {})})
            stages = demo_stages(recipe.get("overrides"), recipe.get("per_stage"))
            for index, stage in enumerate(stages):
                stage_file = folder / f"cache-stage{index}.yaml"
                stage_file.write_text(yaml.safe_dump(stage))
                build_caches(meta, str(stage_file), str(profile), folder / "cache")
            rows += run_recipe(name, stages, meta, folder / "cache", str(profile), folder, eval_every, steps,
                               cfg_scale, seeds, console)
    table = Table(title="held-out prompt following against training minutes (2-core CPU)")
    for column in ("recipe", "stage", "step", "minutes", "loss", "colour", "direction", "i2v dir", "extend dir"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["recipe"], str(r["stage"]), str(r["step"]), f"{r['minutes']:.2f}", f"{r['loss']:.3f}",
                      f"{r['color_accuracy']:.2f}", f"{r['direction_accuracy']:.2f}",
                      f"{r.get('i2v_direction_accuracy', float('nan')):.2f}",
                      f"{r.get('extend_direction_accuracy', float('nan')):.2f}")
    console.print(table)
    return rows


if __name__ == "__main__":
    import sys
    from pathlib import Path

    try:
        import bench.cli  # noqa: F401  (installed with the project, or on PYTHONPATH)
    except ImportError:  # sys.path[0] is bench/ itself: add the repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cli import run_script

    run_script("prompt-following")
