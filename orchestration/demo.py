"""`make demo`: the whole pipeline on the embedded default, through Dagster, then a
summary of where to look.

First a short look at the parts: a real clip (or a synthetic one when
../shared/data/videos is absent) through the embedded video autoencoder and back, and
text-to-video and image-to-video samples of the untrained tiny model (outputs/demo).
Then every asset in order in the local Dagster instance (`.dagster/` in the project
folder): synthetic dataset + shared real videos -> per-file curation partitions ->
training table -> caches -> four TorchX training stages -> evaluation and promotion in
the MLflow registry. A second run reuses everything that is up to date.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from opensora_core.config import load_profile, project_root
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import (
    frames_to_tensor,
    read_frames,
    to_uint8_frames,
    write_image,
    write_video,
)
from opensora_core.infer.sample import PromptRequest, SampleSettings, VideoGenerator, write_samples
from opensora_core.models import build_stdit2
from opensora_core.models.encoders import load_text_encoder, load_vae
from orchestration.local_run import metadata_of

SHARED_VIDEO = "Megamind.avi"
# configs/stages/demo: the tiny stages with the demo's budget (rectified flow).
DEMO_STAGES = tuple(f"demo/stage{i}" for i in range(4))



def _load_clip(num_frames: int, size: int, console: Console) -> tuple[torch.Tensor, str]:
    video_path = project_root().parent / "shared" / "data" / "videos" / SHARED_VIDEO
    if video_path.is_file():
        frames = read_frames(video_path, num_frames)
        source = str(video_path)
    else:
        console.print(f"[yellow]{video_path} not found: using a synthetic clip instead[/]")
        frames = moving_square_clip(num_frames, size, size, color="red", direction="right")
        source = "synthetic: a red square moving right"
    return frames_to_tensor(frames, size, size), source


class _Timed:
    """Call a function and record its wall time under a name (and say so, if given a console)."""

    def __init__(self, timings: dict[str, float], console: Console | None = None):
        self.timings, self.console = timings, console

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings[name] = time.perf_counter() - start
        if self.console is not None:
            self.console.print(f"[green]done[/] {name} ({self.timings[name]:.1f} s)")
        return result


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


def run_demo(out_dir: Path, num_frames: int = 16, size: int = 128, profile: str = "embedded") -> dict:
    console = Console()
    settings = load_profile(profile)
    timings: dict[str, float] = {}
    timed = _Timed(timings)

    torch.manual_seed(0)
    model = timed("build model", build_stdit2, "stdit2-tiny").eval()
    config = model.config
    vae = load_vae(settings)
    text_encoder = load_text_encoder(settings, config)

    video, source = timed("decode clip", _load_clip, num_frames, size, console)
    with torch.no_grad():
        latents = timed("vae encode", vae.encode, video[None])
        reconstruction = timed("vae decode", vae.decode, latents)[0]
        prompt = "a red square moving right" if source.startswith("synthetic") else "an animated film scene"
        caption = timed("text encode", text_encoder.encode, [prompt])
        timestep = torch.tensor([500.0])
        noisy = latents + torch.randn_like(latents)
        prediction = timed("denoise forward", model, noisy, timestep, caption["y"], caption["mask"],
                           height=float(size), width=float(size), num_frames=float(num_frames), fps=24.0)

    out_dir.mkdir(parents=True, exist_ok=True)
    side_by_side = np.concatenate([to_uint8_frames(video), to_uint8_frames(reconstruction)], axis=2)
    movie = write_video(out_dir / "vae_reconstruction.mp4", side_by_side, fps=8)

    # Generation with the untrained model: text-to-video, and image-to-video from the
    # clip's first frame (mask strategy "0" keeps that frame exactly).
    first_frame = write_image(out_dir / "reference_frame.png", to_uint8_frames(video)[0])
    generator = VideoGenerator(model, vae, text_encoder)
    settings = SampleSettings(num_frames=num_frames, height=size, width=size, steps=20, sampler="dpm-solver",
                              fps=8, seed=0)
    requests = [PromptRequest(prompt), PromptRequest(prompt, [str(first_frame)], "0")]
    samples = timed("sample 2 videos", generator.generate, requests, settings, progress=False)
    sample_paths = write_samples(samples, requests, settings, out_dir / "samples",
                                 {"preset": "stdit2-tiny", "checkpoint": None, "note": "untrained weights"})

    params = sum(p.numel() for p in model.parameters())
    table = Table(title="opensora-mlops demo (embedded profile)")
    table.add_column("what")
    table.add_column("value", justify="right")
    for row in (
        ("clip", source),
        ("video in", f"{tuple(video.shape)} in [-1, 1]"),
        ("VAE", vae.identity()),
        ("latents", str(tuple(latents.shape))),
        ("reconstruction PSNR", f"{_psnr(reconstruction, video):.2f} dB"),
        ("caption", f"{prompt!r} -> y {tuple(caption['y'].shape)}, {int(caption['mask'].sum())} tokens"),
        ("model", f"stdit2-tiny: {params:,} parameters, depth {config.depth}, hidden {config.hidden_size}"),
        ("tokens per sample", f"{latents.shape[2] * (latents.shape[3] // 2) * (latents.shape[4] // 2):,}"),
        ("prediction", f"{tuple(prediction.shape)} (noise + learned variance)"),
        ("samples (untrained)", f"{len(sample_paths)} x {tuple(samples[0].shape)}: text-to-video, image-to-video"),
        *((f"time: {name}", f"{seconds * 1000:.0f} ms") for name, seconds in timings.items()),
    ):
        table.add_row(*row)
    console.print(table)
    console.print(f"\nLook at [bold]{movie}[/] (left: input, right: VAE reconstruction)")
    console.print(f"and [bold]{sample_paths[0].parent}[/] (samples of the untrained model, with JSON sidecars).")
    console.print("Next: `opensora model info --preset stdit2-xl2` for the published model's cost, "
                  "`make bench` for the STDiT-2 vs full-attention benchmark.")
    return {"psnr": _psnr(reconstruction, video), "prediction_shape": tuple(prediction.shape), "video": movie,
            "samples": sample_paths}


def _stage_rows(result, names: list[str]) -> list[tuple[str, str]]:
    rows = []
    for name in names:
        md = metadata_of(result, name)
        if not md:
            continue
        reused = " (reused: inputs unchanged)" if "up_to_date" in md else ""
        rows.append((name, (f"{md['steps']} steps, final loss {md['final_loss']:.3f}, "
                           f"{md['wall_seconds']:.0f} s{reused}")))
    return rows


def _held_out_scores(evaluation: dict) -> str:
    """The evaluation's scores on the 28 held-out combinations, one line each."""
    first = (f"colour {evaluation['color_accuracy']:.3f} (chance 0.143), direction "
             f"{evaluation['direction_accuracy']:.3f} (chance 0.25)")
    lines = [first]
    if "i2v_direction_accuracy" in evaluation:
        lines.append(f"image-to-video direction {evaluation['i2v_direction_accuracy']:.3f}, extension direction "
                     f"{evaluation.get('extend_direction_accuracy', float('nan')):.3f}")
    lines.append(f"prompt_following {evaluation['prompt_following']:.3f} (promotion compares it), "
                 f"diversity {evaluation['diversity']:.3f}")
    return "\n".join(lines)


