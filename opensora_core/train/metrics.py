"""Reading a stage's `metrics.jsonl` back: is the loss finite, and did it go down?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from opensora_core.utils.jsonl import read_jsonl

# Fewer logged losses than this say nothing about a trend: a diffusion loss swings with
# the timesteps drawn, so a two-step run's "rise" is noise, not divergence.
TREND_POINTS = 8
# A stage diverged when its last quarter's mean loss exceeds its first quarter's by more
# than this factor. Not "must decrease": a fine-tune from a converged model (retraining
# from the champion) logs a flat loss, which must not block its evaluation.
RISE_LIMIT = 1.25


@dataclass(frozen=True)
class LossSummary:
    points: int
    finite: bool
    first: float  # mean loss over the first quarter of the logged steps
    last: float  # mean loss over the last quarter

    @property
    def decreased(self) -> bool:
        return self.finite and self.last < self.first

    @property
    def trend_judged(self) -> bool:
        return self.points >= TREND_POINTS

    @property
    def rose(self) -> bool:
        """The last quarter's loss is more than `RISE_LIMIT` times the first quarter's."""
        return self.finite and self.last > self.first * RISE_LIMIT

    @property
    def healthy(self) -> bool:
        """What a model needs before it is evaluated or promoted: every loss finite, and
        no rise beyond `RISE_LIMIT` where enough steps were logged to tell."""
        return self.finite and not (self.trend_judged and self.rose)


def summarize_loss(metrics_file: str | Path) -> LossSummary:
    lines = read_jsonl(metrics_file)
    losses = [float(line["loss"]) for line in lines]
    if not losses:
        return LossSummary(0, False, math.nan, math.nan)
    quarter = max(1, len(losses) // 4)
    finite = all(math.isfinite(value) for value in losses)
    return LossSummary(len(losses), finite, sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter)
