"""CLIP score of generated videos against their prompts, from local CLIP weights.

The score of one sample is the CLIPScore of Hessel et al. (2021) in the form
torchmetrics' `CLIPScore` computes it: ``100 * max(cos(E_image(frame), E_text(prompt)), 0)``
(the paper's ``w = 2.5`` variant is this divided by 40), averaged over up to
`DEFAULT_FRAMES` evenly spaced frames of the video. It lies in [0, 100]; higher means
the frames match the prompt better.

Nothing is downloaded: `path` is a local Hugging Face CLIP folder (what
`CLIPModel.save_pretrained` + `CLIPProcessor.save_pretrained` write, e.g. a copy of
`openai/clip-vit-base-patch32`). transformers is imported only when a scorer is built,
so `opensora eval-samples` without `--clip` never pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from opensora_core.eval.metrics import as_uint8_frames
from opensora_core.utils.clip import EXPECTED, check_clip_folder, projected_features

# Frames per video that are scored (evenly spaced, first and last included).
DEFAULT_FRAMES = 4
# Images (frames) or prompts per forward pass.
DEFAULT_BATCH_SIZE = 16


def frame_positions(num_frames: int, count: int = DEFAULT_FRAMES) -> list[int]:
    """Up to `count` evenly spaced frame indices of `num_frames`, first and last included."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    count = max(1, min(count, num_frames))
    return sorted({int(i) for i in np.linspace(0, num_frames - 1, count).round()})


class ClipScorer:
    """CLIP score (see the module docstring) of videos against prompts."""

    def __init__(self, model, processor, device: str | torch.device = "cpu", frames: int = DEFAULT_FRAMES,
                 batch_size: int = DEFAULT_BATCH_SIZE, path: str | Path | None = None) -> None:
        if frames < 1 or batch_size < 1:
            raise ValueError(f"frames and batch_size must be >= 1, got {frames} and {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.frames = frames
        self.batch_size = batch_size
        self.path = None if path is None else str(path)
        text_config = getattr(model.config, "text_config", None)
        self.max_length = getattr(text_config, "max_position_embeddings", 77)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", frames: int = DEFAULT_FRAMES,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> ClipScorer:
        """Load `CLIPModel` and `CLIPProcessor` from the local folder `path` (never the hub)."""
        folder = check_clip_folder(path)
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"CLIP folder {folder}: could not load CLIP ({err}); expected {EXPECTED}") from err
        return cls(model, processor, device=device, frames=frames, batch_size=batch_size, path=folder)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """L2-normalised embeddings `[N, D]` of uint8 `[H, W, 3]` images."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start:start + self.batch_size])
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            chunks.append(projected_features(self.model.get_image_features(pixel_values=pixels)).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings `[N, D]` of `texts` (truncated to CLIP's context)."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.processor(text=list(texts[start:start + self.batch_size]), return_tensors="pt",
                                    padding=True, truncation=True, max_length=self.max_length)
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            chunks.append(projected_features(self.model.get_text_features(**tokens)).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def score(self, videos: Sequence[torch.Tensor | np.ndarray], prompts: Sequence[str]) -> list[float]:
        """CLIP score in [0, 100] of every video against its prompt. Videos are `[3, T, H, W]`
        float tensors in [-1, 1] or uint8 frames `[T, H, W, 3]`, as in `metrics.py`."""
        if len(videos) != len(prompts):
            raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
        if not videos:
            return []
        frames, owners = [], []
        for index, video in enumerate(videos):
            array = as_uint8_frames(video)
            for t in frame_positions(len(array), self.frames):
                frames.append(array[t])
                owners.append(index)
        unique = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
        text = self.text_embeddings(list(unique))
        rows = torch.tensor([unique[prompts[i]] for i in owners], device=text.device)
        cosine = (self.image_embeddings(frames) * text[rows]).sum(-1).cpu()
        per_frame = 100.0 * cosine.clamp(min=0.0)
        owner = torch.tensor(owners)
        totals = torch.zeros(len(videos)).index_add_(0, owner, per_frame)
        counts = torch.zeros(len(videos)).index_add_(0, owner, torch.ones(len(owners)))
        return (totals / counts).tolist()
