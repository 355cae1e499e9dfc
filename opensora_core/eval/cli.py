"""`opensora eval-samples` (asset and DVC stage `eval_samples`): sample and score a
checkpoint (`opensora_core.eval.evaluate`), print the scores; with `--register`, the whole
round as the Dagster asset runs it: previews, an MLflow run, the registry's champion.

Registered in `opensora_core/cli.py` as `eval-samples` (and the old spelling `eval`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def eval_command(
    checkpoint: Annotated[Path, typer.Option(help="model.safetensors (or its folder) to evaluate.")],
    prompts: Annotated[str, typer.Option(help="'default' (configs/eval/prompts.yaml), a YAML or a text file.")] = "default",
    seeds: Annotated[int, typer.Option(min=1, help="Samples per prompt (seeds 0..N-1).")] = 2,
    steps: Annotated[int, typer.Option(min=1, help="DPM-Solver++ steps.")] = 20,
    out: Annotated[Path, typer.Option(help="Folder for samples/ and metrics.json.")] = Path("outputs/eval"),
    profile: Annotated[str, typer.Option(help="Profile naming the VAE and text encoder.")] = "embedded",
    device: Annotated[str, typer.Option()] = "cpu",
    cfg_scale: Annotated[float, typer.Option()] = 7.0,
    clip: Annotated[Path | None, typer.Option(
        help="Local Hugging Face CLIP folder (config.json, weights, tokenizer, preprocessor): adds the CLIP score.")] = None,
    conditioned: Annotated[bool, typer.Option(
        help="Also score image-to-video and extension from fresh clips of the prompts' synthetic combinations.")] = True,
    register: Annotated[bool, typer.Option(
        help="The whole round, as the eval_samples asset runs it: previews, an MLflow run in the profile's store, "
             "a new version of --model-name, promoted to champion when --metric beats the champion's.")] = False,
    model_name: Annotated[str, typer.Option(help="--register: the registered model.")] = "stdit2",
    metric: Annotated[str, typer.Option(help="--register: the score compared with the champion's.")] =
        "prompt_following",
    promotion_floor: Annotated[str, typer.Option(
        help="--register: 'chance' never promotes a score at or below chance on the prompt set; 'none'.")] =
        "chance",
) -> None:
    """Score prompt following (colour, motion direction, CLIP score with --clip) and sample diversity of a checkpoint."""
    from opensora_core.eval.evaluate import (  # torch: not at --help
        METRICS_FILE,
        PROMOTION_FLOORS,
        PROMOTION_METRICS,
        run_eval,
    )

    if not checkpoint.exists():
        err_console.print(f"[bold red]error:[/] --checkpoint {checkpoint}: no such file", highlight=False)
        raise typer.Exit(2)
    if metric not in PROMOTION_METRICS:
        err_console.print(f"[bold red]error:[/] --metric {metric}: expected one of {', '.join(PROMOTION_METRICS)}",
                          highlight=False)
        raise typer.Exit(2)
    if promotion_floor not in PROMOTION_FLOORS:
        err_console.print(f"[bold red]error:[/] --promotion-floor {promotion_floor}: expected one of "
                          f"{', '.join(PROMOTION_FLOORS)}", highlight=False)
        raise typer.Exit(2)
    store = _tracking_store(profile, model_name) if register else None  # unreachable: refused before sampling
    try:
        report = run_eval(checkpoint, prompts, seeds, steps, out, profile, device, cfg_scale, clip=clip,
                          conditioned=conditioned)
    except (ValueError, FileNotFoundError) as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    console.print(_samples_table(report["samples"], with_clip=clip is not None))
    console.print(_summary_table(report))
    console.print(f"wrote {Path(out) / METRICS_FILE}")
    if store is not None:
        _register(store, checkpoint, out, report, metric, promotion_floor)


def _samples_table(rows: list[dict], with_clip: bool) -> Table:
    """One row per sample: its prompt, the predicted colour and direction, the flow (and CLIP score)."""
    samples = Table(title="samples")
    for column in ("prompt", "colour", "direction", "flow dx, dy") + (("clip",) if with_clip else ()):
        samples.add_column(column)
    for row in rows:
        mark = {True: "[green]ok[/]", False: "[red]x[/]", None: "-"}
        cells = [row["prompt"], f"{row['predicted_color']} {mark[row['color_correct']]}",
                 f"{row['predicted_direction']} {mark[row['direction_correct']]}",
                 f"{row['flow_dx']:+.2f}, {row['flow_dy']:+.2f}"]
        samples.add_row(*cells, *([_fmt(row["clip_score"])] if with_clip else []))
    return samples


def _summary_table(report: dict) -> Table:
    """The metrics of `run_eval`'s report, with how many samples each counted."""
    m = report["metrics"]
    summary = Table(title="evaluation")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_column("counted", justify="right")
    summary.add_row("color_accuracy", _fmt(m["color_accuracy"]), f"{m['color_counted']:.0f} ({m['color_skipped']:.0f} skipped)")
    summary.add_row("direction_accuracy", _fmt(m["direction_accuracy"]),
                    f"{m['direction_counted']:.0f} ({m['direction_skipped']:.0f} skipped)")
    summary.add_row("diversity", _fmt(m["diversity"]), f"{m['diversity_prompts']:.0f} prompts")
    for kind, label in (("i2v", "image-to-video"), ("extend", "extension")):
        if f"{kind}_direction_accuracy" in m:
            counted = sum(r["kind"] == kind for r in report["conditioned"])
            summary.add_row(f"{kind}_direction_accuracy", _fmt(m[f"{kind}_direction_accuracy"]), f"{counted} {label}")
            summary.add_row(f"{kind}_color_accuracy", _fmt(m[f"{kind}_color_accuracy"]), f"{counted} {label}")
    summary.add_row("prompt_following", _fmt(m["prompt_following"]), "mean of the accuracies")
    if "clip_score" in m:
        summary.add_row("clip_score", _fmt(m["clip_score"]), f"{m['num_samples']:.0f} samples")
    return summary


def _tracking_store(profile: str, model_name: str):
    from opensora_core.config import load_profile
    from opensora_core.tracking.store import TrackingStore, TrackingUnreachable

    store = TrackingStore(load_profile(profile).mlflow_tracking_uri, model_name=model_name)
    try:
        store.client()
    except TrackingUnreachable as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    return store


def _register(store, checkpoint: Path, out: Path, report: dict, metric: str, promotion_floor: str) -> None:
    """Previews, the MLflow run and the registry, as the asset's round does them."""
    from opensora_core.eval.evaluate import EVAL_FPS
    from opensora_core.eval.round import record_round, write_previews

    if metric not in report["metrics"]:
        err_console.print(f"[bold red]error:[/] --metric {metric}: not measured; measured: "
                          f"{', '.join(sorted(report['metrics']))}", highlight=False)
        raise typer.Exit(2)
    export = checkpoint / "model.safetensors" if checkpoint.is_dir() else checkpoint
    write_previews(report, Path(out), fps=EVAL_FPS)
    summary = record_round(store, Path(out), report, export, metric, log=console.print,
                           promotion_floor=promotion_floor)
    console.print(f"registered: {summary['decision']}; MLflow run {summary['mlflow_eval_run']}", highlight=False)
