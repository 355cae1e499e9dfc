"""Benchmark: samples/s from caches vs on-the-fly decode+encode; bytes per cached caption.

Same as `opensora bench dataloader`. Targets (issue: caches): >= 3x samples/s from
caches; <= 0.5x bytes per caption against Open-Sora's padded 200-token fp16 layout.
"""

import sys

from opensora_core.cli import app

if __name__ == "__main__":
    app(["bench", "dataloader", *sys.argv[1:]])
