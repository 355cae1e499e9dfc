"""JSON-lines files torn by a killed writer: readers skip the torn line, writers resume on a new one."""

from __future__ import annotations

import pytest

from opensora_core.train.metrics import summarize_loss
from opensora_core.utils.jsonl import append_jsonl, read_jsonl


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_append_starts_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step, loss in ((1, 0.9), (2, 0.8)):
        append_jsonl(path, {"step": step, "loss": loss})
    with open(path, "a") as handle:
        handle.write('{"step": 3, "lo')  # killed mid-write
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: skipped"):
        assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    append_jsonl(path, {"step": 3, "loss": 0.5})  # the resumed run
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: skipped"):
        assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    with pytest.warns(UserWarning):
        summary = summarize_loss(path)
    assert summary.points == 3 and summary.decreased
