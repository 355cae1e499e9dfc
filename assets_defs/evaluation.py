"""`eval_samples`: sample the fixed prompt set from the newest stage's export, score
prompt following, log everything to MLflow and promote the model when it beats the
champion.

One evaluation round goes to `<eval root>/<run id>/` (built under a hidden name and
renamed when complete): `samples/seed_N/*.mp4` with JSON sidecars, `metrics.json`,
`preview.gif` (one tile per prompt, seed 0) and `frame_strip.png` (first, middle and
last frame of each). The round is an MLflow run `eval` in the training experiment,
tagged with the training run it evaluates.
"""


import base64
import json
import math
import shutil
from pathlib import Path

import numpy as np
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from assets_defs.training import stdit2_stage3
from opensora_core.data.video_io import read_frames
from opensora_core.eval.cli import EVAL_FPS, METRICS_FILE, load_prompts, run_eval
from opensora_core.utils.atomic import atomic_path, write_text_atomic
from opensora_core.utils.hashing import file_sha256
from orchestration.promotion import promote_if_better
from orchestration.resources import EvaluationSettings, MlflowTracking, TrainingSettings

EVALUATED_STAGE = 3  # the newest stage: eval_samples follows stdit2_stage3
PREVIEW_SCALE = 2  # 64x64 samples are shown at 128x128


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
        raise Failure(f"evaluation in {folder} wrote no samples to preview")
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


def _moved(report: dict, old: Path, new: Path) -> dict:
    """The report with its sample paths under the round's final folder."""
    for row in report["samples"] + report.get("conditioned", []):
        for key in ("file", "reference"):
            if key in row:
                row[key] = str(new / Path(row[key]).relative_to(old))
    return report


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _embedded(path: Path, mime: str, alt: str) -> str:
    return f"![{alt}](data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()})"


# 2. MLflow: the evaluation run, and the run the model version comes from


def _training_run_id(training_settings: TrainingSettings) -> str | None:
    result = training_settings.stage_dir(EVALUATED_STAGE) / "result.json"
    if not result.is_file():
        return None
    return json.loads(result.read_text()).get("mlflow_run_id")


def log_evaluation(mlflow: MlflowTracking, folder: Path, report: dict, export: Path,
                   training_run: str | None) -> tuple[str, str, str]:
    """Log the round as an MLflow run; return (eval run id, its URL, the run whose
    `export/` artifact the model version is registered from)."""
    client = mlflow.client()
    experiment = mlflow.experiment_id(client)
    tags = {"stage": "eval", "evaluated_stage": str(EVALUATED_STAGE), "mlflow.runName": "eval"}
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
    run = client.create_run(experiment, tags=tags)
    run_id = run.info.run_id
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
    return run_id, mlflow.run_url(experiment, run_id), source_run


# 3. The asset

LATEST = "latest.json"  # the newest round: its inputs, folder and outcome


def round_inputs(export: Path, settings: EvaluationSettings, profile: str) -> dict:
    """What a round's result depends on: the weights (and a trained text encoder beside
    them), the prompt set's text and the sampling settings."""
    text_encoder = export.with_name("text_encoder.safetensors")
    return {"export_sha256": file_sha256(export),
            "text_encoder_sha256": file_sha256(text_encoder) if text_encoder.is_file() else None,
            "prompts": load_prompts(settings.prompts), "seeds": settings.seeds, "steps": settings.steps,
            "cfg_scale": settings.cfg_scale, "metric": settings.metric, "profile": profile, "clip": settings.clip}


def _dagster_metadata(plain: dict, folder: Path) -> dict:
    """The round's JSON-able outcome plus previews, paths and links for the UI."""
    metadata = {k: v for k, v in plain.items() if k not in ("mlflow_eval_run",)}
    metadata.update({
        "folder": MetadataValue.path(str(folder)),
        "preview": MetadataValue.md(_embedded(folder / "preview.gif", "image/gif", "samples (seed 0)")),
        "frame_strip": MetadataValue.md(_embedded(folder / "frame_strip.png", "image/png",
                                                  "first, middle, last frame")),
        "mlflow_eval_run": MetadataValue.url(plain["mlflow_eval_run"]),
    })
    return metadata


