"""One evaluation round, whole: the `eval_samples` step.

Sample the fixed prompt set from an export, score prompt following, write previews, log
the round to MLflow and promote the model in the registry when it beats the champion.
The Dagster asset `eval_samples` and `opensora eval-samples --register` are doors to it.

A round goes to `<out_root>/<round id>/` (built under a hidden name and renamed when
complete): `samples/seed_N/*.mp4` with JSON sidecars, `metrics.json`, `preview.gif` (one
tile per prompt, seed 0) and `frame_strip.png` (first, middle and last frame of each).
`<out_root>/latest.json` remembers the newest round's inputs, so the same weights with the
same settings are not evaluated twice. The round is an MLflow run `eval` in the training
experiment, tagged with the training run it evaluates.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opensora_core.data.video_io import read_frames
from opensora_core.eval.evaluate import EVAL_FPS, METRICS_FILE, chance_level, load_prompts, run_eval
from opensora_core.tracking.registry import promote_if_better
from opensora_core.tracking.store import TrackingStore
from opensora_core.utils.atomic import atomic_path, write_text_atomic
from opensora_core.utils.hashing import file_sha256

PREVIEW_SCALE = 2  # 64x64 samples are shown at 128x128
LATEST = "latest.json"  # the newest round: its inputs, folder and outcome
SCORES = ("prompt_following", "color_accuracy", "direction_accuracy", "diversity")
OPTIONAL_SCORES = ("i2v_direction_accuracy", "extend_direction_accuracy", "clip_score")


class EvaluationError(ValueError):
    """A round that cannot run: missing weights, a bad prompt set, nothing sampled."""


@dataclass(frozen=True)
class RoundSettings:
    out_root: str
    prompts: str = "default"
    seeds: int = 2
    steps: int = 20
    cfg_scale: float = 7.0
    metric: str = "prompt_following"  # the score compared with the champion's
    clip: str | None = None
    promotion_floor: str = "chance"  # "chance": never promote at or below chance; "none"


@dataclass
class RoundOutcome:
    folder: Path
    summary: dict  # JSON-able: scores, sample count, decision, MLflow link
    reused: bool = False


# 1. Previews


def _tiles(report: dict, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(prompt, uint8 frames T,H,W,3) of one seed's samples, in prompt order."""
    rows = [r for r in report["samples"] if f"seed_{seed}" in Path(r["file"]).parts]
    return [(r["prompt"], read_frames(r["file"], report["settings"]["num_frames"])) for r in rows]


def _grid(frames: list[np.ndarray], columns: int) -> np.ndarray:
    """Tile equally sized clips (T,H,W,3) into one clip, `columns` per row."""
    t, h, w, c = frames[0].shape
    rows = math.ceil(len(frames) / columns)
    grid = np.zeros((t, rows * h, columns * w, c), dtype=np.uint8)
    for i, clip in enumerate(frames):
        r, k = divmod(i, columns)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = clip[:t]
    return grid.repeat(PREVIEW_SCALE, axis=1).repeat(PREVIEW_SCALE, axis=2)


