"""Storage roots through fsspec: a local folder by default, an object store (s3://,
gs://, ...) or http when configured, so no step assumes that every worker shares one
local disk.

Steps work on local files (PyAV, OpenCV and Tesseract need them): inputs are staged in
with :meth:`Storage.local_copy`, outputs are written into a local staging folder and
published with :meth:`Storage.publish_dir`, which replaces a folder as a whole so a
reader never sees a half-written partition and re-publishing one partition touches no
other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import fsspec
from fsspec.implementations.local import LocalFileSystem

from opensora_core.utils.atomic import atomic_path

# Written last into every published step folder; its presence means the folder is complete.
MANIFEST = "manifest.json"


class Storage:
    """A root URL (or local path) plus fsspec options; paths below it are POSIX strings."""

    def __init__(self, root: str | os.PathLike[str], **storage_options) -> None:
        root = str(root)
        self.fs, path = fsspec.core.url_to_fs(root, **storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = str(Path(path).resolve()) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else root.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def local_path(self, *parts: str) -> Path:
        """The local file for `parts`; only for local roots."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local folder")
        return Path(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def write_bytes(self, data: bytes, *parts: str) -> None:
        if self.is_local:
            with atomic_path(self.local_path(*parts)) as tmp:
                tmp.write_bytes(data)
        else:  # an object store replaces an object as a whole
            self.fs.pipe_file(self.path(*parts), data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode("utf-8"), *parts)

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under `parts` (empty when it does not exist)."""
        target = self.path(*parts)
        if not self.fs.exists(target):
            return []
        return sorted(PurePosixPath(p).name for p in self.fs.ls(target, detail=False))

    @contextlib.contextmanager
    def local_copy(self, *parts: str) -> Iterator[Path]:
        """A local file with the content of `parts`: the file itself on a local root,
        a temporary download otherwise."""
        if self.is_local:
            yield self.local_path(*parts)
            return
        suffix = PurePosixPath(parts[-1]).suffix
        with tempfile.TemporaryDirectory(prefix="opensora-stage-") as tmp:
            local = Path(tmp) / f"input{suffix}"
            self.fs.get_file(self.path(*parts), str(local))
            yield local

    @contextlib.contextmanager
    def staging_dir(self, *parts: str) -> Iterator[Path]:
        """A fresh local folder to write a step's outputs into; published over `parts` on
        success, discarded on error."""
        if self.is_local:
            final = self.local_path(*parts)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        else:
            tmp = Path(tempfile.mkdtemp(prefix="opensora-out-"))
        try:
            yield tmp
            self.publish_dir(tmp, *parts)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish_dir(self, local: Path, *parts: str) -> None:
        """Replace the folder `parts` with the content of `local`."""
        if self.is_local:
            final = self.local_path(*parts)
            final.parent.mkdir(parents=True, exist_ok=True)
            staged = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.new"
            shutil.move(str(local), staged) if local.parent != final.parent else os.replace(local, staged)
            old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
            # Two renames: a reader sees the old folder or the new one, never a mixture.
            if final.exists():
                os.replace(final, old)
            os.replace(staged, final)
            shutil.rmtree(old, ignore_errors=True)
            local.mkdir(exist_ok=True)  # the staging context removes it again
            return
        target = self.path(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        # The step's manifest goes last: readers take a folder without one as unfinished.
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == MANIFEST, str(p)))
        for file in files:
            self.fs.put_file(str(file), self.path(*parts, *file.relative_to(local).parts))
