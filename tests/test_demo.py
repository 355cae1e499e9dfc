from __future__ import annotations

from opensora_core.data.video_io import read_frames
from orchestration.demo import run_demo


def test_demo_runs_end_to_end_and_writes_a_viewable_video(tmp_path):
    result = run_demo(tmp_path, num_frames=8, size=64)
    assert result["prediction_shape"] == (1, 8, 8, 8, 8)
    assert result["psnr"] > 20.0  # a real reconstruction, not noise
    frames = read_frames(result["video"], num_frames=100)
    assert frames.shape == (8, 64, 128, 3)  # input and reconstruction side by side
    assert [p.suffix for p in result["samples"]] == [".mp4", ".mp4"]
    assert read_frames(result["samples"][1], num_frames=100).shape == (8, 64, 64, 3)
