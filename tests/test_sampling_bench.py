"""The sampling benchmark's rows: every preset x dtype x compilation x sampler, with the
speed-up against eager fp32."""

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bench.sampling import run_sampling_benchmark
from opensora_core import cli


def test_sampling_bench_times_fp32_and_bf16_for_each_sampler():
    console = Console(record=True, width=200)
    rows = run_sampling_benchmark(["stdit2-tiny"], num_frames=2, size=16, console=console)
    assert [(r["dtype"], r["sampler"], r["steps"]) for r in rows] == [
        ("fp32", "iddpm", 100), ("fp32", "dpm-solver", 20), ("bf16", "iddpm", 100), ("bf16", "dpm-solver", 20)]
    assert all(r["video_seconds"] > r["step_seconds"] > 0 and not r["compiled"] for r in rows)
    assert "speed-up vs eager fp32" in console.export_text()


def test_sampling_bench_compiled_rows_report_their_compilation():
    console = Console(record=True, width=200)
    rows = run_sampling_benchmark(["stdit2-tiny"], num_frames=2, size=16, console=console, dtypes=("bf16",),
                                  compile=(True,))
    assert [(r["dtype"], r["compiled"], r["sampler"]) for r in rows] == [
        ("bf16", True, "iddpm"), ("bf16", True, "dpm-solver")]
    assert all(r["compile_seconds"] > 0 for r in rows)
    with pytest.raises(ValueError, match="compile"):
        run_sampling_benchmark(["stdit2-tiny"], compile=())
    result = CliRunner().invoke(cli.app, ["bench", "sampling", "--compile", "sometimes"])
    assert result.exit_code == 2 and "--compile" in result.output
