from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import write_image, write_video


@pytest.fixture
def training_table(tmp_path_factory):
    """A small synthetic training table: 8 clips (16 frames, 64x64) and 2 stills."""
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    colors, directions = ["red", "green", "blue", "yellow"], ["left", "right", "up", "down"]
    for i in range(8):
        color, direction = colors[i % 4], directions[(i // 2) % 4]
        path = folder / f"clip{i}.mp4"
        write_video(path, moving_square_clip(16, 64, 64, color=color, direction=direction, seed=i), fps=8)
        rows.append({"path": str(path), "text": f"a {color} square moving {direction}", "num_frames": 16,
                     "height": 64, "width": 64, "fps": 8.0, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    for i, color in enumerate(["red", "blue"]):
        path = folder / f"still{i}.png"
        write_image(path, moving_square_clip(1, 64, 64, color=color, seed=10 + i)[0])
        rows.append({"path": str(path), "text": f"a {color} square", "num_frames": 1, "height": 64, "width": 64,
                     "fps": 0.0, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    meta = folder / "meta.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    return meta
