"""The app's functions without a server: the form's plan, cancellation, the model store
and the `opensora app` command's checks."""

from __future__ import annotations

import threading
import warnings

import pytest
from typer.testing import CliRunner

from opensora_core.app.generation import Cancelled, GenerateForm, history, loops_for, plan, run_plan
from opensora_core.app.models import ModelStore

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")


def test_length_in_seconds_and_loops_follow_open_soras_app():
    # two seconds at 24 // 3 = 8 written frames per second: 16 frames, one loop of 16
    one = plan(GenerateForm("a cat", "m", length=2, length_unit="seconds", window=16))
    assert (one.settings.num_frames, one.settings.loops, one.total_frames) == (16, 1, 16)
    # 41 frames, 16 a loop, each later loop continuing from 4: 16 + 12 + 12 + 12 >= 41
    long = plan(GenerateForm("a cat", "m", length=41, window=16, condition_frame_length=4))
    assert (long.settings.num_frames, long.settings.loops, long.settings.condition_frame_length) == (16, 4, 4)
    assert loops_for(16, 16, 4) == 1 and loops_for(28, 16, 4) == 2 and loops_for(29, 16, 4) == 3
    sized = plan(GenerateForm("a cat", "m", resolution="240p", aspect_ratio="9:16"))
    assert (sized.settings.height, sized.settings.width) == (240, 426)  # the CLI's table


def test_mask_strategies_by_name(tmp_path):
    image = tmp_path / "ref.png"
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(image)
    strategies = {name: plan(GenerateForm("a cat", "m", window=16, references=[str(image)] * 2, mask=name))
                  .request.mask_strategy for name in ("image-to-video", "extend", "connect", "edit")}
    assert strategies == {"image-to-video": "0", "extend": "0,0,-8,0,8", "connect": "0;0,1,0,-1,1",
                          "edit": "0,0,0,0,16,0.4"}
    raw = plan(GenerateForm("a cat", "m", references=[str(image)], mask="raw", mask_strategy="0,0,0,2,1"))
    assert raw.request.mask_strategy == "0,0,0,2,1"


@pytest.mark.parametrize(("form", "message"), [
    (GenerateForm("", "m"), "prompt is empty"),
    (GenerateForm("a cat", "m", height=0, width=64), "height 0 must be at least 8"),
    (GenerateForm("a cat", "m", resolution="240p", aspect_ratio="5:1"), "not in 240p's table"),
    (GenerateForm("a cat", "m", length=0), "at least one"),
    (GenerateForm("a cat", "m", length=40, window=16, condition_frame_length=16), "condition frames in [1, 16)"),
    (GenerateForm("a cat", "m", mask="connect", references=["/nowhere.png"]), "reference /nowhere.png not found"),
    (GenerateForm("a cat", "m", mask="sideways"), "expected one of"),
    (GenerateForm("a cat", "m", steps=2.5), "steps must be a whole number"),
])
def test_bad_forms_are_refused_with_the_reason(form, message):
    with pytest.raises(ValueError, match=None) as caught:
        plan(form)
    assert message in str(caught.value)


def test_random_seed_is_drawn_and_reported():
    seeds = {plan(GenerateForm("a cat", "m", seed=None)).settings.seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.app.conftest import _export

    root = tmp_path_factory.mktemp("tiny")
    return _export(root / "a", seed=1).parent, _export(root / "b", seed=2).parent


def test_a_cancelled_run_stops_at_the_next_step_and_leaves_nothing(tiny, tmp_path):
    store = ModelStore(None, tmp_path / "models")
    generator, provenance = store.load(store.resolve(str(tiny[0]), "embedded"))
    cancel, seen = threading.Event(), []

    def on_step(done, total):
        seen.append((done, total))
        if done == 1:
            cancel.set()

    planned = plan(GenerateForm("a cat", str(tiny[0]), height=32, width=32, length=8, window=8, steps=5))
    (tmp_path / "out").mkdir()
    with pytest.raises(Cancelled):
        run_plan(generator, provenance, planned, tmp_path / "out", on_step=on_step, cancel=cancel)
    assert seen == [(0, 5), (1, 5)]
    assert not any((tmp_path / "out").iterdir()) and history(tmp_path / "out") == []
    assert not generator.model._forward_pre_hooks  # the counter is gone with the run


def test_models_load_once_and_at_most_max_loaded_stay(tiny, tmp_path):
    store = ModelStore(None, tmp_path / "models", max_loaded=1)
    a, b = (store.resolve(str(folder), "embedded") for folder in tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = store.load(a)
        assert store.load(a) is first and store.loads == 1
        store.load(b)
        assert store.loads == 2 and len(store.loaded_labels()) == 1
        assert store.load(a) is not first and store.loads == 3
    with pytest.raises(FileNotFoundError, match="no model at"):
        store.resolve(str(tmp_path / "missing"), "embedded")
    with pytest.raises(LookupError, match="no MLflow store"):
        store.resolve("registry:1", "embedded")
    assert store.versions() == [] and store.choices() == ([], None)


def test_app_command_refuses_bad_options_with_exit_2(tmp_path):
    from opensora_core.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["app", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such file or folder" in " ".join(result.output.split())
    assert runner.invoke(app, ["app", "--port", "0"]).exit_code == 2
    assert runner.invoke(app, ["app", "--max-models", "0"]).exit_code == 2
    help_text = runner.invoke(app, ["app", "--help"]).output
    assert "--share" in help_text and "127.0.0.1" in help_text


def test_a_version_deleted_from_the_registry_is_refused_even_when_cached(registry, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, _ = registry
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    v1 = client.get_model_version("stdit2", "1")
    extra = client.create_model_version("stdit2", v1.source, run_id=v1.run_id)  # no alias: others unaffected
    store = ModelStore(uri, tmp_path / "models")
    source = store.resolve(f"registry:{extra.version}", "embedded")
    assert source.checkpoint.is_file()  # downloaded once
    client.delete_model_version("stdit2", extra.version)
    with pytest.raises(LookupError, match=f"no version {extra.version} in the registry"):
        store.resolve(f"registry:{extra.version}", "embedded")
    assert f"registry:{extra.version}" not in [value for _, value in store.choices()[0]]


def test_download_version_and_champion_share_one_download(registry, tmp_path):
    from opensora_core.tracking.registry import download_champion, download_version

    uri, _ = registry
    path, number = download_champion(uri, tmp_path / "champion")
    assert number == 1 and path == tmp_path / "champion" / "model.safetensors" and path.is_file()
    second = download_version(uri, 2, tmp_path / "v2")
    assert second.is_file() and second.read_bytes() != path.read_bytes()
    assert not list(tmp_path.glob(".*partial"))  # staging folders cleaned up
    with pytest.raises(LookupError, match="no version 42"):
        download_version(uri, 42, tmp_path / "v42")
