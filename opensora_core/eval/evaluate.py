"""Generate a fixed prompt set with several seeds from a checkpoint, write the samples
and score prompt following (`run_eval`): the sampling and scoring of the `eval_samples`
step (`opensora_core.eval.round` adds previews, MLflow and the registry)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from opensora_core.eval.conditioning import (
    CONDITIONING_KINDS,
    build_cases,
    combination_of,
    score_case,
    summarize,
)
from opensora_core.utils.atomic import write_text_atomic

DEFAULT_PROMPT_SET = "default"
# What a round's score must beat, besides the champion's, to be promoted.
PROMOTION_FLOORS = ("chance", "none")
# The scores a round can promote on (`clip_score` only with a CLIP folder).
PROMOTION_METRICS = ("prompt_following", "color_accuracy", "direction_accuracy", "i2v_direction_accuracy",
                     "extend_direction_accuracy", "diversity", "clip_score")
METRICS_FILE = "metrics.json"
# The evaluation geometry: what the tiny stages train on.
EVAL_FRAMES, EVAL_HEIGHT, EVAL_WIDTH, EVAL_FPS = 8, 64, 64, 8.0

def default_prompts_path() -> Path:
    """`configs/eval/prompts.yaml` of the project (else of this checkout)."""
    from opensora_core.config import project_root

    for root in (project_root(), Path(__file__).resolve().parents[2]):
        path = root / "configs" / "eval" / "prompts.yaml"
        if path.is_file():
            return path
    raise FileNotFoundError("configs/eval/prompts.yaml not found")


def load_prompts(prompts: str | Path = DEFAULT_PROMPT_SET) -> list[str]:
    """The prompt set: "default" (configs/eval/prompts.yaml), a YAML file with a
    `prompts:` list, or a text file with one prompt per line."""
    path = default_prompts_path() if str(prompts) == DEFAULT_PROMPT_SET else Path(prompts)
    if not path.is_file():
        raise FileNotFoundError(f"prompt set {path}: no such file")
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text())
        lines = data.get("prompts") if isinstance(data, dict) else data
        if not isinstance(lines, list) or not all(isinstance(p, str) for p in lines):
            raise ValueError(f"{path}: expected a `prompts:` list of strings")
    else:
        lines = path.read_text().splitlines()
    lines = [p.strip() for p in lines if p.strip()]
    if not lines:
        raise ValueError(f"{path}: no prompts")
    return lines


def _json_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def run_eval(
    checkpoint: str | Path,
    prompts: str | Path = DEFAULT_PROMPT_SET,
    seeds: int = 2,
    steps: int = 20,
    out: str | Path = "outputs/eval",
    profile: str = "embedded",
    device: str = "cpu",
    cfg_scale: float = 7.0,
    progress: bool = False,
    clip: str | Path | None = None,
    conditioned: bool = True,
) -> dict:
    """Generate `seeds` samples of every prompt (seeds 0..seeds-1, DPM-Solver++,
    8 frames at 64x64), write them under `out/samples/seed_N/`, and write
    `out/metrics.json` with the metrics, settings and per-sample results.

    With `clip` (a local Hugging Face CLIP folder) the metrics gain `clip_score`, the
    mean over samples of `opensora_core.eval.clip_score`'s CLIP score, and every sample
    its own; without it nothing about CLIP is imported and `clip_score` is absent.

    With `conditioned`, every prompt that names a colour, shape and direction also gets
    an image-to-video and an extension case (`eval/conditioning.py`) from a fresh clip
    of that combination, written under `out/references/` and sampled with every seed into
    `out/samples/i2v/` and `out/samples/extend/` (seed 0; `i2v_seed_N/`, `extend_seed_N/`
    for the others). `prompt_following` is the mean of the
    colour and direction accuracies (and the conditioned direction accuracies): the
    score promotion compares."""
    from opensora_core.eval.metrics import evaluate_videos
    from opensora_core.infer.sample import load_generation_stack, parse_prompt

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    texts = load_prompts(prompts)
    scorer = None
    if clip is not None:  # before generating: a bad folder fails fast
        from opensora_core.eval.clip_score import ClipScorer

        scorer = ClipScorer.from_pretrained(clip, device=device)
    requests = [parse_prompt(text) for text in texts]
    generator, provenance = load_generation_stack(checkpoint=checkpoint, profile=profile, device=device)
    out = Path(out)
    videos, video_prompts, files = _sample_every_seed(generator, requests, seeds, steps, cfg_scale, out, provenance,
                                                      progress)
    details: list[dict] = []
    metrics = evaluate_videos(videos, video_prompts, details)
    for row, path in zip(details, files):
        row["file"] = path
    conditioned_rows = (_conditioned(generator, texts, seeds, steps, cfg_scale, out, provenance, progress)
                        if conditioned else [])
    metrics.update(summarize(conditioned_rows))
    metrics["prompt_following"] = prompt_following(metrics)
    if scorer is not None:
        _add_clip_scores(scorer, videos, video_prompts, details, metrics)
    settings = {"prompts": texts, "seeds": seeds, "steps": steps, "sampler": "dpm-solver", "num_frames": EVAL_FRAMES,
                "height": EVAL_HEIGHT, "width": EVAL_WIDTH, "cfg_scale": cfg_scale,
                "clip": None if clip is None else str(clip)}
    return _write_report(out, metrics, settings, provenance, details, conditioned_rows)


def _write_report(out: Path, metrics: dict, settings: dict, provenance: dict, details: list[dict],
                  conditioned_rows: list[dict]) -> dict:
    """`out/metrics.json`: the metrics (NaN as null), settings, provenance and per-sample rows."""
    report = {
        "metrics": {k: _json_safe(v) for k, v in metrics.items()},
        "settings": settings,
        "provenance": provenance,
        "samples": details,
        "conditioned": conditioned_rows,
    }
    write_text_atomic(out / METRICS_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def _sample_every_seed(generator, requests, seeds: int, steps: int, cfg_scale: float, out: Path, provenance: dict,
                       progress: bool) -> tuple[list, list[str], list[str]]:
    """Every prompt sampled with each seed in one batch, written under `out/samples/seed_N/`:
    (videos, their prompts, their files), seed by seed."""
    from opensora_core.infer.sample import SampleSettings, write_samples

    videos, video_prompts, files = [], [], []
    for seed in range(seeds):
        settings = SampleSettings(num_frames=EVAL_FRAMES, height=EVAL_HEIGHT, width=EVAL_WIDTH, fps=EVAL_FPS,
                                  steps=steps, sampler="dpm-solver", cfg_scale=cfg_scale, seed=seed,
                                  batch_size=len(requests))
        generated = generator.generate(requests, settings, progress=progress)
        written = write_samples(generated, requests, settings, out / "samples" / f"seed_{seed}", provenance)
        videos += generated
        video_prompts += [r.text for r in requests]
        files += [str(p) for p in written]
    return videos, video_prompts, files


def _add_clip_scores(scorer, videos: list, prompts: list[str], details: list[dict], metrics: dict) -> None:
    """Each sample's CLIP score in its row of `details`, their mean in `metrics`."""
    scores = scorer.score(videos, prompts)
    for row, value in zip(details, scores):
        row["clip_score"] = value
    metrics["clip_score"] = sum(scores) / len(scores)


