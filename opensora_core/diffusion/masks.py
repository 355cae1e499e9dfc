"""Training masks: which frames of a clip are given (conditioning) and which are generated.

Open-Sora 1.1 trains one model for text-to-video, image-to-video, extension and
connecting clips by sometimes giving it frames: "quarter" masks give k in [1, T//4]
frames (at the head, the tail, both ends or random positions), "image" masks give one
frame (head, tail, both ends or random). Our "half" masks (head or tail) give k in
[1, T//2]: short training windows then still see extension from half a clip. Masks are
`[B, T]` bool with True = generated.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from opensora_core.config import MASK_NAMES, validate_mask_ratios


class MaskGenerator:
    def __init__(self, mask_ratios: Mapping[str, float]):
        self.ratios = validate_mask_ratios(mask_ratios)
        self._names = [name for name in MASK_NAMES if self.ratios[name] > 0]
        self._probabilities = torch.tensor([self.ratios[name] for name in self._names], dtype=torch.float64)

    def kinds(self, batch: int, generator: torch.Generator | None = None) -> list[str]:
        picks = torch.multinomial(self._probabilities, batch, replacement=True, generator=generator)
        return [self._names[i] for i in picks.tolist()]

    def get_masks(self, batch: int, num_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`[batch, num_frames]` masks, one kind per sample drawn by the ratios."""
        return torch.stack([make_mask(kind, num_frames, generator) for kind in self.kinds(batch, generator)])


def make_mask(kind: str, num_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One `[T]` mask of the named kind. A mask that would leave no frame to generate
    (T=1, or both ends of a 2-frame clip) generates every frame instead."""
    if kind not in MASK_NAMES:
        raise ValueError(f"unknown mask '{kind}' (valid: {', '.join(MASK_NAMES)})")
    mask = torch.ones(num_frames, dtype=torch.bool)
    if kind == "no_mask" or num_frames < 2:
        return mask
    group, _, where = kind.partition("_")
    if group in ("quarter", "half"):
        most = num_frames // 4 if group == "quarter" else num_frames // 2
        count = int(torch.randint(1, max(1, most) + 1, (1,), generator=generator))
    else:
        count = 1
    if where == "random":
        mask[torch.randperm(num_frames, generator=generator)[:count]] = False
    if where in ("head", "head_tail"):
        mask[:count] = False
    if where in ("tail", "head_tail"):
        mask[num_frames - count :] = False
    if not mask.any():
        mask[:] = True
    return mask
