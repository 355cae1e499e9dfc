"""Benchmark: the STDiT-2 training step (forward+backward) on this machine.

Same as `opensora bench model`; run `python bench/model_step.py --help` for options.
By default it runs two setups side by side with a matmul peak measured in the same run:
- tiny: STDiT-2 vs a full-attention DiT at T=16 and T=64, activation checkpointing off
  and on. Targets (issue: foundation): time(64)/time(16) <= 5; checkpointing cuts the
  step's peak memory by >= 40%.
- reference (hidden 384, depth 4, 6 heads, caption 32x64, batch 2, latent 32x32, the
  configuration compared with Open-Sora 1.1's implementation): fp32 and bf16 autocast,
  glibc's default host memory and retained. Targets (issue 18): time(64)/time(16) <= 4.5
  in fp32 and >= 70% of the fp32 matmul peak at 64 frames; bf16 >= 2x fp32 at 16 frames.
"""

from opensora_core.cli import app

if __name__ == "__main__":
    app(["bench", "model", *__import__("sys").argv[1:]])
