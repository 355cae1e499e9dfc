import json

import pytest
from typer.testing import CliRunner

from opensora_core.eval.evaluate import load_prompts
from opensora_core.models import build_stdit2
from opensora_core.models.checkpoint_io import save_model


def test_default_prompt_set_is_exactly_the_held_out_combinations():
    from opensora_core.data.synthetic import COLORS, DIRECTIONS, held_out_prompts
    from opensora_core.eval.metrics import parse_synthetic_prompt

    prompts = load_prompts("default")
    assert prompts == held_out_prompts() and len(prompts) == 28
    parsed = [parse_synthetic_prompt(p) for p in prompts]
    assert {(p.color, p.direction) for p in parsed} == {(c, d) for c in COLORS for d in DIRECTIONS}


@pytest.mark.filterwarnings("ignore:no text_encoder.safetensors")
def test_eval_command_writes_samples_and_metrics(app, tmp_path):
    checkpoint = save_model(build_stdit2("stdit2-tiny"), tmp_path / "ckpt" / "model.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving right\na cat\n")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval-samples", "--checkpoint", str(checkpoint), "--prompts", str(prompts),
                                      "--seeds", "2", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "color_accuracy" in result.output and "i2v_direction_accuracy" in result.output
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    assert m["num_samples"] == 4 and m["color_counted"] == 2 and m["color_skipped"] == 2
    assert m["direction_counted"] == 2 and m["diversity_prompts"] == 2
    assert 0.0 <= m["color_accuracy"] <= 1.0 and m["diversity"] > 0.0
    for seed in (0, 1):
        assert sorted(p.name for p in (out / "samples" / f"seed_{seed}").iterdir()) == [
            "sample_000.json", "sample_000.mp4", "sample_001.json", "sample_001.mp4"]
    assert len(report["samples"]) == 4 and report["settings"]["sampler"] == "dpm-solver"
    # The prompt naming a colour, shape and direction also gets an image-to-video and an
    # extension case, sampled with each seed.
    assert [(r["kind"], r["seed"]) for r in report["conditioned"]] == [("i2v", 0), ("i2v", 1), ("extend", 0),
                                                                        ("extend", 1)]
    assert (out / "samples" / "i2v" / "sample_000.mp4").is_file() and (out / "samples" / "extend").is_dir()
    assert (out / "samples" / "extend_seed_1" / "sample_000.mp4").is_file()
    expected = [m[k] for k in ("color_accuracy", "direction_accuracy", "i2v_direction_accuracy",
                               "extend_direction_accuracy")]
    assert m["prompt_following"] == pytest.approx(sum(expected) / 4)


def test_eval_command_rejects_missing_checkpoint(app, tmp_path):
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 2


@pytest.mark.filterwarnings("ignore:no text_encoder.safetensors")
def test_eval_command_registers_and_promotes_as_the_asset_does(app, tmp_path, test_profile):
    from opensora_core.config import load_profile
    from opensora_core.tracking.registry import champion

    checkpoint = save_model(build_stdit2("stdit2-tiny"), tmp_path / "ckpt" / "model.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving right\n")
    common = ["eval-samples", "--checkpoint", str(checkpoint), "--prompts", str(prompts), "--seeds", "1",
              "--steps", "2", "--no-conditioned", "--profile", str(test_profile), "--register",
              "--promotion-floor", "none"]  # an untrained model scores near chance
    bad = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "x"), "--metric", "colour"])
    assert bad.exit_code == 2 and "--metric colour" in bad.output and not (tmp_path / "x").exists()
    uri = load_profile(str(test_profile)).mlflow_tracking_uri
    for round_, decision in ((1, "promoted"), (2, "kept")):  # the same score does not beat the champion
        out = tmp_path / f"round{round_}"
        result = CliRunner().invoke(app, [*common, "--out", str(out), "--metric", "color_accuracy"])
        assert result.exit_code == 0, result.output
        assert f"registered: {decision}" in " ".join(result.output.split())
        assert (out / "preview.gif").is_file() and (out / "frame_strip.png").is_file()
    assert int(champion(uri).version) == 1
