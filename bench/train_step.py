"""Benchmark: training samples/s, tokens/s and peak memory, 1 and 2 processes, with and
without activation checkpointing, tiny and mid-size presets, from caches.

Same as `opensora bench train`.
"""

import sys

from opensora_core.cli import app

if __name__ == "__main__":
    app(["bench", "train", *sys.argv[1:]])
