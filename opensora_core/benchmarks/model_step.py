"""Forward+backward cost of STDiT-2 against a plain full-attention DiT.

Both models have the same width, depth, heads, MLP and caption cross-attention and see
the same tokens; the only difference is attention: STDiT-2 attends within a frame and
then across frames (cost ~ T*S^2 + S*T^2), the DiT attends over all T*S tokens at once
(cost ~ (T*S)^2). Timings are medians over repeats after one warm-up step, measured side
by side in one process. Peak memory is the allocator's peak above the pre-step level:
CUDA's on GPUs, glibc's heap (sampled after every op) on CPU. "saved" is the exact size
of the activations autograd keeps for backward. Achieved GFLOP/s divides the step's
FLOPs (counted by `torch.utils.flop_counter` on the meta device: matmuls, convolutions,
attention) by its time; "of peak" compares that with a 2048x2048 `torch.mm` timed in the
same run, dtype and thread count.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import gc
import statistics
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

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _mallinfo2():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2


def heap_in_use() -> int:
    """Bytes the C heap has handed out (glibc), including mmapped blocks: the CPU
    counterpart of `torch.cuda.memory_allocated`."""
    info = _mallinfo2()()
    return info.uordblks + info.hblkhd


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


def measure_step(model: nn.Module, inputs: dict, repeats: int, device: torch.device) -> tuple[float, int, int]:
    """(median seconds, peak bytes above the pre-step baseline, bytes saved for backward)
    of one forward+backward. Time and memory are taken in separate runs because the
    CPU memory probe slows every op."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        gc.collect()
        model(**inputs).float().square().mean().backward()

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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        step()
        peak = torch.cuda.max_memory_allocated(device) - baseline
    else:
        with CPUPeakMemory() as probe:
            model(**inputs).float().square().mean().backward()
        peak = probe.peak_above_baseline

    model.zero_grad(set_to_none=True)
    with SavedActivationCounter(model) as saved:
        model(**inputs)
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


def run_model_step_benchmark(
    hidden_size: int = 192,
    depth: int = 4,
    num_heads: int = 4,
    frame_counts: list[int] | tuple[int, ...] = (16, 64),
    size: int = 16,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    console: Console | None = None,
    device: torch.device | None = None,
    batch: int = 1,
    caption_channels: int | None = None,
    baseline: bool = True,
    checkpointing: tuple[bool, ...] = (False, True),
) -> list[StepMeasurement]:
    console = console or Console()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = STDiT2Config(hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                          caption_channels=caption_channels or hidden_size, model_max_length=32,
                          input_sq_size=size * 8)
    peak = matmul_peak_flops(dtype, device)
    console.print(f"  2048x2048 torch.mm, {str(dtype).removeprefix('torch.')}: {peak / 1e9:.0f} GFLOP/s", highlight=False)
    torch.manual_seed(0)
    models = {"STDiT2": STDiT2(config), **({"full-attention DiT": FullAttentionDiT(config)} if baseline else {})}
    results: list[StepMeasurement] = []
    for name, model in models.items():
        model.to(device=device, dtype=dtype).train()
        for frames in frame_counts:
            inputs = {
                "x": torch.randn(batch, config.in_channels, frames, size, size, device=device, dtype=dtype),
                "timestep": torch.full((batch,), 500.0, device=device),
                "y": torch.randn(batch, 1, config.model_max_length, config.caption_channels, device=device, dtype=dtype),
            }
            tokens = batch * frames * (size // config.patch_size[1]) * (size // config.patch_size[2])
            flops = train_step_flops(model, inputs)
            for recompute in checkpointing:
                model.enable_gradient_checkpointing(recompute)
                seconds, peak_bytes, saved = measure_step(model, inputs, repeats, device)
                results.append(StepMeasurement(name, frames, recompute, tokens, seconds, peak_bytes, saved, flops))
                console.print(f"  {name:>18}  T={frames:<3} ckpt={'on' if recompute else 'off':<3} {seconds:.3f} s",
                              highlight=False)
        model.to("cpu")
    console.print(_results_table(results, config, size, dtype, device, batch, peak))
    return results


def _results_table(results: list[StepMeasurement], config: STDiT2Config, size: int, dtype, device, batch: int,
                   peak_flops: float) -> Table:
    by_key = {(r.model, r.frames, r.checkpointing): r for r in results}
    frames_sorted = sorted({r.frames for r in results})
    table = Table(title=(
        f"forward+backward, batch {batch}, latent {size}x{size}, hidden {config.hidden_size}, depth {config.depth}, "
        f"heads {config.num_heads}, caption {config.model_max_length}x{config.caption_channels}, "
        f"{str(dtype).removeprefix('torch.')}, {device.type}; matmul peak {peak_flops / 1e9:.0f} GFLOP/s"
    ))
    for column in ("model", "T", "tokens", "ckpt", "seconds", "tokens/s", "GFLOP", "GFLOP/s", "of peak",
                   "peak MiB", "saved MiB", "time vs T=" + str(frames_sorted[0]), "peak vs no ckpt"):
        table.add_column(column, justify="right")
    for r in results:
        base = by_key.get((r.model, frames_sorted[0], r.checkpointing))
        no_ckpt = by_key.get((r.model, r.frames, False))
        table.add_row(
            r.model, str(r.frames), f"{r.tokens:,}", "on" if r.checkpointing else "off",
            f"{r.seconds:.3f}", f"{r.tokens_per_second:,.0f}", f"{r.flops / 1e9:,.0f}",
            f"{r.flops_per_second / 1e9:.1f}", f"{r.flops_per_second / peak_flops:.0%}",
            f"{r.peak_bytes / 2**20:.0f}", f"{r.saved_bytes / 2**20:.0f}",
            f"{r.seconds / base.seconds:.2f}x" if base else "n/a",
            f"{r.peak_bytes / no_ckpt.peak_bytes:.2f}x" if no_ckpt and no_ckpt.peak_bytes else "n/a",
        )
    return table
