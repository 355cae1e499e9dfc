"""Atomic file writes: write beside the target under a temporary name, flush it to the
disk, then rename, so a crash (even of the machine) never leaves a half-written file
under a final name.

`tempfile` creates files 0600 and folders 0700, and a rename keeps the mode: published
outputs get the mode a plain `open`/`mkdir` would give them under the process umask
instead, so a team sharing a volume (Dagster and training pods) can read them."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def _umask() -> int:
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def publish_mode(path: str | Path) -> None:
    """Give a temporary file or folder the mode `open`/`mkdir` would have given it."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            publish_mode(tmp)
            _fsync(tmp)  # the bytes reach the disk before the name does
        os.replace(tmp, target)
        _fsync(target.parent)  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk; a file system that
    cannot (some network mounts refuse a folder) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


LEFTOVER_SUFFIXES = (".tmp", ".new", ".old")


def sweep_leftovers(folder: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Remove what killed writers left directly in `folder`: atomic writes' and staging
    folders' `.<name>.*.tmp`, `publish_dir`'s `.<name>.*.new` / `.old` (only those of
    `names` when given). Call it holding the folder's lock, so no live writer owns them;
    returns what was removed."""
    prefixes = tuple(f".{name}." for name in names) if names is not None else (".",)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if p.name.startswith(prefixes) and p.name.endswith(LEFTOVER_SUFFIXES)]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
