"""Scorers that need CLIP weights, run only when the user gives local paths:

- `aes`: the CLIP ViT-L/14 + MLP aesthetic predictor Open-Sora used (an MLP
  768-1024-128-64-16-1 on the L2-normalised image embedding, scores about 1-10),
  averaged over sampled frames;
- `match`: CLIP cosine similarity between the caption and each sampled frame,
  averaged (in [-1, 1]); clips without a caption get none.

Nothing is downloaded: `clip` is a local transformers folder, `mlp` a local
`.pth`/`.safetensors` state dict with keys `layers.{0,2,4,6,7}.{weight,bias}`. A scorer
without weights configured is left out. Weights configured but missing, or not what
their key expects, fail a run before any file is read
(:meth:`~opensora_core.curation.config.CurationConfig.check_local_files`); here they only
keep the scorer from running, so cutting, which needs no weights, is not stopped by
them. A scorer's version names the digest of its weights' contents, so the manifests
say which weights made a score.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from opensora_core.curation.config import (
    AestheticConfig,
    MatchConfig,
    content_digest,
    local_file_problem,
)
from opensora_core.curation.scoring.base import ClipSamples, Scorer, spread_frames, spread_positions
from opensora_core.utils.clip import projected_features


def _load_clip(path: str):
    """The model and processor in `path`, loaded once per process while its files stay
    the same (see :func:`content_digest`)."""
    return _load_clip_version(path, content_digest(path))


@lru_cache(maxsize=2)
def _load_clip_version(path: str, digest: str):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    return model, CLIPProcessor.from_pretrained(path, local_files_only=True)


def _image_embeddings(path: str, frames: list[np.ndarray]):
    import torch

    model, processor = _load_clip(path)
    with torch.inference_mode():
        inputs = processor(images=frames, return_tensors="pt")
        embeds = projected_features(model.get_image_features(**inputs))
    return torch.nn.functional.normalize(embeds.float(), dim=-1)


def aesthetic_head(in_features: int = 768):
    """The predictor's MLP; the dropouts of the published training are identity here."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(in_features, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )


def _load_head(path: str, in_features: int):
    return _load_head_version(path, in_features, content_digest(path))


@lru_cache(maxsize=2)
def _load_head_version(path: str, in_features: int, digest: str):
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    head = aesthetic_head(in_features)
    head.load_state_dict(state, strict=True)
    return head.eval()


def _missing(weights: dict[str, str | None]) -> str | None:
    """Why a scorer with `weights` (config key -> path) cannot run, or None."""
    if any(path is None for path in weights.values()):
        return "no local weights configured"
    problems = [f"{key}: {problem}" for key, path in weights.items()
                if (problem := local_file_problem(key, path)) is not None]
    if problems:
        return "; ".join(problems)
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed"
    return None


def _weights_version(method: str, *paths: str | None) -> str:
    if any(path is None for path in paths):
        return method
    return f"{method}+{'+'.join(content_digest(path) for path in paths)}"


class AestheticScorer(Scorer):
    name = "aes"
    columns = ("aes",)

    def __init__(self, config: AestheticConfig) -> None:
        self.config = config

    @property
    def version(self) -> str:
        return _weights_version("clip-vit-l14-mlp-1", self.config.clip, self.config.mlp)

    def unavailable(self) -> str | None:
        return _missing({"scorers.aes.clip": self.config.clip, "scorers.aes.mlp": self.config.mlp})

    def positions(self, num_frames: int) -> set[int]:
        return set(spread_positions(num_frames, self.config.samples))

    def score(self, batch: list[ClipSamples]) -> list[dict]:
        import torch

        frames, owners = spread_frames(batch, self.config.samples)
        embeds = _image_embeddings(self.config.clip, frames)
        head = _load_head(self.config.mlp, embeds.shape[-1])
        with torch.inference_mode():
            values = head(embeds).squeeze(-1).tolist()
        per_clip: list[list[float]] = [[] for _ in batch]
        for owner, value in zip(owners, values):
            per_clip[owner].append(value)
        return [{"aes": float(np.mean(v))} for v in per_clip]


class MatchScorer(Scorer):
    name = "match"
    columns = ("match",)

    def __init__(self, config: MatchConfig) -> None:
        self.config = config

    @property
    def version(self) -> str:
        return _weights_version("clip-cosine-1", self.config.clip)

    def unavailable(self) -> str | None:
        return _missing({"scorers.match.clip": self.config.clip})

    def positions(self, num_frames: int) -> set[int]:
        return set(spread_positions(num_frames, self.config.samples))

    def score(self, batch: list[ClipSamples]) -> list[dict]:
        import torch

        model, processor = _load_clip(self.config.clip)
        rows: list[dict] = []
        for clip in batch:
            if not clip.text:
                rows.append({"match": None})
                continue
            images = _image_embeddings(self.config.clip, clip.spread(self.config.samples))
            with torch.inference_mode():
                tokens = processor(text=[clip.text], return_tensors="pt", padding=True, truncation=True)
                text = torch.nn.functional.normalize(projected_features(model.get_text_features(**tokens)).float(), dim=-1)
            rows.append({"match": float((images @ text.T).mean())})
        return rows
