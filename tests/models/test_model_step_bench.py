"""The model-step benchmark's own arithmetic: FLOPs counted per step, a measured matmul
peak, and the rows it prints (tiny sizes: the numbers themselves are not asserted)."""

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from bench.model_step import (
    matmul_peak_flops,
    measure_step,
    run_model_step_benchmark,
    train_step_flops,
)
from opensora_core import cli
from opensora_core.models import STDiT2, STDiT2Config


def test_step_flops_grow_with_tokens_and_match_a_hand_count_of_one_linear():
    linear = torch.nn.Linear(8, 16, bias=False)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return self.linear(x)

    # forward 2*M*K*N, and as much again for the weight's gradient (the input needs none)
    assert train_step_flops(Wrapped(), {"x": torch.randn(4, 8)}) == 2 * 2 * 4 * 8 * 16
    model = STDiT2(STDiT2Config(hidden_size=48, depth=1, num_heads=2, caption_channels=16, model_max_length=4))
    inputs = lambda t: {"x": torch.randn(1, 4, t, 4, 4), "timestep": torch.tensor([1.0]), "y": torch.randn(1, 1, 4, 16)}
    assert 1.5 < train_step_flops(model, inputs(4)) / train_step_flops(model, inputs(2)) < 2.5


def test_benchmark_prints_gflops_and_share_of_the_measured_peak():
    assert matmul_peak_flops(torch.float32, torch.device("cpu"), size=128, repeats=2) > 0
    console = Console(record=True, width=250)
    rows = run_model_step_benchmark(hidden_size=48, depth=1, num_heads=2, frame_counts=(2, 4), size=4, repeats=1,
                                    console=console, batch=2, caption_channels=16, baseline=False,
                                    checkpointing=(False,), precisions=("fp32", "bf16"),
                                    host_memory=("default", "retained"))
    assert [(r.frames, r.precision, r.host_memory) for r in rows] == [
        (t, p, m) for m in ("retained", "default") for t in (2, 4) for p in ("fp32", "bf16")]
    assert all(r.flops > 0 and r.tokens == 2 * r.frames * 4 and r.model == "STDiT2" for r in rows)
    text = console.export_text()
    assert "GFLOP/s" in text and "of peak" in text and "batch 2" in text and "caption 32x16" in text
    assert "speed-up vs fp32" in text and "speed-up vs default memory" in text and "bf16" in text


def test_benchmark_compiles_each_block_when_asked():
    from torch._dynamo.utils import counters

    counters.clear()
    console = Console(record=True, width=250)
    rows = run_model_step_benchmark(hidden_size=48, depth=2, num_heads=2, frame_counts=(2,), size=4, repeats=1,
                                    console=console, caption_channels=16, baseline=False, checkpointing=(False,),
                                    compile=(True,))
    assert [(r.compiled, r.precision) for r in rows] == [(True, "fp32")]
    assert counters["stats"]["unique_graphs"] > 0
    assert "compiled" in console.export_text()


def test_measuring_a_compiled_model_leaves_its_blocks_compiled():
    # A dispatch-mode memory probe would make Dynamo run the blocks eagerly from then on:
    # every later compiled row would time eager code.
    torch._dynamo.reset()
    model = STDiT2(STDiT2Config(hidden_size=48, depth=2, num_heads=2, caption_channels=16, model_max_length=4))
    for block in model.blocks:
        block.compile()
    inputs = {"x": torch.randn(1, 4, 2, 4, 4), "timestep": torch.tensor([1.0]), "y": torch.randn(1, 1, 4, 16)}
    seconds, peak, saved = measure_step(model, inputs, 1, torch.device("cpu"))
    assert seconds > 0 and peak > 0 and saved > 0
    with torch.profiler.profile() as profile:
        model(**inputs).float().square().mean().backward()
    assert any("Compiled" in event.name for event in profile.events())


def test_benchmark_refuses_unknown_settings():
    with pytest.raises(ValueError, match="precisions"):
        run_model_step_benchmark(precisions=("fp8",))
    with pytest.raises(ValueError, match="host_memory"):
        run_model_step_benchmark(host_memory=("huge",))
    with pytest.raises(ValueError, match="compile"):
        run_model_step_benchmark(compile=())
    result = CliRunner().invoke(cli.app, ["bench", "model", "--setup", "huge"])
    assert result.exit_code == 2 and "tiny, reference, custom" in result.output
    result = CliRunner().invoke(cli.app, ["bench", "model", "--setup", "custom", "--hidden-size", "64"])
    assert result.exit_code == 2 and "divisible by 3" in result.output and "Traceback" not in result.output
