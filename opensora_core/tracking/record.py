"""The local record of a tracker: every call, appended before it is sent."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from opensora_core.utils.jsonl import append_jsonl, read_jsonl

RECORD_FILE = "record.jsonl"


class _Record:
    """Append-only JSONL log of everything one tracker was asked to send.

    A stage that resumes in the same folder starts a new record; the previous one is
    kept as `record.<n>.jsonl` until it is uploaded with the rest.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = 0

    @classmethod
    def create(cls, directory: Path) -> _Record:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / RECORD_FILE
        if path.exists():
            n = 1
            while (directory / f"record.{n}.jsonl").exists():
                n += 1
            path.rename(directory / f"record.{n}.jsonl")
        return cls(path)

    def write(self, event: str, **fields: Any) -> int:
        """Append one event; return its sequence number within this record."""
        self.seq += 1
        append_jsonl(self.path, {"event": event, "seq": self.seq, "time_ms": int(time.time() * 1000), **fields})
        return self.seq

    def read(self) -> list[dict[str, Any]]:
        events = read_jsonl(self.path)
        self.seq = max((e["seq"] for e in events), default=0)
        return events
