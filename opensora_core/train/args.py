"""The arguments of one training stage, declared once: the `TrainArgs` dataclass.

Each field is one command-line flag: `--` + the field name with dashes (`keep_last` ->
`--keep-last`). Its type gives the flag's type (`X | None`: may be left out), its default
the flag's default (none: required), and `train_arg(...)` in its metadata the help text
and limits. Every door into a training process is generated from this declaration:

- `add_train_arguments` / `parse_train_args`: the argparse flags of
  `python -m opensora_core.train.loop` and `python -m orchestration.launch.train_entry`
  (what torchrun starts);
- `train_flags()`: what `opensora train` builds its typer options from (opensora_core/cli.py);
- `train_argv`: the command line for a `TrainArgs`, for whoever launches a training process
  (the TorchX component, the Dagster stage assets through it, benchmarks, tests).

The TorchX component (orchestration/launch/components.py) has to spell its parameters out
in source, because TorchX lints the function's source; tests/orchestration/test_launch.py
checks that they are exactly these fields.

No torch here: `opensora --help` and the TorchX component import this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass

_METADATA_KEY = "train_arg"


@dataclass(frozen=True)
class ArgInfo:
    """What a field's metadata says about its flag beyond type and default."""

    help: str
    min: float | None = None  # inclusive lower limit, checked where the flag is parsed
    path: bool = False  # a file or folder: `opensora train` shows it as PATH


def train_arg(default=dataclasses.MISSING, *, help: str, min: float | None = None, path: bool = False):
    """A `TrainArgs` field with its flag's help and limits."""
    return dataclasses.field(default=default, metadata={_METADATA_KEY: ArgInfo(help, min, path)})


@dataclass
class TrainArgs:
    stage: str = train_arg(help="Stage config: path or stem (stage1, tiny/stage1).")
    data: str = train_arg(help="Training table: meta.csv or meta.parquet.", path=True)
    out: str = train_arg(help="Stage folder: checkpoints/, export/, metrics.jsonl. Resumes if it has checkpoints.",
                         path=True)
    profile: str = train_arg("embedded", help="embedded (CPU, gloo) or cluster (CUDA, NCCL), or a YAML path.")
    cache: str | None = train_arg(None, help="Cache folder with text/ and video/.", path=True)
    init: str | None = train_arg(None, help="Weights to start from: the previous stage's export.", path=True)
    max_steps: int | None = train_arg(None, help="Override the stage's max_steps.")
    ckpt_every: int | None = train_arg(None, help="Override the stage's ckpt_every.")
    seed: int | None = train_arg(None, help="Override the stage's seed.")
    keep_last: int = train_arg(2, help="Checkpoints to keep.", min=1)
    parent_run_id: str | None = train_arg(None, help="MLflow run to nest this stage's run under.")
    # > 0 and finite is checked with the other stage checks (prepare_stage), before any work.
    lr: float | None = train_arg(None, help="Override the stage's lr (peak, after warm-up); > 0.")


@dataclass(frozen=True)
class TrainFlag:
    """One declared field as a flag: everything a door needs to expose it."""

    name: str  # the field: keep_last
    flag: str  # the option: --keep-last
    type: type  # str, int or float
    optional: bool  # None is a value (the flag may be left out)
    required: bool  # no default
    default: object
    info: ArgInfo


_SCALARS = (str, int, float)


def _scalar(annotation: object) -> tuple[type, bool]:
    """(scalar type, whether None is allowed) of `str`, `int | None`, ...; others are refused."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _SCALARS:
            return rest[0], True
    elif annotation in _SCALARS:
        return annotation, False  # type: ignore[return-value]
    raise TypeError(f"TrainArgs: {annotation!r} is not a flag type; use str, int or float, optionally | None")


def train_flags() -> list[TrainFlag]:
    """The declared fields, in declaration order, as flags."""
    hints = typing.get_type_hints(TrainArgs)
    flags = []
    for field in dataclasses.fields(TrainArgs):
        if _METADATA_KEY not in field.metadata:
            raise TypeError(f"TrainArgs.{field.name}: declare it with train_arg(...) so every door exposes it")
        kind, optional = _scalar(hints[field.name])
        required = field.default is dataclasses.MISSING
        flags.append(TrainFlag(name=field.name, flag="--" + field.name.replace("_", "-"), type=kind,
                               optional=optional, required=required, default=None if required else field.default,
                               info=field.metadata[_METADATA_KEY]))
    return flags


def _with_limit(kind: type, flag: TrainFlag):
    def convert(text: str):
        value = kind(text)
        if flag.info.min is not None and value < flag.info.min:
            raise argparse.ArgumentTypeError(f"{value} is not in the range x>={flag.info.min}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return convert


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The declared flags on an argparse parser (the torchrun entries)."""
    for flag in train_flags():
        kind = flag.type if flag.info.min is None else _with_limit(flag.type, flag)
        extra = {"required": True} if flag.required else {"default": flag.default}
        parser.add_argument(flag.flag, type=kind, help=flag.info.help, **extra)


def args_from_namespace(ns: argparse.Namespace) -> TrainArgs:
    return TrainArgs(**{flag.name: getattr(ns, flag.name) for flag in train_flags()})


def parse_train_args(argv: Sequence[str] | None = None, description: str = "Train one STDiT-2 stage.") -> TrainArgs:
    parser = argparse.ArgumentParser(description=description)
    add_train_arguments(parser)
    return args_from_namespace(parser.parse_args(argv))


def train_argv(args: TrainArgs) -> list[str]:
    """The flags that give `args` back when parsed: every field that is not None."""
    argv: list[str] = []
    for flag in train_flags():
        value = getattr(args, flag.name)
        if value is not None:
            argv += [flag.flag, str(value)]
    return argv
