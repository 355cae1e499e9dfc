"""Reading a stage's `metrics.jsonl` back: is the loss finite, and did it go down?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from opensora_core.utils.jsonl import read_jsonl


@dataclass(frozen=True)
class LossSummary:
    points: int
    finite: bool
    first: float  # mean loss over the first quarter of the logged steps
    last: float  # mean loss over the last quarter

    @property
    def decreased(self) -> bool:
        return self.finite and self.last < self.first


def summarize_loss(metrics_file: str | Path) -> LossSummary:
    lines = read_jsonl(metrics_file)
    losses = [float(line["loss"]) for line in lines]
    if not losses:
        return LossSummary(0, False, math.nan, math.nan)
    quarter = max(1, len(losses) // 4)
    finite = all(math.isfinite(value) for value in losses)
    return LossSummary(len(losses), finite, sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter)