def _promotion(evaluation: dict) -> str:
    if "model_version" not in evaluation:
        return str(evaluation.get("decision"))
    before = evaluation["champion_version_before"]
    score_before = evaluation["champion_score_before"]
    score_text = f"{score_before:.3f}" if isinstance(score_before, float) else "not recorded"
    previous = "no champion before" if before == "none" else (
        f"champion before: v{before}, {evaluation['metric']} {score_text}")
    reused = "; reused: these weights were evaluated already" if "up_to_date" in evaluation else ""
    return f"{evaluation['decision']}: stdit2 v{evaluation['model_version']} ({previous}){reused}"


def _peak_rss_mib() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child, MiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def run_pipeline(root: Path, profile: str = "embedded", console: Console | None = None,
                 **environment: str | int | None) -> dict:
    """The whole asset graph in the local Dagster instance under `root`: synthesise the
    demo dataset (plus the shared real videos when present) into `data/raw`, register
    and curate every new raw file as a partition, then training_dataset -> caches ->
    stdit2_stage0..3 (TorchX jobs) -> eval_samples. What is up to date is reused.
    `environment` adds variables the resources read (`OPENSORA_MAX_STEPS=2`, ...)."""
    from rich.progress import Progress

    from opensora_core.curation.scene_clips import clip_origins
    from opensora_core.curation.storage import Storage
    from opensora_core.data.synthetic import DEMO_DATASET, synth
    from orchestration.definitions import build_definitions
    from orchestration.local_run import (
        PipelineFolders,
        configure_environment,
        curate_partitions,
        local_instance,
        materialize_downstream,
        register_new_partitions,
        unprocessed_partitions,
    )

    console = console or Console(width=max(Console().width, 120))
    folders = PipelineFolders(Path(root).resolve())
    demo_stages = ",".join(DEMO_STAGES)
    # The demo's data and stage configs, unless the caller's environment (`make demo
    # OPENSORA_TRAIN_STAGES=...`) or `environment` names others.
    defaults = {"OPENSORA_DATA_CONFIG": "synthetic", "OPENSORA_TRAIN_STAGES": demo_stages, "OPENSORA_STAGES": demo_stages}
    configure_environment(folders, profile, **{**{k: os.environ.get(k, v) for k, v in defaults.items()}, **environment})
    timings: dict[str, float] = {}
    timed = _Timed(timings, console)
    if not (folders.raw / "synthetic.json").is_file():  # written last by synth: rewriting would change the files
        timed("synthesise the demo dataset", synth, folders.raw, seed=0, **DEMO_DATASET)
    shared = project_root().parent / "shared" / "data" / "videos"
    for video in sorted(shared.glob("*.avi")) if shared.is_dir() else []:
        link = folders.raw / video.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(video)

    defs = build_definitions()
    instance = local_instance(folders)
    register_new_partitions(instance, defs)
    todo = unprocessed_partitions(instance)
    started = time.perf_counter()
    failed: list[str] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"curating {len(todo)} new raw files", total=len(todo))

        def advance(key: str, ok: bool) -> None:
            if not ok:
                failed.append(key)
            progress.advance(task)

        curate_partitions(instance, defs, todo, on_partition=advance, workers=min(2, os.cpu_count() or 1))
    timings["curate new partitions"] = time.perf_counter() - started
    console.print(f"[green]done[/] curated {len(todo)} new raw files ({timings['curate new partitions']:.1f} s)"
                  + (f", [red]{len(failed)} failed[/]: {', '.join(failed)}" if failed else ""))

    result = timed("training_dataset -> caches -> stages 0-3 -> eval_samples", materialize_downstream,
                   instance, defs, "INFO")
    if not result.success:
        raise SystemExit("the pipeline run failed; the error is above (and in the Dagster UI)")
    dataset, text, video = (metadata_of(result, n) for n in ("training_dataset", "text_embeddings", "video_latents"))
    evaluation = metadata_of(result, "eval_samples")
    own, child = _peak_rss_mib()
    mlflow_uri = defs.resources["mlflow_tracking"].tracking_uri
    table = Table(title="make demo: the whole pipeline in Dagster (embedded profile)")
    table.add_column("what")
    table.add_column("value")
    for row in (
        ("raw files (partitions)", (f"{len(instance.get_dynamic_partitions('raw_videos'))} "
                                   f"({len(todo)} curated in this run)")),
        ("clips kept / filtered / files rejected",
         f"{dataset['kept']} / {dataset['filtered']} / {dataset['rejected']}"),
        ("video clips copied / re-encoded", "{} / {} (copied: bit-exact packets of the source, no encoding)".format(
            *clip_origins(Storage(folders.curated), instance.get_dynamic_partitions("raw_videos")))),
        ("text cache", f"{text['entries']} captions, {text['bytes'] / 2**20:.2f} MiB ({text['encoded']} new)"),
        ("video cache", f"{video['entries']} latents, {video['bytes'] / 2**20:.2f} MiB ({video['encoded']} new)"),
        *_stage_rows(result, [f"stdit2_stage{i}" for i in range(4)]),
        ("evaluation (held-out prompts)", _held_out_scores(evaluation)),
        ("promotion", _promotion(evaluation)),
        ("samples", f"{evaluation['folder']}/samples (preview.gif, frame_strip.png beside)"),
        ("peak memory", f"{own:,.0f} MiB in this process, {child:,.0f} MiB in its largest child process"),
        ("MLflow store", mlflow_uri),
        ("Dagster instance", str(folders.dagster_home)),
        *((f"time: {name}", f"{seconds:.1f} s") for name, seconds in timings.items()),
    ):
        table.add_row(*row)
    console.print(table)
    console.print("Open both UIs with [bold]make ui[/] (Dagster http://127.0.0.1:3000: the asset graph and "
                  "this run; MLflow http://127.0.0.1:5000: stage runs, eval run, model registry `stdit2`).")
    console.print("Generate from the champion with your own prompt, and compare versions: [bold]make app[/] "
                  "(http://127.0.0.1:7860).")
    return {"result": result, "evaluation": evaluation, "dataset": dataset, "timings": timings,
            "peak_rss_mib": (own, child)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="codec and untrained-sampling demo")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder of data/, artifacts/ and .dagster/ (default: the project folder)")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--skip-codec-demo", action="store_true")
    args = parser.parse_args()
    if not args.skip_codec_demo:
        run_demo(args.out, profile=args.profile)
    run_pipeline(args.root or project_root(), profile=args.profile)


if __name__ == "__main__":
    main()
