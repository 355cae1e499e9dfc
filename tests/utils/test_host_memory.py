"""`retain_freed_memory`: large host blocks come from glibc's heap, not a fresh mmap.

Each case runs in its own interpreter: the setting is process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import ctypes
from opensora_core.utils.host_memory import mmapped_bytes, release_free_memory, retain_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
on = retain_freed_memory({enabled})
before = mmapped_bytes()
block = libc.malloc(64 << 20)
print(on, mmapped_bytes() - before)
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.memset(block, 1, 64 << 20)  # resident now
libc.free(block)
print(release_free_memory())
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")


def _probe(enabled: str, env: dict[str, str] | None = None) -> tuple[str, int, bool]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(enabled=enabled)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, check=True, timeout=60)
    on, mapped, released = done.stdout.split()
    return on, int(mapped), released == "True"


def test_a_large_block_is_mmapped_by_default_and_from_the_heap_when_retained():
    on, mapped, _ = _probe("False")
    assert on == "False" and mapped >= 64 << 20
    # Retained, the freed block stays in the heap until released on purpose.
    assert _probe("True") == ("True", 0, True)


def test_the_environment_switch_turns_it_off():
    assert _probe("None")[:2] == ("True", 0)
    on, mapped, _ = _probe("None", {"OPENSORA_RETAIN_HOST_MEMORY": "0"})
    assert on == "False" and mapped >= 64 << 20
