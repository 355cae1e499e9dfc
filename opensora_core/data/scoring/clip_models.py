"""Scorers that need CLIP weights, run only when the user gives local paths:

- `aes`: the CLIP ViT-L/14 + MLP aesthetic predictor Open-Sora used (an MLP
  768-1024-128-64-16-1 on the L2-normalised image embedding, scores about 1-10),
  averaged over sampled frames;
- `match`: CLIP cosine similarity between the caption and each sampled frame,
  averaged (in [-1, 1]); clips without a caption get none.

Nothing is downloaded: `clip` is a local transformers folder, `mlp` a local
`.pth`/`.safetensors` state dict with keys `layers.{0,2,4,6,7}.{weight,bias}`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from opensora_core.data.config import AestheticConfig, MatchConfig
from opensora_core.data.scoring.base import ClipSamples, Scorer, spread_frames, spread_positions
from opensora_core.utils.clip import projected_features


@lru_cache(maxsize=2)
def _load_clip(path: str):
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


@lru_cache(maxsize=2)
def _load_head(path: str, in_features: int):
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


def _missing(*paths: str | None) -> str | None:
    for path in paths:
        if path is None:
            return "no local weights configured"
        if not Path(path).exists():
            return f"weights not found at {path}"
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed"
    return None


class AestheticScorer(Scorer):
    name = "aes"
    version = "clip-vit-l14-mlp-1"
    columns = ("aes",)

    def __init__(self, config: AestheticConfig) -> None:
        self.config = config

    def unavailable(self) -> str | None:
        return _missing(self.config.clip, self.config.mlp)

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
    version = "clip-cosine-1"
    columns = ("match",)

    def __init__(self, config: MatchConfig) -> None:
        self.config = config

    def unavailable(self) -> str | None:
        return _missing(self.config.clip)

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
