"""OpenCV's own worker threads, set for a stretch of code.

Curation already spreads its work over threads of its own (decoding, encoding, one
per scorer), each calling OpenCV on small images; OpenCV splitting every call over
its pool on top of that oversubscribes the cores. With one OpenCV thread, curating
Megamind.avi on 2 vCPUs took 0.45 s instead of 0.54-0.56 s, and the synthetic videos
5-10% less (`bench/curation.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2


@contextlib.contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """Run the block with OpenCV using `count` threads (process-wide: OpenCV has no
    per-thread setting); the setting before it is restored when it ends."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)
