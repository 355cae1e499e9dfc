"""The benchmarks' commands: one `bench_app` typer group, reached two ways with the same
options, defaults and exits (0 done, 2 bad input):

- `python bench/<file>.py [options]`: each benchmark module's `__main__` block calls
  `run_script` with its command's name (model_step.py -> model, sampling.py -> sampling,
  dataloader.py -> dataloader, prompt_following.py -> prompt-following,
  train_step.py -> train);
- `opensora bench <command> [options]`: `opensora_core/cli.py` loads this group when a
  `bench` command runs (never at `opensora --help`).

This module imports only typer and the CLI helpers; each command imports the module it
runs (torch with it) when it runs.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from opensora_core.config import ConfigError
from opensora_core.utils.cli import console, err_console, fail

BENCH_HELP = "Benchmarks that print tables (they assert nothing); the code lives in bench/."
bench_app = typer.Typer(no_args_is_help=True, add_completion=False, help=BENCH_HELP)


OFF_ON = (("off", False), ("on", True))


def _one_or_both(option: str, value: str, first, second) -> tuple:
    """An option that names one of two choices or "both": the chosen values, in order.
    A choice is a name, or (name, value) where the value differs from the name."""
    first, second = (c if isinstance(c, tuple) else (c, c) for c in (first, second))
    choices = {first[0]: (first[1],), second[0]: (second[1],), "both": (first[1], second[1])}
    if value not in choices:
        fail(f"{option} {value!r}: expected one of {', '.join(choices)}")
    return choices[value]


@bench_app.command("model")
def bench_model(
    setup: Annotated[str, typer.Option(
        help="Comma-separated: tiny, reference (Open-Sora 1.1's comparison: hidden 384, depth 4, batch 2, latent "
             "32x32; fp32 and bf16, glibc's default host memory and retained, eager and compiled), or custom "
             "(the options below).")
    ] = "tiny,reference",
    hidden_size: Annotated[int, typer.Option(help="custom: width of both models.")] = 192,
    depth: Annotated[int, typer.Option(help="custom: blocks of both models.")] = 4,
    num_heads: Annotated[int, typer.Option(help="custom.")] = 4,
    frames: Annotated[str, typer.Option(help="Comma-separated latent frame counts.")] = "16,64",
    size: Annotated[int, typer.Option(help="custom: latent height = width.")] = 16,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    precision: Annotated[str, typer.Option(help="custom: fp32, bf16 (autocast over fp32 weights) or both.")] = "fp32",
    host_memory: Annotated[str, typer.Option(help="custom: default, retained or both.")] = "retained",
    batch: Annotated[int, typer.Option(min=1, help="custom.")] = 1,
    caption_channels: Annotated[int | None, typer.Option(help="custom: caption width (default: the hidden size).")] = None,
    baseline: Annotated[bool, typer.Option(help="custom: also measure the full-attention DiT.")] = True,
    checkpointing: Annotated[str, typer.Option(help="custom: off, on or both.")] = "both",
    compile: Annotated[str, typer.Option(help="custom: torch.compile each block: off, on or both.")] = "off",
) -> None:
    """Forward+backward time, tokens/s, GFLOP/s against the measured matmul peak and peak memory: STDiT-2 (vs a full-attention DiT)."""
    from bench.model_step import SETUPS, run_model_step_benchmark

    try:
        frame_counts = [int(f) for f in frames.split(",")]
    except ValueError:
        fail(f"--frames {frames!r}: expected comma-separated integers like 16,64")
    custom = {"hidden_size": hidden_size, "depth": depth, "num_heads": num_heads, "size": size, "batch": batch,
              "caption_channels": caption_channels, "baseline": baseline,
              "precisions": _one_or_both("--precision", precision, "fp32", "bf16"),
              "host_memory": _one_or_both("--host-memory", host_memory, "default", "retained"),
              "checkpointing": _one_or_both("--checkpointing", checkpointing, *OFF_ON),
              "compile": _one_or_both("--compile", compile, *OFF_ON)}
    names = [n.strip() for n in setup.split(",") if n.strip()]
    unknown = [n for n in names if n != "custom" and n not in SETUPS]
    if unknown or not names:
        fail(f"--setup {setup!r}: expected some of {', '.join([*SETUPS, 'custom'])}")
    from pydantic import ValidationError

    for name in names:
        console.print(f"[bold]setup {name}[/]")
        try:
            run_model_step_benchmark(frame_counts=frame_counts, repeats=repeats, console=console,
                                     **(custom if name == "custom" else SETUPS[name]))
        except ValidationError as err:  # a custom model size STDiT-2 cannot have
            fail(f"--setup {name}: " + "; ".join(e["msg"] for e in err.errors()))


@bench_app.command("sampling")
def bench_sampling(
    presets: Annotated[str, typer.Option(help="Comma-separated presets.")] = "stdit2-tiny,stdit2-small",
    num_frames: Annotated[int, typer.Option()] = 16,
    size: Annotated[int, typer.Option(help="Square side in pixels (multiple of 16).")] = 64,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or both.")] = "both",
    compile: Annotated[str, typer.Option(help="torch.compile each block: off, on or both.")] = "both",
) -> None:
    """Seconds per denoising step and per video: IDDPM 100 steps vs DPM-Solver++ 20, fp32/bf16, eager/compiled."""
    from bench.sampling import run_sampling_benchmark

    dtypes = _one_or_both("--dtype", dtype, "fp32", "bf16")
    compiles = _one_or_both("--compile", compile, *OFF_ON)
    run_sampling_benchmark([p.strip() for p in presets.split(",") if p.strip()], num_frames, size, console,
                           dtypes, compiles)


@bench_app.command("dataloader")
def bench_dataloader(
    clips: Annotated[int, typer.Option(min=2)] = 24,
    frames: Annotated[int, typer.Option(min=1)] = 24,
    size: Annotated[int, typer.Option(help="Square side in pixels (multiple of 16).")] = 64,
    max_batches: Annotated[int, typer.Option(min=1)] = 12,
) -> None:
    """Samples/s from caches vs on-the-fly decode+encode, and bytes per cached caption."""
    from bench.dataloader import run_dataloader_benchmark

    run_dataloader_benchmark(clips, frames, size, max_batches, console)


@bench_app.command("prompt-following")
def bench_prompt_following(
    recipes: Annotated[str, typer.Option(help="Comma-separated names of bench.prompt_following.RECIPES.")] = "demo,demo-rope-only,demo-iddpm",
    eval_every: Annotated[int, typer.Option(min=1, help="Steps between evaluations.")] = 200,
    steps: Annotated[int, typer.Option(min=1, help="Sampler steps.")] = 20,
    seeds: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Held-out colour, direction, image-to-video and extension accuracy against training minutes, per recipe."""
    from bench.prompt_following import RECIPES, run_prompt_following_benchmark

    names = [n.strip() for n in recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        fail(f"--recipes: unknown {unknown or names}; choose from {', '.join(RECIPES)}")
    run_prompt_following_benchmark({n: RECIPES[n] for n in names}, eval_every, steps, seeds=seeds, console=console)


@bench_app.command("train")
def bench_train(
    presets: Annotated[str, typer.Option(help="Comma-separated presets.")] = "stdit2-tiny,stdit2-small",
    steps: Annotated[int, typer.Option(min=3)] = 8,
    clips: Annotated[int, typer.Option(min=4)] = 16,
) -> None:
    """Training samples/s, tokens/s and peak memory: 1 vs 2 processes, with and without activation checkpointing."""
    from bench.train_step import run_train_step_benchmark

    run_train_step_benchmark([p.strip() for p in presets.split(",") if p.strip()], steps, clips, console)


def run_script(command: str, args: list[str] | None = None) -> None:
    """`python bench/<file>.py [options]`: `opensora bench <command> [options]` as a
    command of its own (usage names the script). Exits like `opensora`: 2 on a config
    error (an unknown preset, say), as on bad options."""
    click_command = typer.main.get_command(bench_app).commands[command]
    try:
        click_command.main(args=args, prog_name=f"python {sys.argv[0]}")
    except ConfigError as err:
        err_console.print(f"[bold red]config error:[/] {err}", highlight=False)
        sys.exit(2)
