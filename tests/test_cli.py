from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opensora_core import cli
from opensora_core.models.checkpoint_io import load_stdit2

from .models.model_fixtures import build_random_model

runner = CliRunner()


def test_help_lists_every_command_group():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for group in ("data", "cache", "train", "sample", "bench", "model", "app"):
        assert group in result.output


def test_help_imports_neither_torch_nor_pandas():
    """`opensora --help` stays instant: the heavy libraries (and bench/, the benchmarks) load
    in the commands that use them."""
    import subprocess

    code = ("import sys; import opensora_core.cli; "
            "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'av', 'dagster', 'bench', 'gradio') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


def test_model_info_reports_parameters_and_cost():
    result = runner.invoke(cli.app, ["model", "info", "--preset", "stdit2-tiny", "--num-frames", "8",
                                     "--height", "64", "--width", "64", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert "2,103,026" in result.output
    assert "tokens per sample" in result.output and "│         128 │" in result.output  # 8 x (64/8/2)^2
    assert "414 MFLOP" in result.output and "MiB" in result.output


def test_model_info_rejects_bad_sizes_with_exit_code_2():
    result = runner.invoke(cli.app, ["model", "info", "--height", "60"])
    assert result.exit_code == 2
    assert "multiples of 8" in result.output
    result = runner.invoke(cli.app, ["model", "info", "--num-frames", "0"])
    assert result.exit_code == 2 and "--num-frames" in result.output


def test_unknown_preset_is_a_config_error_with_exit_code_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["opensora", "model", "info", "--preset", "stdit2-huge"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "stdit2-huge" in err and "stdit2-tiny" in err


def test_model_convert_round_trip(tmp_path):
    model = build_random_model()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ema.pt")
    out = tmp_path / "export" / "model.safetensors"
    result = runner.invoke(cli.app, ["model", "convert", "--from", str(tmp_path / "ema.pt"), "--to", str(out)])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "all keys match" in result.output
    loaded = load_stdit2(out)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_model_convert_against_wrong_preset_fails_cleanly(tmp_path):
    torch.save(build_random_model().state_dict(), tmp_path / "tiny.pth")
    result = runner.invoke(cli.app, ["model", "convert", "--from", str(tmp_path / "tiny.pth"),
                                     "--to", str(tmp_path / "out.safetensors"), "--preset", "stdit2-tiny"])
    assert result.exit_code == 2
    assert "shape mismatch" in result.output
    assert not (tmp_path / "out.safetensors").exists()


def test_a_command_whose_extra_is_missing_names_the_extra(tmp_path):
    """Without the curation extra (OpenCV, scenedetect), curating exits 2 naming the
    extra to install, not with an ImportError traceback."""
    code = ("import sys; sys.modules['cv2'] = None; sys.modules['scenedetect'] = None\n"
            "from opensora_core.cli import main; main()")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "clip.mp4").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-c", code, "data", "curate", "--input", str(raw), "--out", str(tmp_path / "out"),
         "--config", "synthetic", "--no-progress"],
        check=False, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'opensora-mlops[curation]'" in result.stderr
    assert "Traceback" not in result.stderr
