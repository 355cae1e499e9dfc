"""The `opensora` command. One subcommand group per pipeline area; each command is a
thin shell over an `opensora_core` function of the same name.

Exit codes: 0 success, 1 failure while working, 2 bad input (config, arguments, files).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from typer.core import TyperGroup

from opensora_core.config import ConfigError
from opensora_core.curation.cli import data_app
from opensora_core.data.cache_cli import cache_app
from opensora_core.eval.cli import eval_command
from opensora_core.train.args import TrainArgs, train_flags
from opensora_core.utils.cli import console, err_console, fail

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n\n")[0])
model_app = typer.Typer(no_args_is_help=True, help="Inspect and convert STDiT-2 models.")


class _BenchGroup(TyperGroup):
    """`opensora bench ...`: the commands of `bench.cli.bench_app` (the benchmarks' one
    home, bench/), loaded when a bench command or `opensora bench --help` runs, so that
    `opensora --help` imports nothing of bench/ (nor torch)."""

    def _load(self) -> None:
        if self.commands:
            return
        try:
            from bench.cli import bench_app
        except ImportError as err:
            fail(f"the benchmarks (bench/) are not importable: {err}; run from the repository root with "
                 f"the project installed (`pip install -e .`)")
        self.commands.update(typer.main.get_command(bench_app).commands)

    def list_commands(self, ctx):
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx, cmd_name):
        self._load()
        return super().get_command(ctx, cmd_name)


bench_app = typer.Typer(cls=_BenchGroup, no_args_is_help=True,
                        help="Benchmarks that print tables (they assert nothing); the code lives in bench/.")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
runs_app = typer.Typer(no_args_is_help=True, help="Compare MLflow training runs.")
app.add_typer(runs_app, name="runs")
app.command("eval-samples")(eval_command)  # the asset and DVC stage `eval_samples`
app.command("eval", hidden=True, help="Old name of `eval-samples`.")(eval_command)




def _dtype(name: str):
    from opensora_core.utils.dtypes import resolve_dtype

    try:
        return resolve_dtype(name)
    except ValueError as err:
        fail(f"--dtype: {err}")


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.3g} {suffix}{unit}".rstrip()
        n /= 1000
    return f"{n:.3g} E{unit}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


@model_app.command("info")
def model_info(
    preset: Annotated[str, typer.Option(help="Preset name (configs/models stem or STDiT2-XL/2) or YAML path.")] = "stdit2-tiny",
    num_frames: Annotated[int, typer.Option(min=1, help="Video frames (= latent frames for the SD VAE).")] = 16,
    height: Annotated[int, typer.Option(min=8, help="Video height in pixels (one 8-pixel latent cell or more).")] = 256,
    width: Annotated[int, typer.Option(min=8, help="Video width in pixels (one 8-pixel latent cell or more).")] = 256,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    dtype: Annotated[str, typer.Option(help="Compute dtype: bf16, fp16 or fp32.")] = "bf16",
    grad_checkpoint: Annotated[bool, typer.Option(help="Activation checkpointing per block.")] = False,
) -> None:
    """Parameters, FLOPs per training step and a memory estimate for a preset."""
    from opensora_core.models import load_preset
    from opensora_core.models.accounting import estimate_step_cost

    config = load_preset(preset)
    try:
        cost = estimate_step_cost(config, num_frames, height, width, batch_size, _dtype(dtype), grad_checkpoint)
    except ValueError as err:
        fail(str(err))
    table = Table(title=f"{preset}: {batch_size} x {num_frames}x{height}x{width}, {dtype}"
                  f"{', activation checkpointing' if grad_checkpoint else ''}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("parameters", f"{cost.parameters:,}"),
        ("trainable parameters", f"{cost.trainable_parameters:,}"),
        ("hidden / depth / heads", f"{config.hidden_size} / {config.depth} / {config.num_heads}"),
        ("tokens per sample", f"{cost.tokens_per_sample:,}"),
        ("forward FLOPs", _human(cost.forward_flops, "FLOP")),
        ("train step FLOPs (fwd+bwd)", _human(cost.train_flops, "FLOP")),
        ("weights (fp32)", _bytes(cost.param_bytes)),
        ("gradients (fp32)", _bytes(cost.grad_bytes)),
        ("AdamW states (fp32)", _bytes(cost.optimizer_bytes)),
        (f"activations ({dtype})", _bytes(cost.activation_bytes)),
        ("total, one device, unsharded", _bytes(cost.total_bytes)),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


@model_app.command("convert")
def model_convert(
    source: Annotated[Path, typer.Option("--from", help="Open-Sora checkpoint: .pt, .pth, .safetensors, or a "
                                         "published Hugging Face folder (model.safetensors + config.json).")],
    target: Annotated[Path, typer.Option("--to", help="Output .safetensors path (config.json is written beside it).")],
    preset: Annotated[str | None, typer.Option(help="Verify against this preset instead of inferring the config.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Cast floating tensors: bf16, fp16 or fp32.")] = None,
) -> None:
    """Convert an Open-Sora STDiT-2 checkpoint into our safetensors, verifying every key and shape."""
    from opensora_core.models import load_preset
    from opensora_core.models.checkpoint_io import convert_checkpoint

    if target.suffix != ".safetensors":
        fail(f"--to {target}: expected a .safetensors path")
    config = load_preset(preset) if preset else None
    try:
        config, report, count = convert_checkpoint(source, target, config, _dtype(dtype) if dtype else None)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(f"verified {count} tensors ({report.describe()}); wrote {target}")
    console.print(f"config: hidden {config.hidden_size}, depth {config.depth}, heads {config.num_heads}, "
                  f"caption {config.caption_channels}x{config.model_max_length}")


def _prompt_lines(prompt: list[str] | None, prompt_path: Path | None, start_index: int,
                  end_index: int | None) -> list[str]:
    """`opensora sample`'s prompts: the --prompt ones, then the file's, from --start-index to --end-index."""
    lines = list(prompt or [])
    if prompt_path is not None:
        if not prompt_path.is_file():
            fail(f"--prompt-path {prompt_path}: no such file")
        lines += [line for line in prompt_path.read_text().splitlines() if line.strip()]
    if not lines:
        fail("give at least one --prompt or a --prompt-path")
    if start_index >= len(lines):
        fail(f"--start-index {start_index}: there are only {len(lines)} prompts")
    if end_index is not None and end_index <= start_index:
        fail(f"--end-index {end_index} must be greater than --start-index {start_index}")
    return lines[start_index:end_index]


def _frame_size(resolution: str | None, aspect_ratio: str, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) from --resolution/--aspect-ratio or from --height and --width."""
    from opensora_core.infer.sizes import image_size

    if resolution is not None:
        if height is not None or width is not None:
            fail("give --resolution/--aspect-ratio or --height/--width, not both")
        return image_size(resolution, aspect_ratio)
    if height is None or width is None:
        fail("give --resolution (with --aspect-ratio) or both --height and --width")
    return height, width


