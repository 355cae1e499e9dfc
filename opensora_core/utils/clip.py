"""What transformers' CLIP returns across versions, and what a local CLIP folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import torch

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_PREPROCESSOR = ("preprocessor_config.json", "processor_config.json")
EXPECTED = ("a local Hugging Face CLIP folder: config.json with model_type 'clip', weights "
            f"({' or '.join(_WEIGHTS)}), a tokenizer (tokenizer.json or vocab.json + merges.txt) "
            f"and an image processor ({' or '.join(_PREPROCESSOR)})")


def projected_features(output) -> torch.Tensor:
    """The projected embeddings of `CLIPModel.get_image_features` / `get_text_features`:
    transformers 4 returns them as a tensor, 5 as a ModelOutput's `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def check_clip_folder(path: str | Path) -> Path:
    """`path` as a Path when it looks like a local CLIP folder; FileNotFoundError when
    it does not exist, ValueError naming what is missing otherwise."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"CLIP folder {folder}: no such folder; expected {EXPECTED}")
    if not folder.is_dir():
        raise ValueError(f"CLIP folder {folder}: not a folder; expected {EXPECTED}")
    problems = []
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = []
    if data is None:
        problems.append("no config.json")
    elif not isinstance(data, dict):
        problems.append("config.json is not a JSON object")
    elif data.get("model_type") != "clip":
        problems.append(f"config.json has model_type {data.get('model_type')!r}, not 'clip'")
    if not any((folder / name).is_file() for name in _WEIGHTS):
        problems.append("no weights")
    if not any(all((folder / name).is_file() for name in names) for names in _TOKENIZER):
        problems.append("no tokenizer files")
    if not any((folder / name).is_file() for name in _PREPROCESSOR):
        problems.append("no image processor config")
    if problems:
        raise ValueError(f"CLIP folder {folder}: not a CLIP folder ({'; '.join(problems)}); expected {EXPECTED}")
    return folder
