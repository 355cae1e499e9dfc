"""Benchmark: the STDiT-2 training step (forward+backward) on this machine, against a
plain full-attention DiT.

`python bench/model_step.py [options]` or `opensora bench model [options]` (`--help`).
By default it runs two setups side by side with a matmul peak measured in the same run:
- tiny: STDiT-2 vs a full-attention DiT at T=16 and T=64, activation checkpointing off
  and on. Targets (issue: foundation): time(64)/time(16) <= 5; checkpointing cuts the
  step's peak memory by >= 40%.
- reference (hidden 384, depth 4, 6 heads, caption 32x64, batch 2, latent 32x32, the
  configuration compared with Open-Sora 1.1's implementation): fp32 and bf16 autocast,
  glibc's default host memory and retained. Targets (issue 18): time(64)/time(16) <= 4.5
  in fp32 and >= 70% of the fp32 matmul peak at 64 frames; bf16 >= 2x fp32 at 16 frames.

Both models have the same width, depth, heads, MLP and caption cross-attention and see
the same tokens; the only difference is attention: STDiT-2 attends within a frame and
then across frames (cost ~ T*S^2 + S*T^2), the DiT attends over all T*S tokens at once
(cost ~ (T*S)^2). Timings are medians over repeats after one warm-up step, measured side
by side in one process. Peak memory is the allocator's peak above the pre-step level:
CUDA's on GPUs, glibc's heap on CPU (sampled after every op; for compiled blocks, whose
kernels a dispatch mode would not see, by a thread every 0.5 ms). "saved" is the exact size
of the activations autograd keeps for backward. Achieved GFLOP/s divides the step's
FLOPs (counted by `torch.utils.flop_counter` on the meta device: matmuls, convolutions,
attention) by its time; "of peak" compares that with a 2048x2048 `torch.mm` timed in the
same run, dtype and thread count.
"""

from __future__ import annotations

import concurrent.futures
import copy
import gc
import itertools
import multiprocessing
import statistics
import threading
import time
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from opensora_core.models.accounting import SavedActivationCounter
from opensora_core.models.layers import (
    CrossAttention,
    FinalLayer,
    Mlp,
    PatchEmbed3D,
    SelfAttention,
    TimestepEmbedder,
    modulate,
)
from opensora_core.models.stdit2 import STDiT2, STDiT2Config
from opensora_core.utils.host_memory import heap_in_use, release_free_memory, retain_freed_memory

# 1. The baseline: one attention over every token of the clip


class FullAttentionDiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, heads, qk_norm=True, backend="sdpa")
        self.cross_attn = CrossAttention(hidden, heads, backend="sdpa")
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden) / hidden**0.5)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mods = (self.scale_shift_table[None] + t.view(x.shape[0], 6, -1)).unsqueeze(2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross_attn(x, cond, None)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FullAttentionDiT(nn.Module):
    """A PixArt-style DiT over all T*S tokens of a clip (benchmark baseline only)."""

    def __init__(self, config: STDiT2Config):
        super().__init__()
        hidden = config.hidden_size
        self.config = config
        self.gradient_checkpointing = False
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.y_proj = Mlp(config.caption_channels, hidden, hidden)
        self.blocks = nn.ModuleList(FullAttentionDiTBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final_layer = FinalLayer(hidden, 4, config.out_channels)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        tokens = self.x_embedder(x)
        t = self.t_embedder(timestep)
        t_mod = self.t_block(t)
        cond = self.y_proj(y.squeeze(1))
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, cond, t_mod, use_reentrant=False)
            else:
                tokens = block(tokens, cond, t_mod)
        return self.final_layer(tokens.unsqueeze(1), t, None, None).view(batch, -1)


# 2. Measuring


@dataclass
class StepMeasurement:
    model: str
    frames: int
    checkpointing: bool
    tokens: int
    seconds: float
    peak_bytes: int
    saved_bytes: int
    flops: int = 0  # one forward + backward
    precision: str = "fp32"
    host_memory: str = "retained"
    compiled: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds


class CPUPeakMemory(TorchDispatchMode):
    """Samples heap use after every aten op (forward, backward and recomputation)."""

    def __init__(self):
        super().__init__()
        self.baseline = heap_in_use()
        self.peak = self.baseline

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_in_use())
        return out

    @property
    def peak_above_baseline(self) -> int:
        return self.peak - self.baseline


