"""`dvc repro` reproduces the embedded pipeline: the stage graph is valid and runs the
documented commands in order (a dry run; the full run takes ~2 minutes, see README)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DVC = REPO / ".venv-dvc" / "bin" / "dvc"


@pytest.mark.skipif(not DVC.exists(), reason="dvc lives in .venv-dvc (make setup creates it)")
def test_dvc_pipeline_dry_run_lists_every_stage_in_order(tmp_path):
    done = subprocess.run([str(DVC), "repro", "--dry", "--force"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    order = ["synth", "curate", "cache_text", "cache_video", "train_stage0", "train_stage1", "train_stage2",
             "train_stage3", "sample"]
    positions = [done.stdout.find(f"Running stage '{name}'") for name in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), done.stdout
    assert "--init runs/stage2/export/model.safetensors" in done.stdout
