"""A running app on a free loopback port, over a tiny model and a registry of two
versions laid out by the evaluation round's own `record_round`."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")

STEPS = 2  # denoising steps of every generation in these tests
FRAMES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _export(folder: Path, seed: int) -> Path:
    import torch
    from safetensors.torch import save_file

    from opensora_core.models import build_stdit2
    from opensora_core.models.checkpoint_io import save_model
    from opensora_core.models.encoders import TEXT_ENCODER_WEIGHTS
    from opensora_core.models.text_encoder import WordEmbeddingTextEncoder

    torch.manual_seed(seed)
    model = build_stdit2("stdit2-tiny")
    with torch.no_grad():  # DiT's init zeroes the output layer: every fresh model would draw the same
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    path = save_model(model, folder / "model.safetensors")
    # A trained export carries its word-embedding text encoder; without it each load draws a new one.
    encoder = WordEmbeddingTextEncoder(output_dim=model.config.caption_channels,
                                       model_max_length=model.config.model_max_length)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(folder / TEXT_ENCODER_WEIGHTS))
    return path


def _round(folder: Path, export: Path, score: float) -> Path:
    """A round's folder as eval/round.py leaves it: preview, metrics, one sample."""
    from PIL import Image

    from opensora_core.data.video_io import write_video

    folder.mkdir(parents=True)
    frames = np.full((8, 32, 32, 3), 40, np.uint8)
    for t, frame in enumerate(frames):  # a red square moving left, brighter for a better score
        frame[12:20, 24 - 2 * t:32 - 2 * t, 0] = int(255 * score + 120)
    sample = write_video(folder / "samples" / "seed_0" / "a_red_square.mp4", frames, fps=8)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(folder / "preview.gif", save_all=True, append_images=images[1:], loop=0)
    report = {"settings": {"seeds": 1, "steps": 2, "sampler": "dpm-solver", "num_frames": 4, "height": 32,
                           "width": 32, "cfg_scale": 7.0, "prompts": ["a red square"]},
              "provenance": {"checkpoint_sha256": "x"},
              "metrics": {"prompt_following": score, "color_accuracy": score, "direction_accuracy": score / 2,
                          "diversity": 0.1},
              "samples": [{"file": str(sample), "prompt": "a red square"}]}
    (folder / "metrics.json").write_text(json.dumps(report))
    return folder


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """(tracking URI, local export) with v1 the champion (0.5) and v2 the challenger (0.25)."""
    from opensora_core.eval.round import record_round
    from opensora_core.tracking.store import TrackingStore

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    store = TrackingStore(uri)
    for index, score in enumerate((0.5, 0.25), start=1):
        export = _export(root / f"export{index}", seed=index)
        folder = _round(root / f"round{index}", export, score)
        report = json.loads((folder / "metrics.json").read_text())
        record_round(store, folder, report, export, "color_accuracy", log=lambda _: None, promotion_floor="none")
    return uri, _export(root / "local", seed=7).parent


@pytest.fixture(scope="session")
def running_app(registry, tmp_path_factory):
    """(base URL, AppState) of an app served in this process."""
    from opensora_core.app.models import ModelStore
    from opensora_core.app.ui import AppState, _profiles, launch

    uri, _ = registry
    root = tmp_path_factory.mktemp("app")
    state = AppState(ModelStore(uri, root / "models"), root / "samples", _profiles(), default_steps=STEPS)
    port = free_port()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = launch(state, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/", state
    demo.close()


@pytest.fixture(scope="session")
def client(running_app):
    from gradio_client import Client

    return Client(running_app[0], verbose=False, download_files=str(Path(running_app[1].out_root).parent / "client"))
