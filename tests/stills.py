"""A curated folder of coloured-square stills with its training table, for stage tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import write_image


def write_stills(folder: Path, colors: list[str]) -> Path:
    """One 64x64 still per colour and `meta.parquet` listing them; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, color in enumerate(colors):
        path = folder / f"still{i}.png"
        write_image(path, moving_square_clip(1, 64, 64, color=color, seed=i)[0])
        rows.append({"path": str(path), "text": f"a {color} square", "num_frames": 1, "height": 64, "width": 64,
                     "fps": 0.0, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    pd.DataFrame(rows).to_parquet(folder / "meta.parquet")
    return folder
