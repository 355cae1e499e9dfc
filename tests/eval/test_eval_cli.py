import json

import pytest
from typer.testing import CliRunner

from opensora_core.eval.cli import load_prompts
from opensora_core.models import build_stdit2
from opensora_core.models.checkpoint_io import save_model


def test_default_prompt_set_covers_colours_and_directions():
    from opensora_core.data.synthetic import COLORS, DIRECTIONS
    from opensora_core.eval.metrics import parse_synthetic_prompt

    parsed = [parse_synthetic_prompt(p) for p in load_prompts("default")]
    assert len(parsed) >= 8
    assert {p.color for p in parsed} == set(COLORS)
    assert {p.direction for p in parsed} == set(DIRECTIONS)


@pytest.mark.filterwarnings("ignore:no text_encoder.safetensors")
def test_eval_command_writes_samples_and_metrics(app, tmp_path):
    checkpoint = save_model(build_stdit2("stdit2-tiny"), tmp_path / "ckpt" / "model.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving right\na cat\n")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(checkpoint), "--prompts", str(prompts),
                                      "--seeds", "2", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "color_accuracy" in result.output
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    assert m["num_samples"] == 4 and m["color_counted"] == 2 and m["color_skipped"] == 2
    assert m["direction_counted"] == 2 and m["diversity_prompts"] == 2
    assert 0.0 <= m["color_accuracy"] <= 1.0 and m["diversity"] > 0.0
    for seed in (0, 1):
        assert sorted(p.name for p in (out / "samples" / f"seed_{seed}").iterdir()) == [
            "sample_000.json", "sample_000.mp4", "sample_001.json", "sample_001.mp4"]
    assert len(report["samples"]) == 4 and report["settings"]["sampler"] == "dpm-solver"


def test_eval_command_rejects_missing_checkpoint(app, tmp_path):
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 2