def chance_level(metric: str, metrics: dict) -> float | None:
    """What guessing scores on `metric`: one colour of `COLORS`, one direction of
    `DIRECTIONS`, and for `prompt_following` the mean over the accuracies it averages;
    None for scores with no chance level (diversity, CLIP score). An accuracy that is
    None or NaN in `metrics` was not measured."""
    from opensora_core.data.synthetic import COLORS, DIRECTIONS

    chance = {"color_accuracy": 1 / len(COLORS), "direction_accuracy": 1 / len(DIRECTIONS),
              "i2v_direction_accuracy": 1 / len(DIRECTIONS), "extend_direction_accuracy": 1 / len(DIRECTIONS)}
    if metric == "prompt_following":
        measured = [chance[k] for k in chance if metrics.get(k) is not None and not math.isnan(metrics[k])]
        return sum(measured) / len(measured) if measured else None
    return chance.get(metric)


def prompt_following(metrics: dict) -> float:
    """Mean of the accuracies that were measured: colour, direction, and the direction
    of image-to-video and extension samples; NaN when none was."""
    keys = ("color_accuracy", "direction_accuracy", "i2v_direction_accuracy", "extend_direction_accuracy")
    values = [metrics[k] for k in keys if k in metrics and not math.isnan(metrics[k])]
    return sum(values) / len(values) if values else float("nan")


def _conditioned(generator, texts: list[str], seeds: int, steps: int, cfg_scale: float, out: Path, provenance: dict,
                 progress: bool = False) -> list[dict]:
    """Image-to-video and extension samples of the prompts' synthetic combinations, one
    per seed as for the prompts themselves, scored."""
    from opensora_core.infer.sample import PromptRequest, SampleSettings, write_samples

    combinations = list(dict.fromkeys(c for c in map(combination_of, texts) if c is not None))
    rows: list[dict] = []
    for kind in CONDITIONING_KINDS if combinations else ():
        cases = build_cases(kind, combinations, out / "references", EVAL_FRAMES, EVAL_HEIGHT, EVAL_WIDTH)
        requests = [PromptRequest(c.prompt, [c.reference], c.mask_strategy) for c in cases]
        for seed in range(seeds):
            settings = SampleSettings(num_frames=EVAL_FRAMES, height=EVAL_HEIGHT, width=EVAL_WIDTH, fps=EVAL_FPS,
                                      steps=steps, sampler="dpm-solver", cfg_scale=cfg_scale, seed=seed,
                                      batch_size=len(requests))
            videos = generator.generate(requests, settings, progress=progress)
            folder = out / "samples" / (kind if seed == 0 else f"{kind}_seed_{seed}")
            written = write_samples(videos, requests, settings, folder, provenance)
            for video, case, path in zip(videos, cases, written):
                rows.append({**score_case(video, case), "seed": seed, "file": str(path)})
    return rows
