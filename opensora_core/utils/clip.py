"""What transformers' CLIP returns across versions."""

from __future__ import annotations

import torch


def projected_features(output) -> torch.Tensor:
    """The projected embeddings of `CLIPModel.get_image_features` / `get_text_features`:
    transformers 4 returns them as a tensor, 5 as a ModelOutput's `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
