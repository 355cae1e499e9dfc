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


def _error(client, *args, api_name: str) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    return str(caught.value)


def test_bad_input_shows_a_message_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client import handle_file

    assert "prompt is empty" in _error(client, *form(prompt="  "), api_name="/generate")
    assert "height 4 must be at least 8" in _error(client, *form(height=4), api_name="/generate")
    unreadable = tmp_path / "not_an_image.png"
    unreadable.write_bytes(b"plain text, not a PNG")
    message = _error(client, *form(references=[handle_file(str(unreadable))], mask="image-to-video"),
                     api_name="/generate")
    assert "not_an_image.png is not an image or video that can be read" in message
    assert "no version 99" in _error(client, *form(model="registry:99"), api_name="/generate")
    assert "no model at /nowhere" in _error(client, *form(local_model="/nowhere"), api_name="/generate")
    assert "needs a reference" in _error(client, *form(mask="extend"), api_name="/generate")
    video, _, _ = client.predict(*form(seed=5), api_name="/generate")  # still serving
    assert _video_path(video).is_file()


def test_compare_lists_the_versions_with_their_scores_and_the_champion_marked(client):
    table, gallery, note = client.predict(api_name="/versions")
    rows = {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}
    assert set(rows) == {"v1", "v2"} and note == ""
    assert rows["v1"]["champion"] == "★" and rows["v2"]["champion"] == ""
    assert rows["v1"]["color_accuracy"] == 0.5 and rows["v2"]["color_accuracy"] == 0.25
    assert rows["v2"]["aliases"] == "challenger" and rows["v2"]["decision"] == "kept"
    captions = [item["caption"] for item in gallery]
    assert captions[1].startswith("★ champion v1: ") and captions[0].startswith("v2: ")
    assert all(Path(item["image"]["path"] if isinstance(item["image"], dict) else item["image"]).is_file()
               for item in gallery)


def test_two_versions_on_one_prompt_and_seed(client, running_app):
    _, state = running_app
    a, b = client.predict("registry:1", "registry:2", "a blue circle", 11, *form(), api_name="/compare_two")
    a, b = _frames(_video_path(a)), _frames(_video_path(b))
    assert a.shape == b.shape == (FRAMES, 32, 32, 3)
    assert not np.array_equal(a, b)  # two different weights, same noise
    assert len(state.models.loaded_labels()) == 1  # memory bound: one model kept


def test_history_lists_generations_and_reruns_one_identically(client):
    video, _, _ = client.predict(*form(prompt="a green triangle", seed=9), api_name="/generate")
    table, choice = client.predict(api_name="/history")
    choice = choice["value"]  # the run dropdown's update: the newest run chosen
    newest = dict(zip(table["headers"], table["data"][0]))
    assert newest["prompt"] == "a green triangle" and newest["seed"] == 9 and newest["run"] == choice
    again, info = client.predict(choice, api_name="/rerun")
    np.testing.assert_array_equal(_frames(_video_path(again)), _frames(_video_path(video)))
    assert "--seed 9" in info


def test_one_generation_at_a_time_others_queue_and_cancel_stops_one(client, running_app):
    import time

    from gradio_client import Client
    from gradio_client.utils import Status

    url, state = running_app
    before = len(list(state.out_root.iterdir()))
    job = client.submit(*form(steps=200, seed=13, height=64, width=64, length=16, window=16), api_name="/generate")
    deadline = time.monotonic() + 60
    progress = None
    while progress is None and time.monotonic() < deadline:  # the bar follows the denoising steps
        units = [p for p in (job.status().progress_data or []) if p.unit == "steps" and (p.index or 0) >= 2]
        progress = units[0] if units else None
        time.sleep(0.05)
    assert progress is not None and progress.length == 200 and progress.desc == "denoising", job.status()
    other = Client(url, verbose=False, download_files=str(state.out_root.parent / "other"))
    waiting = other.submit(*form(seed=21), api_name="/generate")  # another visitor, while the first runs
    deadline = time.monotonic() + 30
    while waiting.status().code != Status.IN_QUEUE and time.monotonic() < deadline:
        time.sleep(0.05)
    status = waiting.status()
    assert status.code == Status.IN_QUEUE and status.rank == 0, status  # first in line, shown to them
    from gradio_client.exceptions import AppError

    client.predict(api_name="/cancel")
    with pytest.raises(AppError, match="generation cancelled"):  # the page's message
        job.result(timeout=60)
    assert client.session_hash not in state.cancels  # its worker has stopped, not only its page
    video, _, _ = waiting.result(timeout=120)  # the queued one ran once the first stopped
    assert _video_path(video).is_file()
    assert len(list(state.out_root.iterdir())) == before + 1  # the cancelled run left nothing


def test_the_page_is_served_on_loopback_without_analytics(running_app):
    import json
    import urllib.request

    url, _ = running_app
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{url}config", timeout=30) as response:
        config = json.load(response)
    assert config["analytics_enabled"] is False
    assert not config.get("share_url")