def write_previews(report: dict, folder: Path, fps: float) -> tuple[Path, Path]:
    """`preview.gif` (all prompts of seed 0 playing side by side) and `frame_strip.png`
    (first, middle and last frame of each, one row per prompt)."""
    from PIL import Image

    tiles = _tiles(report)
    if not tiles:
        raise EvaluationError(f"evaluation in {folder} wrote no samples to preview")
    clips = [frames for _, frames in tiles]
    grid = _grid(clips, columns=min(4, len(clips)))
    gif = folder / "preview.gif"
    images = [Image.fromarray(frame) for frame in grid]
    with atomic_path(gif) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=int(1000 / fps))
    t = clips[0].shape[0]
    picks = [0, t // 2, t - 1]
    strip = np.concatenate([np.concatenate([clip[i] for i in picks], axis=1) for clip in clips], axis=0)
    strip = strip.repeat(PREVIEW_SCALE, axis=0).repeat(PREVIEW_SCALE, axis=1)
    png = folder / "frame_strip.png"
    with atomic_path(png) as tmp:
        Image.fromarray(strip).save(tmp, format="PNG")
    return gif, png


# 2. Sampling and scoring into a folder


def _moved(report: dict, old: Path, new: Path) -> dict:
    """The report with its sample paths under the round's final folder."""
    for row in report["samples"] + report.get("conditioned", []):
        for key in ("file", "reference"):
            if key in row:
                row[key] = str(new / Path(row[key]).relative_to(old))
    return report


def round_inputs(export: Path, settings: RoundSettings, profile: str) -> dict:
    """What a round's result depends on: the weights (and a trained text encoder beside
    them), the prompt set's text and the sampling settings."""
    text_encoder = export.with_name("text_encoder.safetensors")
    return {"export_sha256": file_sha256(export),
            "text_encoder_sha256": file_sha256(text_encoder) if text_encoder.is_file() else None,
            "prompts": load_prompts(settings.prompts), "seeds": settings.seeds, "steps": settings.steps,
            "cfg_scale": settings.cfg_scale, "metric": settings.metric, "profile": profile, "clip": settings.clip,
            "promotion_floor": settings.promotion_floor}


def evaluate_into(export: Path, folder: Path, settings: RoundSettings, profile: str) -> dict:
    """Generate and score into `folder` (built under a hidden name, renamed when whole,
    replacing what was there); the report, as written to `metrics.json`."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        report = run_eval(export, settings.prompts, settings.seeds, settings.steps, partial, profile,
                          cfg_scale=settings.cfg_scale, clip=settings.clip)
        write_previews(report, partial, fps=EVAL_FPS)
    except (ValueError, FileNotFoundError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise EvaluationError(str(err)) from None
    report = _moved(report, partial, folder)
    write_text_atomic(partial / METRICS_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return report


# 3. MLflow: the evaluation run, and the registry


def log_evaluation(store: TrackingStore, client, folder: Path, report: dict, export: Path,
                   training_run: str | None, evaluated: str = "") -> tuple[str, str, str]:
    """Log the round as an MLflow run through `client` (of `store`); return (eval run id,
    its URL, the run whose `export/` artifact the model version is registered from)."""
    experiment = store.experiment_id(client)
    tags = {"stage": "eval", "evaluated_stage": evaluated, "mlflow.runName": "eval"}
    source_run = None
    if training_run is not None:
        try:
            run = client.get_run(training_run)
            tags.update({k: v for k, v in run.data.tags.items() if k in ("data_snapshot", "code_version")})
            if any(a.path.endswith("model.safetensors") for a in client.list_artifacts(training_run, "export")):
                source_run = training_run
        except Exception:  # noqa: BLE001 - a training run logged offline, or to another store
            source_run = None
        tags["evaluated_run_id"] = training_run
    run_id = client.create_run(experiment, tags=tags).info.run_id
    try:
        settings = report["settings"]
        for key in ("seeds", "steps", "sampler", "num_frames", "height", "width", "cfg_scale"):
            client.log_param(run_id, key, settings[key])
        client.log_param(run_id, "prompts", len(settings["prompts"]))
        client.log_param(run_id, "checkpoint_sha256", report["provenance"].get("checkpoint_sha256"))
        for name, value in report["metrics"].items():
            if value is not None:
                client.log_metric(run_id, name, float(value))
        client.log_artifacts(run_id, str(folder), "eval")
        if source_run is None:  # the training run cannot serve the weights: keep a copy with the evaluation
            client.log_artifacts(run_id, str(export.parent), "export")
            source_run = run_id
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id, store.run_url(experiment, run_id), source_run


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def record_round(store: TrackingStore, folder: Path, report: dict, export: Path, metric: str,
                 training_run: str | None = None, evaluated: str = "",
                 log: Callable[[str], None] = print, promotion_floor: str = "chance") -> dict:
    """Log the round to MLflow, register the export as a new model version and promote
    it when its `metric` beats the champion's (and, with `promotion_floor` "chance",
    chance on the prompt set); the round's summary."""
    metrics = report["metrics"]
    client = store.client()
    eval_run, eval_url, source_run = log_evaluation(store, client, folder, report, export, training_run, evaluated)
    summary = {**{name: _number(metrics[name]) for name in (*SCORES, *(k for k in OPTIONAL_SCORES if k in metrics))},
               "samples": len(report["samples"]), "checkpoint": str(export), "metric": metric,
               "mlflow_eval_run": eval_url}
    score = metrics.get(metric)
    if score is None or math.isnan(float(score)):
        log(f"{metric} is undefined for this round: nothing registered or promoted")
        return {**summary, "decision": f"not registered: {metric} undefined"}
    floor = None if promotion_floor == "none" else chance_level(metric, metrics)
    outcome = promote_if_better(store.tracking_uri, store.model_name, source_run, "export", score, metric, floor)
    client.set_tag(eval_run, "promotion.decision", outcome["decision"])
    client.set_tag(eval_run, "model_version", str(outcome["new_version"]))
    before = ("no champion before" if outcome["champion_version"] is None else
              f"champion before: v{outcome['champion_version']}, score {outcome['champion_score']}")
    floor_text = "" if floor is None else f", chance {floor:.3f}"
    log(f"{store.model_name} v{outcome['new_version']} ({metric} {score:.3f}{floor_text}): {outcome['decision']} "
        f"({before})")
    none = "none"
    return {**summary, "decision": outcome["decision"], "model_version": outcome["new_version"],
            "score": float(score),
            "champion_version_before": none if outcome["champion_version"] is None else outcome["champion_version"],
            "champion_score_before": none if outcome["champion_score"] is None else outcome["champion_score"]}


# 4. The step


def eval_samples(export: Path, settings: RoundSettings, profile: str, store: TrackingStore, round_id: str,
                 training_run: str | None = None, evaluated: str = "",
                 log: Callable[[str], None] = print) -> RoundOutcome:
    """One round into `<out_root>/<round_id>/`, logged and promoted; or the newest round
    again when its weights and settings are unchanged."""
    if not export.is_file():
        raise EvaluationError(f"no export at {export}")
    store.client()  # an unreachable tracking server fails here, before any sampling
    try:
        inputs = round_inputs(export, settings, profile)
    except (ValueError, FileNotFoundError) as err:
        raise EvaluationError(str(err)) from None
    root = Path(settings.out_root)
    latest = root / LATEST
    if latest.is_file():
        previous = json.loads(latest.read_text())
        if previous["inputs"] == inputs and Path(previous["folder"]).is_dir():
            log(f"these weights were evaluated with these settings in {previous['folder']}; reusing")
            summary = dict(previous["metadata"], up_to_date=f"weights and settings unchanged since {previous['folder']}")
            return RoundOutcome(Path(previous["folder"]), summary, reused=True)
    folder = root / round_id
    report = evaluate_into(export, folder, settings, profile)
    log(f"evaluation of {export}: " + ", ".join(f"{k}={v}" for k, v in report["metrics"].items()))
    summary = record_round(store, folder, report, export, settings.metric, training_run, evaluated, log,
                           settings.promotion_floor)
    write_text_atomic(latest, json.dumps({"inputs": inputs, "folder": str(folder), "metadata": summary},
                                         indent=2, sort_keys=True) + "\n")
    return RoundOutcome(folder, summary)