class SampledPeakMemory:
    """Heap use sampled by a thread every `interval` seconds: the probe for compiled
    models, which a dispatch mode would not measure (Dynamo runs every frame it sees
    under one eagerly, and keeps skipping those frames after it exits)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.baseline = heap_in_use()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, heap_in_use())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, heap_in_use())

    @property
    def peak_above_baseline(self) -> int:
        return self.peak - self.baseline


def is_compiled(model: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def measure_step(model: nn.Module, inputs: dict, repeats: int, device: torch.device,
                 precision: str = "fp32") -> tuple[float, int, int]:
    """(median seconds, peak bytes above the pre-step baseline, bytes saved for backward)
    of one forward+backward; `precision` "bf16" runs it under autocast with the fp32
    weights, as a `mixed_precision: bf16` stage trains. Time and memory are taken in
    separate runs because the CPU memory probe slows every op."""

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model(**inputs)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        gc.collect()
        forward().float().square().mean().backward()

    release_free_memory()  # each measurement starts from the same heap, whatever ran before

    step()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)

    model.zero_grad(set_to_none=True)
    gc.collect()
    release_free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        step()
        peak = torch.cuda.max_memory_allocated(device) - baseline
    else:
        with SampledPeakMemory() if is_compiled(model) else CPUPeakMemory() as probe:
            forward().float().square().mean().backward()
        peak = probe.peak_above_baseline

    model.zero_grad(set_to_none=True)
    with SavedActivationCounter(model) as saved:
        forward()
    return statistics.median(times), peak, saved.bytes


def train_step_flops(model: nn.Module, inputs: dict) -> int:
    """FLOPs of one forward + backward, counted on a meta-device copy (no memory, no time)."""
    meta_model = copy.deepcopy(model).to("meta")
    meta_inputs = {k: v.to("meta") for k, v in inputs.items()}
    with FlopCounterMode(display=False) as counter:
        meta_model(**meta_inputs).float().square().mean().backward()
    return counter.get_total_flops()


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a `size` x `size` `torch.mm` in `dtype` (median of `repeats`, after a warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The configurations `bench/model_step.py` runs. "reference" is the one measured against
# Open-Sora 1.1's own STDiT-2 (hidden 384, depth 4, 6 heads, caption 32x64, batch 2,
# latent 32x32): its activations far exceed the caches, as at the sizes users train.
SETUPS: dict[str, dict] = {
    "tiny": {"hidden_size": 192, "depth": 4, "num_heads": 4, "size": 16, "batch": 1},
    "reference": {"hidden_size": 384, "depth": 4, "num_heads": 6, "size": 32, "batch": 2, "caption_channels": 64,
                  "baseline": False, "checkpointing": (False,), "precisions": ("fp32", "bf16"),
                  "host_memory": ("default", "retained"), "compile": (False, True)},
}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run_model_step_benchmark(
    hidden_size: int = 192,
    depth: int = 4,
    num_heads: int = 4,
    frame_counts: list[int] | tuple[int, ...] = (16, 64),
    size: int = 16,
    repeats: int = 3,
    precisions: tuple[str, ...] = ("fp32",),
    console: Console | None = None,
    device: torch.device | None = None,
    batch: int = 1,
    caption_channels: int | None = None,
    baseline: bool = True,
    checkpointing: tuple[bool, ...] = (False, True),
    host_memory: tuple[str, ...] = ("retained",),
    compile: tuple[bool, ...] = (False,),
) -> list[StepMeasurement]:
    """Every combination of model, frame count, precision ("fp32", or "bf16" autocast
    over fp32 weights), host memory ("default": glibc maps and unmaps every large
    block; "retained": `retain_freed_memory`, what training and sampling use on CPU),
    activation checkpointing and `torch.compile` of each block (as the profile's
    `compile` trains; with retained memory only), in one table. glibc's setting is
    process-wide, and switching it inside a process lets the heap grow without bound at
    long clips, so with several modes each is measured in a process of its own."""
    console = console or Console()
    if not console.is_terminal:  # a log or a pipe: all 18 columns readable, not squeezed to 80
        console.width = max(console.width, 260)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"precisions {list(precisions)}: expected some of {sorted(PRECISIONS)}")
    if not host_memory or any(m not in ("default", "retained") for m in host_memory):
        raise ValueError(f"host_memory {list(host_memory)}: expected some of default, retained")
    if not compile or any(not isinstance(c, bool) for c in compile):
        raise ValueError(f"compile {list(compile)}: expected some of False, True")
    config = STDiT2Config(hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                          caption_channels=caption_channels or hidden_size, model_max_length=32,
                          input_sq_size=size * 8)
    peaks = {p: matmul_peak_flops(PRECISIONS[p], device) for p in precisions}
    for p, peak in peaks.items():
        console.print(f"  2048x2048 torch.mm, {p}: {peak / 1e9:.0f} GFLOP/s", highlight=False)
    plan = (config, baseline, tuple(frame_counts), size, batch, repeats, tuple(precisions), tuple(checkpointing),
            device)
    memory_modes = sorted(host_memory, key=lambda m: m != "retained") if device.type == "cpu" else ("retained",)
    modes = [(memory, False) for memory in memory_modes if False in compile]
    modes += [("retained", True)] if True in compile else []
    if len(modes) == 1:
        results = _measure_steps(*plan, *modes[0], console)
    else:
        results = []
        for memory, compiled in modes:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results += pool.submit(_measure_steps, *plan, memory, compiled, None).result()
    console.print(_results_table(results, config, size, device, batch, peaks))
    return results


def _measure_steps(config: STDiT2Config, baseline: bool, frame_counts: tuple[int, ...], size: int, batch: int,
                   repeats: int, precisions: tuple[str, ...], checkpointing: tuple[bool, ...], device: torch.device,
                   memory: str, compiled: bool, console: Console | None) -> list[StepMeasurement]:
    console = console or Console()
    retain_freed_memory(memory == "retained")
    torch.manual_seed(0)
    models = {"STDiT2": STDiT2(config), **({"full-attention DiT": FullAttentionDiT(config)} if baseline else {})}
    results: list[StepMeasurement] = []
    try:
        for (name, model), frames in itertools.product(models.items(), frame_counts):
            model.to(device=device).train()
            if compiled:  # in place, as training's `parallelize_stdit2` does
                for block in model.blocks:
                    block.compile()
            inputs = {
                "x": torch.randn(batch, config.in_channels, frames, size, size, device=device),
                "timestep": torch.full((batch,), 500.0, device=device),
                "y": torch.randn(batch, 1, config.model_max_length, config.caption_channels, device=device),
            }
            tokens = batch * frames * (size // config.patch_size[1]) * (size // config.patch_size[2])
            flops = train_step_flops(model, inputs)
            for precision, recompute in itertools.product(precisions, checkpointing):
                model.enable_gradient_checkpointing(recompute)
                seconds, peak_bytes, saved = measure_step(model, inputs, repeats, device, precision)
                results.append(StepMeasurement(name, frames, recompute, tokens, seconds, peak_bytes, saved, flops,
                                               precision, memory, compiled))
                console.print(f"  {name:>18}  T={frames:<3} {precision} memory={memory:<8} "
                              f"ckpt={'on' if recompute else 'off':<3} compiled={'yes' if compiled else 'no':<3} "
                              f"{seconds:.3f} s", highlight=False)
    finally:
        retain_freed_memory()
    return results


def _results_table(results: list[StepMeasurement], config: STDiT2Config, size: int, device, batch: int,
                   peaks: dict[str, float]) -> Table:
    by_key = {(r.model, r.frames, r.checkpointing, r.precision, r.host_memory, r.compiled): r for r in results}
    frames_sorted = sorted({r.frames for r in results})
    peak_text = ", ".join(f"{p} {v / 1e9:.0f}" for p, v in peaks.items())
    table = Table(title=(
        f"forward+backward, batch {batch}, latent {size}x{size}, hidden {config.hidden_size}, depth {config.depth}, "
        f"heads {config.num_heads}, caption {config.model_max_length}x{config.caption_channels}, {device.type}, "
        f"{torch.get_num_threads()} threads; matmul peak GFLOP/s: {peak_text}"
    ))
    for column in ("model", "T", "tokens", "precision", "host memory", "compiled", "ckpt", "seconds", "tokens/s", "GFLOP",
                   "GFLOP/s", "of peak", "peak MiB", "saved MiB", "time vs T=" + str(frames_sorted[0]),
                   "speed-up vs fp32", "speed-up vs default memory", "peak vs no ckpt"):
        table.add_column(column, justify="right")
    for r in results:
        base = by_key.get((r.model, frames_sorted[0], r.checkpointing, r.precision, r.host_memory, r.compiled))
        # Against the eager fp32 step, whatever this row's compilation.
        fp32 = by_key.get((r.model, r.frames, r.checkpointing, "fp32", r.host_memory, False))
        default = by_key.get((r.model, r.frames, r.checkpointing, r.precision, "default", False))
        no_ckpt = by_key.get((r.model, r.frames, False, r.precision, r.host_memory, r.compiled))
        table.add_row(
            r.model, str(r.frames), f"{r.tokens:,}", r.precision, r.host_memory, "yes" if r.compiled else "no",
            "on" if r.checkpointing else "off",
            f"{r.seconds:.3f}", f"{r.tokens_per_second:,.0f}", f"{r.flops / 1e9:,.0f}",
            f"{r.flops_per_second / 1e9:.1f}", f"{r.flops_per_second / peaks[r.precision]:.0%}",
            f"{r.peak_bytes / 2**20:.0f}", f"{r.saved_bytes / 2**20:.0f}",
            f"{r.seconds / base.seconds:.2f}x" if base else "n/a",
            f"{fp32.seconds / r.seconds:.2f}x" if fp32 and fp32 is not r else "",
            f"{default.seconds / r.seconds:.2f}x" if default and default is not r else "",
            f"{r.peak_bytes / no_ckpt.peak_bytes:.2f}x" if no_ckpt and no_ckpt.peak_bytes else "n/a",
        )
    return table


if __name__ == "__main__":
    import sys
    from pathlib import Path

    try:
        import bench.cli  # noqa: F401  (installed with the project, or on PYTHONPATH)
    except ImportError:  # sys.path[0] is bench/ itself: add the repository root
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cli import run_script

    run_script("model")
