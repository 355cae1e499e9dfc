"""Published outputs get the mode a plain open/mkdir gives, not tempfile's 0600/0700."""

from __future__ import annotations

import os
import stat

import pytest

from opensora_core.curation.storage import Storage
from opensora_core.utils.atomic import atomic_path, write_text_atomic


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_and_staged_folders_follow_the_umask(tmp_path, umask_027):
    write_text_atomic(tmp_path / "a.json", "{}")
    assert _mode(tmp_path / "a.json") == 0o640
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "b.bin") == 0o640
    storage = Storage(str(tmp_path / "store"))
    with storage.staging_dir("clips", "part-1") as folder:
        (folder / "clip.txt").write_text("x")
    published = tmp_path / "store" / "clips" / "part-1"
    assert _mode(published) == 0o750 and (published / "clip.txt").read_text() == "x"
    assert [p.name for p in published.parent.glob(".*")] == [".lock"]  # the folder's lock, no staging leftovers
