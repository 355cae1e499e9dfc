"""The app through gradio_client against a running server (tiny model, two steps)."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.app.conftest import FRAMES, STEPS

pytest.importorskip("gradio_client", reason="the app extra is not installed (pip install -e '.[app]')")


def form(**overrides) -> list:
    """The Generate tab's inputs in the page's order."""
    values = {"prompt": "a red square moving left", "model": "registry:1", "local_model": "", "profile": "embedded",
              "size_mode": "pixels", "resolution": "240p", "aspect_ratio": "9:16", "height": 32, "width": 32,
              "length": FRAMES, "length_unit": "frames", "window": FRAMES, "condition": 4, "fps": 24,
              "frame_interval": 3, "sampler": "auto", "steps": STEPS, "cfg_scale": 7.0, "seed": 3,
              "random_seed": False, "references": [], "mask": "none", "mask_strategy": ""}
    values.update(overrides)
    return list(values.values())


def _video_path(value) -> Path:
    return Path(value["video"] if isinstance(value, dict) else value)


def _frames(path: Path) -> np.ndarray:
    from opensora_core.data.video_io import read_frames

    return read_frames(path, 1000)


def test_generate_gives_the_video_opensora_sample_gives(client, tmp_path):
    from typer.testing import CliRunner

    from opensora_core.cli import app

    video, files, info = client.predict(*form(), api_name="/generate")
    video = _video_path(video)
    assert video.suffix == ".mp4" and _frames(video).shape == (FRAMES, 32, 32, 3)
    assert sorted(Path(f).suffix for f in files) == [".json", ".mp4"]
    command = info.split("```")[1].strip()
    args = shlex.split(command)[2:]
    args[args.index("--out") + 1] = str(tmp_path / "cli")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app, ["sample", *args])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_frames(tmp_path / "cli" / "sample_000.mp4"), _frames(video))
