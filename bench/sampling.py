"""Benchmark: seconds per denoising step and per video, IDDPM 100 steps vs DPM-Solver++ 20.

Same as `opensora bench sampling`; run `python bench/sampling.py --help` for options.
"""

import sys

from opensora_core.cli import app

if __name__ == "__main__":
    app(["bench", "sampling", *sys.argv[1:]])
