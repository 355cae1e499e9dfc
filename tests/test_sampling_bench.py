"""The sampling benchmark's rows: every preset x dtype x sampler, with the bf16 speed-up."""

from rich.console import Console

from bench.sampling import run_sampling_benchmark


def test_sampling_bench_times_fp32_and_bf16_for_each_sampler():
    console = Console(record=True, width=200)
    rows = run_sampling_benchmark(["stdit2-tiny"], num_frames=2, size=16, console=console)
    assert [(r["dtype"], r["sampler"], r["steps"]) for r in rows] == [
        ("fp32", "iddpm", 100), ("fp32", "dpm-solver", 20), ("bf16", "iddpm", 100), ("bf16", "dpm-solver", 20)]
    assert all(r["video_seconds"] > r["step_seconds"] > 0 for r in rows)
    assert "speed-up vs fp32" in console.export_text()