@app.command("sample", help="Generate videos: text-to-video/image, image-to-video, extension, connection, "
                             "editing, long videos.")
def sample(
    out: Annotated[Path, typer.Option(help="Folder for the samples (.mp4/.png) and their .json sidecars.")],
    prompt: Annotated[list[str] | None, typer.Option(
        help="A prompt; repeat for several. `|0|first|2|second` changes it per loop; may end with Open-Sora's "
             "JSON suffix.")] = None,
    prompt_path: Annotated[Path | None, typer.Option(
        "--prompt-path", "--prompt-file", help="One prompt per line (blank lines skipped).")] = None,
    start_index: Annotated[int, typer.Option(
        min=0, help="First prompt to sample (after --prompt ones, then the file's); names count from it.")] = 0,
    end_index: Annotated[int | None, typer.Option(help="Stop before this prompt (default: the last).")] = None,
    num_sample: Annotated[int, typer.Option(min=1, help="Samples per prompt, each from its own noise (-k names).")] = 1,
    prompt_as_path: Annotated[bool, typer.Option(help="Name the files after the prompts, not sample_NNN.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(help="model.safetensors (or its folder), or an Open-Sora .pt/.pth.")] = None,
    preset: Annotated[str | None, typer.Option(help="Random-init preset instead of a checkpoint (pipeline checks).")] = None,
    profile: Annotated[str, typer.Option(
        help="Profile naming the VAE and text encoder (published: Open-Sora's T5-XXL and SD VAE folders).")] = "embedded",
    num_frames: Annotated[int, typer.Option(help="Frames per loop (1 = image).")] = 16,
    resolution: Annotated[str | None, typer.Option(help="Named resolution, e.g. 240p (with --aspect-ratio).")] = None,
    aspect_ratio: Annotated[str, typer.Option(help="height:width as Open-Sora writes it (9:16 is landscape), or 0.56.")] = "9:16",
    height: Annotated[int | None, typer.Option(help="Pixels; instead of --resolution.")] = None,
    width: Annotated[int | None, typer.Option(help="Pixels; instead of --resolution.")] = None,
    fps: Annotated[float, typer.Option(
        help="Source frame rate: the published model is conditioned on it; ours (micro_condition_convention "
             "consistent) on fps / frame-interval, the rate of the frames they generate.")] = 24.0,
    frame_interval: Annotated[int, typer.Option(
        min=1, help="The file is written at fps // frame-interval frames per second (Open-Sora's published "
                    "config: 24 // 3 = 8).")] = 3,
    steps: Annotated[int, typer.Option()] = 100,
    sampler: Annotated[str, typer.Option(
        help="auto (the model's own: iddpm, or rflow for rectified-flow models), iddpm, dpm-solver or rflow.")] = "auto",
    cfg_scale: Annotated[float, typer.Option()] = 7.0,
    cfg_channel: Annotated[int, typer.Option(
        help="IDDPM guides only the first N latent channels; DPM-Solver and rflow guide all (as Open-Sora).")] = 3,
    seed: Annotated[int, typer.Option()] = 42,
    reference: Annotated[list[str] | None, typer.Option(help="Reference image/video; repeat for several (ref_id order).")] = None,
    mask_strategy: Annotated[str | None, typer.Option(help="loop,ref_id,ref_start,target_start,length,edit_ratio;...")] = None,
    loops: Annotated[int, typer.Option(help="Generation loops for long videos.")] = 1,
    condition_frame_length: Annotated[int, typer.Option(help="Frames each loop takes from the previous one.")] = 4,
    batch_size: Annotated[int, typer.Option()] = 1,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: the profile's device).")] = None,
    dtype: Annotated[str | None, typer.Option(
        help="Model dtype: bf16, fp16 or fp32 (default: bf16 on CUDA as Open-Sora, fp32 on CPU).")] = None,
    compile: Annotated[bool, typer.Option(
        help="torch.compile each block: the first denoising step pays the compilation, every later one runs "
             "faster (many prompts, steps or loops).")] = False,
) -> None:
    """Generate videos (the help above). Long for its typer options only: the prompts are
    `_prompt_lines`, the size `_frame_size`, the rest `infer.sample`."""
    from opensora_core.infer.sample import (
        SampleSettings,
        load_generation_stack,
        parse_prompt,
        request_problems,
        sample_to_files,
    )

    lines = _prompt_lines(prompt, prompt_path, start_index, end_index)
    if (checkpoint is None) == (preset is None):
        fail("give exactly one of --checkpoint or --preset")
    try:
        height, width = _frame_size(resolution, aspect_ratio, height, width)
        requests = [parse_prompt(line, reference, mask_strategy) for line in lines]
        settings = SampleSettings(num_frames=num_frames, height=height, width=width, fps=fps,
                                  frame_interval=frame_interval, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                                  cfg_channel=cfg_channel, seed=seed, loops=loops,
                                  condition_frame_length=condition_frame_length, batch_size=batch_size)
        problems = settings.problems() + request_problems(requests, settings)
        if problems:  # before seconds of model loading
            fail("cannot sample:\n  " + "\n  ".join(problems))
        generator, provenance = load_generation_stack(checkpoint, preset, profile, device,
                                                      None if dtype is None else _dtype(dtype), compile)
        written = sample_to_files(generator, requests, settings, out, provenance, start_index, num_sample,
                                  prompt_as_path)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for path in written:
        console.print(f"wrote {path}")


def _train_signature() -> inspect.Signature:
    """`opensora train`'s options, one per declared `TrainArgs` field (opensora_core.train.args)."""
    params = []
    for flag in train_flags():
        kind = Path if flag.info.path else flag.type
        option = typer.Option(flag.flag, help=flag.info.help, min=flag.info.min)
        params.append(inspect.Parameter(
            flag.name, inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if flag.required else flag.default,
            annotation=Annotated[kind | None if flag.optional else kind, option]))
    return inspect.Signature(params)


def train(**values: object) -> None:
    """Train one stage (one process, or under torchrun: FSDP2 over gloo/NCCL)."""
    from opensora_core.train.loop import TrainingError, train_stage

    args = TrainArgs(**{name: str(v) if isinstance(v, Path) else v for name, v in values.items()})
    try:
        result = train_stage(args)
    except (TrainingError, FileNotFoundError) as err:
        fail(str(err))
    console.print(f"stage done: {result.steps} steps, loss {result.final_loss:.4f}, "
                  f"{result.tokens_per_second:,.0f} tokens/s; export {result.export_path}")


# typer reads the options from the signature: the declared fields, not a copy of them.
train.__signature__ = _train_signature()  # type: ignore[attr-defined]
app.command("train")(train)


@runs_app.command("compare")
def runs_compare_command(
    stage: Annotated[int | None, typer.Option(help="Only runs of this stage (the run's `stage` tag).")] = None,
    last: Annotated[int, typer.Option(min=1, help="How many of the newest runs.")] = 5,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the embedded profile's mlflow_tracking_uri).")] = None,
) -> None:
    """Print the newest stage runs side by side: tags, key params, latest metrics."""
    from opensora_core.tracking.runs_cli import runs_compare
    from opensora_core.tracking.store import TrackingUnreachable

    try:
        runs_compare(stage=stage, last=last, tracking_uri=tracking_uri)
    except TrackingUnreachable as err:
        fail(str(err))


@app.command("app")
def app_command(
    host: Annotated[str, typer.Option(help="Address to serve on (loopback by default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 7860,
    share: Annotated[bool, typer.Option(help="Also open a public gradio.live link (off: nothing leaves the machine).")] = False,
    out: Annotated[Path, typer.Option(help="Folder for the generated videos (the History tab) and downloaded "
                                      "model versions.")] = Path("outputs/app"),
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow store with the stdit2 registry (default: the embedded profile's, as `make ui`).")] = None,
    model: Annotated[Path | None, typer.Option(
        help="A local export/checkpoint folder preselected when the registry holds no version.")] = None,
    max_models: Annotated[int, typer.Option(min=1, help="Models kept loaded at once (memory).")] = 1,
) -> None:
    """Serve the web app: generate from any registered version or local model, compare versions, history."""
    from opensora_core.config import load_profile

    if model is not None and not model.exists():
        fail(f"--model {model}: no such file or folder")
    if tracking_uri is None:
        tracking_uri = load_profile("embedded").mlflow_tracking_uri
    from opensora_core.app.models import ModelStore
    from opensora_core.app.ui import AppState, _profiles, launch

    out = out.resolve()
    state = AppState(ModelStore(tracking_uri, out / "models", max_loaded=max_models), out / "samples", _profiles(),
                     None if model is None else str(model.resolve()))
    console.print(f"model registry: {tracking_uri}; Ctrl-C stops the app", highlight=False)
    try:
        launch(state, host, port, share)
    except OSError as err:
        fail(f"cannot serve on {host}:{port}: {err}")


# Packages that only an extra installs (pyproject.toml): a command that needs one names it.
EXTRA_OF_PACKAGE = {
    "cv2": "curation", "scenedetect": "curation", "pytesseract": "curation", "aiohttp": "curation",
    "dagster": "orchestration", "torchx": "orchestration", "matplotlib": "orchestration",
    "tabulate": "orchestration", "dagster_webserver": "ui", "dagster_pipes": "train", "gradio": "app",
    "s3fs": "s3", "tesserocr": "ocr", "dagster_k8s": "k8s", "dagster_postgres": "postgres",
    "psycopg2": "postgres",
}


def main() -> None:
    try:
        app()
    except ConfigError as err:
        err_console.print(f"[bold red]config error:[/] {err}", highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as err:
        extra = EXTRA_OF_PACKAGE.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] this command needs {err.name}, which the '{extra}' extra "
                          + escape(f"installs: pip install 'opensora-mlops[{extra}]'"), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