def evaluate_round(context: AssetExecutionContext, export: Path, folder: Path, settings: EvaluationSettings,
                   profile: str) -> dict:
    """Generate and score into `folder` (built under a hidden name, renamed when whole)."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        report = run_eval(export, settings.prompts, settings.seeds, settings.steps, partial, profile,
                          cfg_scale=settings.cfg_scale, clip=settings.clip)
        write_previews(report, partial, fps=EVAL_FPS)
    except (ValueError, FileNotFoundError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise Failure(f"eval_samples: {err}") from None
    report = _moved(report, partial, folder)
    write_text_atomic(partial / METRICS_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    context.log.info(f"evaluation of {export}: " + ", ".join(f"{k}={v}" for k, v in report["metrics"].items()))
    return report


@asset(deps=[stdit2_stage3], group_name="evaluation", kinds={"pytorch", "mlflow"},
       description="Samples of the fixed prompt set from the newest stage, scored; promotes the model in the "
                   "MLflow registry when it beats the champion.")
def eval_samples(context: AssetExecutionContext, training_settings: TrainingSettings,
                 evaluation_settings: EvaluationSettings, mlflow_tracking: MlflowTracking) -> MaterializeResult:
    s = evaluation_settings
    export = training_settings.export_path(EVALUATED_STAGE)
    if not export.is_file():
        raise Failure(f"eval_samples: no export of stage {EVALUATED_STAGE} at {export}; "
                      f"materialize stdit2_stage{EVALUATED_STAGE} first")
    mlflow_tracking.client()  # an unreachable tracking server fails here, before any sampling
    try:
        inputs = round_inputs(export, s, training_settings.profile)
    except (ValueError, FileNotFoundError) as err:
        raise Failure(f"eval_samples: {err}") from None
    root = Path(s.out_root)
    latest = root / LATEST
    if latest.is_file():
        previous = json.loads(latest.read_text())
        if previous["inputs"] == inputs and Path(previous["folder"]).is_dir():
            context.log.info(f"these weights were evaluated with these settings in {previous['folder']}; reusing")
            plain = dict(previous["metadata"], up_to_date=f"weights and settings unchanged since {previous['folder']}")
            return MaterializeResult(metadata=_dagster_metadata(plain, Path(previous["folder"])))

    folder = root / context.run.run_id
    report = evaluate_round(context, export, folder, s, training_settings.profile)
    metrics = report["metrics"]
    eval_run, eval_url, source_run = log_evaluation(mlflow_tracking, folder, report, export,
                                                    _training_run_id(training_settings))
    scores = ("prompt_following", "color_accuracy", "direction_accuracy", "diversity",
              *(k for k in ("i2v_direction_accuracy", "extend_direction_accuracy", "clip_score") if k in metrics))
    plain = {**{name: _number(metrics[name]) for name in scores},
             "samples": len(report["samples"]), "checkpoint": str(export), "metric": s.metric,
             "mlflow_eval_run": eval_url}
    score = metrics.get(s.metric)
    if score is None or math.isnan(float(score)):
        context.log.warning(f"{s.metric} is undefined for this round: nothing registered or promoted")
        plain["decision"] = f"not registered: {s.metric} undefined"
    else:
        outcome = promote_if_better(mlflow_tracking.tracking_uri, mlflow_tracking.model_name, source_run, "export",
                                    score, s.metric)
        client = mlflow_tracking.client()
        client.set_tag(eval_run, "promotion.decision", outcome["decision"])
        client.set_tag(eval_run, "model_version", str(outcome["new_version"]))
        before = ("no champion before" if outcome["champion_version"] is None else
                  f"champion before: v{outcome['champion_version']}, score {outcome['champion_score']}")
        context.log.info(f"{mlflow_tracking.model_name} v{outcome['new_version']} ({s.metric} {score:.3f}): "
                         f"{outcome['decision']} ({before})")
        none = "none"
        plain.update({
            "decision": outcome["decision"], "model_version": outcome["new_version"], "score": float(score),
            "champion_version_before": none if outcome["champion_version"] is None else outcome["champion_version"],
            "champion_score_before": none if outcome["champion_score"] is None else outcome["champion_score"],
        })
    write_text_atomic(latest, json.dumps({"inputs": inputs, "folder": str(folder), "metadata": plain},
                                         indent=2, sort_keys=True) + "\n")
    return MaterializeResult(metadata=_dagster_metadata(plain, folder))


evaluation_assets = [eval_samples]
