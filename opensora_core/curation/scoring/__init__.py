"""Step 3 scorers: `flow`, `ocr`, `quality` (weights-free) and `aes`, `match` (CLIP,
with local weights). :func:`build_scorers` picks those that can run here."""

from __future__ import annotations

from opensora_core.curation.config import ScorersConfig
from opensora_core.curation.scoring.background import BackgroundScorer
from opensora_core.curation.scoring.base import ClipSamples, Scorer, read_samples
from opensora_core.curation.scoring.clip_models import AestheticScorer, MatchScorer
from opensora_core.curation.scoring.flow import FlowScorer
from opensora_core.curation.scoring.ocr import OCRScorer
from opensora_core.curation.scoring.quality import QualityScorer

__all__ = ["BackgroundScorer", "ClipSamples", "Scorer", "build_scorers", "read_samples"]

# Range every score must lie in (asset checks and tests use it); None = unbounded.
SCORE_RANGES: dict[str, tuple[float | None, float | None]] = {
    "flow": (0.0, None),
    "ocr": (0.0, 1.0),
    "quality": (0.0, 1.0),
    "quality_sharpness": (0.0, 1.0),
    "quality_exposure": (0.0, 1.0),
    "quality_contrast": (0.0, 1.0),
    "aes": (None, None),
    "match": (-1.0, 1.0),
}


def build_scorers(config: ScorersConfig) -> tuple[list[Scorer], dict[str, str]]:
    """The scorers that will run, and for the others why they do not (name -> reason)."""
    candidates: list[tuple[bool, Scorer]] = [
        (config.flow.enabled, FlowScorer(config.flow)),
        (config.ocr.enabled, OCRScorer(config.ocr)),
        (config.quality.enabled, QualityScorer(config.quality)),
        (True, AestheticScorer(config.aes)),
        (True, MatchScorer(config.match)),
    ]
    ready, skipped = [], {}
    for enabled, scorer in candidates:
        reason = "disabled in config" if not enabled else scorer.unavailable()
        if reason is None:
            ready.append(scorer)
        else:
            skipped[scorer.name] = reason
    return ready, skipped
