"""Benchmark: held-out colour / direction / image-to-video / extension accuracy of the
demo's model against training minutes, for the demo's recipe and alternatives.

Same as `opensora bench prompt-following`.
"""

import sys

from opensora_core.cli import app

if __name__ == "__main__":
    app(["bench", "prompt-following", *sys.argv[1:]])
