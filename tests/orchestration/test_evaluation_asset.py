"""eval_samples on bad input: each fails before sampling, naming the cause, and leaves
no round folder behind. (The successful path runs in test_pipeline.py.)"""

from __future__ import annotations

import pytest
from dagster import Failure, materialize

from assets_defs.evaluation import eval_samples
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import write_video
from opensora_core.eval.round import write_previews
from opensora_core.models import build_stdit2
from opensora_core.models.checkpoint_io import save_model
from orchestration.resources import EvaluationSettings, MlflowTracking, TrainingSettings


def _resources(tmp_path, profile, uri=None, prompts="default"):
    return {
        "training_settings": TrainingSettings(profile=str(profile), stages=[f"tiny/stage{i}" for i in range(4)],
                                              out_root=str(tmp_path / "train")),
        "evaluation_settings": EvaluationSettings(out_root=str(tmp_path / "eval"), seeds=1, steps=2, prompts=prompts),
        "mlflow_tracking": MlflowTracking(tracking_uri=uri or f"sqlite:///{tmp_path / 'mlruns.db'}"),
    }


def _export(tmp_path):
    path = tmp_path / "train" / "stage3" / "export" / "model.safetensors"
    save_model(build_stdit2("stdit2-tiny"), path)
    return path


def test_missing_export_names_the_stage_to_materialize(tmp_path, test_profile):
    with pytest.raises(Failure, match="no export of stage 3 .* materialize stdit2_stage3 first"):
        materialize([eval_samples], resources=_resources(tmp_path, test_profile))


def test_unreachable_tracking_server_fails_before_sampling(tmp_path, test_profile):
    _export(tmp_path)
    with pytest.raises(Failure, match=r"MLflow tracking server http://127.0.0.1:9 is unreachable"):
        materialize([eval_samples], resources=_resources(tmp_path, test_profile, uri="http://127.0.0.1:9"))
    assert not (tmp_path / "eval").exists()


def test_missing_prompt_file_is_named(tmp_path, test_profile):
    _export(tmp_path)
    with pytest.raises(Failure, match="prompt set .*nope.txt: no such file"):
        materialize([eval_samples], resources=_resources(tmp_path, test_profile, prompts=str(tmp_path / "nope.txt")))


def test_previews_tile_every_prompt_of_seed_zero(tmp_path):
    from PIL import Image

    rows = []
    for seed in (0, 1):
        for i, color in enumerate(["red", "blue", "green"]):
            path = tmp_path / f"seed_{seed}" / f"sample_{i}.mp4"
            path.parent.mkdir(exist_ok=True)
            write_video(path, moving_square_clip(8, 64, 64, color=color), fps=8)
            rows.append({"prompt": f"a {color} square", "file": str(path)})
    gif, png = write_previews({"samples": rows, "settings": {"num_frames": 8}}, tmp_path, fps=8)
    with Image.open(gif) as image:
        assert image.n_frames == 8 and image.size == (3 * 128, 128)  # 3 tiles of 64 px shown at 2x
    with Image.open(png) as image:
        assert image.size == (3 * 128, 3 * 128)  # first/middle/last frame per prompt, one row each
