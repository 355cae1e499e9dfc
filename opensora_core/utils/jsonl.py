"""Append-only JSON-lines files that survive a kill mid-write.

A process killed while appending leaves a torn last line. Readers skip a line that does
not parse, with a warning naming the file and line, instead of failing; writers start
on a fresh line when the file does not end with one, so what a resumed run appends is
never glued to a torn fragment.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    with open(path, "ab+") as handle:
        prefix = b""
        if handle.tell() > 0:
            handle.seek(-1, 2)
            prefix = b"" if handle.read(1) == b"\n" else b"\n"
        handle.write(prefix + json.dumps(record).encode("utf-8") + b"\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: skipped a line that is not JSON (torn by a killed writer?)",
                          stacklevel=2)
    return records
