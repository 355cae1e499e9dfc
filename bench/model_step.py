"""Benchmark: STDiT-2 vs a full-attention DiT, forward+backward at T=16 and T=64.

Same as `opensora bench model`; run `python bench/model_step.py --help` for options.
Targets (issue: foundation): STDiT-2 time(64 frames) / time(16 frames) <= 5, and
activation checkpointing cuts peak memory of the step by >= 40%.
"""

from opensora_core.cli import app

if __name__ == "__main__":
    app(["bench", "model", *__import__("sys").argv[1:]])
