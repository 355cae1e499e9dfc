"""`TrainArgs` is the one declaration of the training flags: every door (the argparse
parser torchrun starts, `opensora train`, the argv that launchers build) exposes exactly
its fields, so a field added to the declaration shows up everywhere or fails here. The
TorchX component's side is in tests/orchestration/test_launch.py."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from opensora_core import cli
from opensora_core.train import loop
from opensora_core.train.args import (
    ArgInfo,
    TrainArgs,
    TrainFlag,
    add_train_arguments,
    parse_train_args,
    train_argv,
    train_flags,
)

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _sample(flag: TrainFlag):
    """A value for the field that is not its default."""
    if flag.type is str:
        return f"/given/{flag.name}"
    if flag.type is int:
        return int(flag.info.min or 0) + 7
    return 0.125


def _every_field() -> TrainArgs:
    return TrainArgs(**{flag.name: _sample(flag) for flag in train_flags()})


def _required_only() -> TrainArgs:
    return TrainArgs(**{flag.name: _sample(flag) for flag in train_flags() if flag.required})


def test_every_field_is_a_flag_with_help():
    flags = train_flags()
    assert [flag.name for flag in flags] == [field.name for field in dataclasses.fields(TrainArgs)]
    assert all(flag.flag == "--" + flag.name.replace("_", "-") and flag.info.help for flag in flags)
    assert [flag.name for flag in flags if flag.required] == ["stage", "data", "out"]


def test_a_field_without_its_flag_metadata_is_refused(monkeypatch):
    @dataclasses.dataclass
    class Extended(TrainArgs):
        undeclared: int = 0

    monkeypatch.setattr("opensora_core.train.args.TrainArgs", Extended)
    with pytest.raises(TypeError, match="undeclared: declare it with train_arg"):
        train_flags()

    @dataclasses.dataclass
    class Listy(TrainArgs):
        many: list[int] = dataclasses.field(default=None, metadata={"train_arg": ArgInfo("not a flag type")})

    monkeypatch.setattr("opensora_core.train.args.TrainArgs", Listy)
    with pytest.raises(TypeError, match="not a flag type"):
        train_flags()


def test_argparse_parser_exposes_exactly_the_declared_flags():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert [a.option_strings for a in actions] == [[flag.flag] for flag in train_flags()]
    for action, flag in zip(actions, train_flags(), strict=True):
        assert action.dest == flag.name and action.required == flag.required and action.help == flag.info.help
        assert action.default == flag.default


@pytest.mark.parametrize("make", [_every_field, _required_only,
                                  lambda: dataclasses.replace(_required_only(), keep_last=1, lr=3e-4)])
def test_argv_round_trips_every_field(make):
    args = make()
    assert parse_train_args(train_argv(args)) == args


def test_argv_names_every_set_field_once():
    argv = train_argv(_every_field())
    assert argv[::2] == [flag.flag for flag in train_flags()]


def test_the_torchrun_entries_parse_the_declaration():
    """`python -m opensora_core.train.loop` and the TorchX entry both use parse_train_args."""
    assert loop.TrainArgs is TrainArgs and loop.parse_train_args is parse_train_args
    from orchestration.launch import train_entry

    assert train_entry.parse_train_args is parse_train_args


@pytest.mark.parametrize("argv, message", [
    (["--keep-last", "0"], "argument --keep-last: 0 is not in the range x>=1"),
    (["--max-steps", "two"], "argument --max-steps: invalid int value: 'two'"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
])
def test_argparse_rejects_bad_values_with_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--stage", "s", "--data", "d", "--out", "o", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def _train_command():
    return typer.main.get_command(cli.app).commands["train"]


def test_opensora_train_exposes_exactly_the_declared_flags():
    options = [p for p in _train_command().params if p.name != "help"]
    assert [p.opts for p in options] == [[flag.flag] for flag in train_flags()]
    for option, flag in zip(options, train_flags(), strict=True):
        assert option.name == flag.name and option.required == flag.required and option.help == flag.info.help
        assert option.default == (None if flag.required else flag.default)
    help_text = runner.invoke(cli.app, ["train", "--help"], terminal_width=200).output
    assert all(flag.flag in help_text for flag in train_flags())


def test_opensora_train_passes_every_field_to_train_stage(monkeypatch):
    seen = []

    def fake_train_stage(args):
        seen.append(args)
        return loop.TrainResult(steps=1, final_loss=0.5, tokens_per_second=1.0, wall_seconds=1.0,
                                export_path="/x/export/model.safetensors", dcp_dir="/x/checkpoints/step-1")

    monkeypatch.setattr(loop, "train_stage", fake_train_stage)
    for args in (_every_field(), _required_only()):
        result = runner.invoke(cli.app, ["train", *train_argv(args)])
        assert result.exit_code == 0, result.output
        assert seen[-1] == args
    assert all(type(getattr(seen[0], flag.name)) is flag.type for flag in train_flags())  # no Path objects


def test_opensora_train_rejects_keep_last_0_with_exit_code_2():
    result = runner.invoke(cli.app, ["train", *train_argv(_required_only()), "--keep-last", "0"])
    assert result.exit_code == 2 and "--keep-last" in result.output


def test_dvc_stages_use_only_declared_flags():
    flags = {flag.flag for flag in train_flags()}
    commands = [stage["cmd"] for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
                if " opensora train " in f" {stage['cmd']} ".replace(".venv/bin/", "")]
    assert len(commands) == 4
    for command in commands:
        used = {word for word in shlex.split(command) if word.startswith("--")}
        assert used and used <= flags, used - flags
