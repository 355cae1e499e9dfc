"""Host memory that stays mapped between training steps.

PyTorch's CPU allocator asks the C library for every tensor and gives it back when the
tensor dies. glibc serves blocks above its mmap threshold (at most 32 MiB) with a fresh
`mmap` and unmaps them on free, so every large activation of every step is mapped,
zero-filled page by page by the kernel on first touch, and unmapped again: at long
clips most of a CPU step goes to page faults, not arithmetic. CUDA avoids this with
its caching allocator; `retain_freed_memory` is the host counterpart: it tells glibc
to serve every block from its heap and not to trim freed memory back to the system,
so the next step reuses pages that are already mapped. The process then holds on to
its high-water mark, as a caching allocator does, plus what fragmentation of the heap
adds: `release_free_memory` hands the free pages back (the trainer calls it every
`log_every` steps, so the next step alone pays the page faults again and resident
memory stays bounded). `bench/model_step.py` measures the step with and without it.

Set `OPENSORA_RETAIN_HOST_MEMORY=0` to leave glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
ENV_SWITCH = "OPENSORA_RETAIN_HOST_MEMORY"


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc only, not musl


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> _MallInfo2:
    libc = _glibc()
    if libc is None:
        raise RuntimeError("heap statistics need glibc")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


def heap_in_use() -> int:
    """Bytes the C heap has handed out (glibc), including mmapped blocks: the CPU
    counterpart of `torch.cuda.memory_allocated`."""
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


def mmapped_bytes() -> int:
    """Bytes of live blocks glibc serves with their own mmap (unmapped when freed)."""
    return _mallinfo2().hblkhd


def retain_freed_memory(enabled: bool | None = None) -> bool:
    """Keep freed host memory mapped for reuse (glibc only). `enabled=None` reads
    `OPENSORA_RETAIN_HOST_MEMORY` (default on). Returns whether the setting is now on;
    False where the C library is not glibc. `enabled=False` restores glibc's defaults
    for later allocations."""
    if enabled is None:
        enabled = os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")
    libc = _glibc()
    if libc is None:
        return False
    if enabled:
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    else:  # glibc's documented defaults: 65,536 mmapped blocks, trim above 128 KiB
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        ok = False
    return bool(ok)


def release_free_memory() -> bool:
    """Return the heap's free pages to the system now (glibc `malloc_trim`); whether
    any were released. False where the C library is not glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
