"""CLIP score with a tiny random CLIP built and saved here: nothing is downloaded."""

import json
import math
import sys

import pytest
import torch
from typer.testing import CliRunner

from opensora_core.data.synthetic import moving_shape_clip
from opensora_core.eval.clip_score import ClipScorer, check_clip_folder, frame_positions
from opensora_core.eval.evaluate import run_eval
from opensora_core.models import build_stdit2
from opensora_core.models.checkpoint_io import save_model
from tests.data.learned_models import save_tiny_clip

PROMPTS = ["a red square moving right", "a blue circle moving left", "a green triangle moving up", "a cat"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP (hidden 32, 2 layers, 32x32 images) with a character-level BPE
    tokenizer and a 32-pixel image processor, saved as a Hugging Face folder."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def scorer(tiny_clip):
    return ClipScorer.from_pretrained(tiny_clip)


def clip_video(color="red", direction="right", seed=1) -> torch.Tensor:
    """A synthetic clip as the generator returns it: [3, T, H, W] in [-1, 1]."""
    frames = moving_shape_clip(8, 64, 64, color, direction, "square", seed=seed)
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def test_frame_positions_are_evenly_spaced():
    assert frame_positions(8, 4) == [0, 2, 5, 7]
    assert frame_positions(3, 4) == [0, 1, 2]
    assert frame_positions(1, 4) == [0]
    with pytest.raises(ValueError):
        frame_positions(0)


def test_scores_are_finite_bounded_and_deterministic(scorer):
    videos = [clip_video("red", "right"), clip_video("blue", "left", seed=2)]
    scores = scorer.score(videos, PROMPTS[:2])
    assert len(scores) == 2
    assert all(math.isfinite(s) and 0.0 <= s <= 100.0 for s in scores)
    assert scorer.score(videos, PROMPTS[:2]) == scores
    assert scorer.score([], []) == []


def test_same_video_and_prompt_score_the_same_and_prompts_matter(scorer):
    video = clip_video()
    same = scorer.score([video, video.clone()], [PROMPTS[0], PROMPTS[0]])
    assert same[0] == pytest.approx(same[1], abs=1e-4)
    per_prompt = scorer.score([video] * len(PROMPTS), PROMPTS)
    assert len({round(s, 4) for s in per_prompt}) > 1, per_prompt
    alone = scorer.score([video], [PROMPTS[1]])
    assert alone[0] == pytest.approx(per_prompt[1], abs=1e-4)


def test_uint8_frames_score_like_the_tensor(scorer):
    video = clip_video()
    frames = moving_shape_clip(8, 64, 64, "red", "right", "square", seed=1)
    tensor_score, array_score = scorer.score([video, frames], [PROMPTS[0]] * 2)
    assert tensor_score == pytest.approx(array_score, abs=1e-4)


def test_score_rejects_mismatched_inputs(scorer):
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        scorer.score([clip_video(), clip_video()], PROMPTS[:1])


def test_bad_clip_folders_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*no such folder.*model_type 'clip'"):
        ClipScorer.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: not a CLIP folder.*no config.json.*no weights.*tokenizer"):
        ClipScorer.from_pretrained(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match="model_type 't5', not 'clip'"):
        check_clip_folder(empty)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder"):
        check_clip_folder(weights)


def test_check_accepts_the_saved_folder(tiny_clip):
    assert check_clip_folder(str(tiny_clip)) == tiny_clip


@pytest.fixture
def checkpoint(tmp_path):
    return save_model(build_stdit2("stdit2-tiny"), tmp_path / "ckpt" / "model.safetensors")


@pytest.fixture
def one_prompt(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red square moving right\n")
    return path


@pytest.mark.filterwarnings("ignore:no text_encoder.safetensors")
def test_eval_command_with_clip_reports_clip_score(app, tiny_clip, checkpoint, one_prompt, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(checkpoint), "--prompts", str(one_prompt),
                                      "--seeds", "1", "--steps", "2", "--out", str(out), "--clip", str(tiny_clip)])
    assert result.exit_code == 0, result.output
    assert "clip_score" in result.output
    report = json.loads((out / "metrics.json").read_text())
    score = report["metrics"]["clip_score"]
    assert math.isfinite(score) and 0.0 <= score <= 100.0
    assert [row["clip_score"] for row in report["samples"]] == [score]
    assert report["settings"]["clip"] == str(tiny_clip)


def test_eval_command_rejects_a_bad_clip_folder_before_generating(app, checkpoint, one_prompt, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(checkpoint), "--prompts", str(one_prompt),
                                      "--out", str(out), "--clip", str(tmp_path / "no-clip")])
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long lines
    assert f"{tmp_path / 'no-clip'}: no such folder" in message and "model_type 'clip'" in message
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:no text_encoder.safetensors")
def test_run_eval_without_clip_imports_nothing_of_clip(checkpoint, one_prompt, tmp_path, monkeypatch):
    # Take the CLIP modules out of sys.modules (monkeypatch puts them back afterwards):
    # importing them during the run would put them back in. `opensora_core.eval.clip_score`
    # is the reliable witness (transformers caches `transformers.CLIPModel` once loaded).
    watched = ("transformers.models.clip", "opensora_core.eval.clip_score")
    for name in [n for n in sys.modules if n.startswith(watched)]:
        monkeypatch.delitem(sys.modules, name)
    report = run_eval(checkpoint, one_prompt, seeds=1, steps=2, out=tmp_path / "eval")
    assert not [n for n in sys.modules if n.startswith(watched)]
    assert "clip_score" not in report["metrics"] and report["settings"]["clip"] is None
    assert all("clip_score" not in row for row in report["samples"])


def test_curation_match_scorer_reads_the_same_clip_folder(tiny_clip):
    """The curation `match` scorer (caption-frame similarity) works with the installed transformers."""
    from opensora_core.curation.config import MatchConfig
    from opensora_core.curation.scoring.base import ClipSamples
    from opensora_core.curation.scoring.clip_models import MatchScorer

    frames = clip_video().permute(1, 2, 3, 0).add(1).mul(127.5).round().byte().numpy()
    samples = ClipSamples("c0", len(frames), {i: f for i, f in enumerate(frames)}, "a red square moving right")
    rows = MatchScorer(MatchConfig(clip=str(tiny_clip), samples=2)).score([samples, ClipSamples("c1", 1, {0: frames[0]})])
    assert -1.0 <= rows[0]["match"] <= 1.0 and rows[1]["match"] is None
