"""bench/ is the benchmarks' one home: each typer benchmark runs as `python bench/<file>.py`
and as `opensora bench <command>`, with the same options and exits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import bench
from bench.cli import bench_app, run_script
from opensora_core import cli

BENCH = Path(bench.__file__).parent
ROOT = BENCH.parent


def _scripts() -> dict[str, str]:
    """bench/<file>.py -> the command its `__main__` block runs."""
    found = {}
    for path in sorted(BENCH.glob("*.py")):
        match = re.search(r'run_script\("([\w-]+)"\)', path.read_text())
        if match:
            found[path.name] = match.group(1)
    return found


def test_every_bench_command_has_its_script():
    commands = set(typer.main.get_command(bench_app).commands)
    assert commands == {"model", "sampling", "dataloader", "prompt-following", "train"}
    assert _scripts() == {"dataloader.py": "dataloader", "model_step.py": "model",
                          "prompt_following.py": "prompt-following", "sampling.py": "sampling",
                          "train_step.py": "train"}


def test_opensora_bench_lists_the_commands_of_bench_cli():
    result = CliRunner().invoke(cli.app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("model", "sampling", "dataloader", "prompt-following", "train"):
        assert command in result.output


def test_a_script_refuses_bad_options_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script("model", ["--precision", "fp8"])
    assert exit_info.value.code == 2
    assert "--precision 'fp8': expected one of fp32, bf16, both" in capsys.readouterr().err


def test_a_config_error_exits_2_as_in_opensora(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script("sampling", ["--presets", "stdit2-huge", "--num-frames", "1", "--size", "16"])
    assert exit_info.value.code == 2
    assert "stdit2-huge" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["model_step.py", "curation.py"])
def test_scripts_run_from_the_repository_root(script):
    """`python bench/<file>.py --help`: sys.path[0] is bench/, the script finds its package."""
    done = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "--repeats" in done.stdout
