from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import (
    VideoDecodeError,
    frames_to_tensor,
    read_frames,
    to_uint8_frames,
    write_video,
)


def test_reads_real_video_frames(videos_dir):
    frames = read_frames(videos_dir / "Megamind.avi", num_frames=5, start=10, stride=3)
    assert frames.shape == (5, 528, 720, 3) and frames.dtype == np.uint8
    first = read_frames(videos_dir / "Megamind.avi", num_frames=1, start=10)
    np.testing.assert_array_equal(first[0], frames[0])


def test_damaged_and_missing_files_raise_decode_errors(videos_dir, tmp_path):
    with pytest.raises(VideoDecodeError, match="no such file"):
        read_frames(tmp_path / "absent.mp4", 4)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError):
        read_frames(tmp_path / "empty.mp4", 4)
    try:
        frames = read_frames(videos_dir / "Megamind_bugy.avi", 4)
    except VideoDecodeError as err:
        assert "Megamind_bugy.avi" in str(err)
    else:
        assert frames.ndim == 4 and frames.shape[-1] == 3  # whatever decodes is well formed


def test_fit_to_target_keeps_aspect_then_center_crops():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 30:50] = 255  # a bright vertical band in the middle
    video = frames_to_tensor(frames, 32, 32)
    assert video.shape == (3, 2, 32, 32)
    assert video.min() >= -1 and video.max() <= 1
    assert video[:, :, :, 16].mean() > 0.9 and video[:, :, :, 0].mean() < -0.9


def test_mp4_round_trip(tmp_path):
    clip = moving_square_clip(num_frames=6, height=33, width=48, color="blue", direction="down")
    path = write_video(tmp_path / "clip.mp4", clip, fps=12)
    back = read_frames(path, num_frames=100)
    assert back.shape == (6, 34, 48, 3)  # odd height padded for yuv420p
    assert np.abs(back[:, :33].astype(int) - clip.astype(int)).mean() < 6


def test_synthetic_square_moves_in_its_direction():
    clip = moving_square_clip(num_frames=8, height=64, width=64, color="red", direction="left", speed=3)
    red = (clip[..., 0] > 150) & (clip[..., 1] < 100)
    columns = [np.nonzero(red[t].any(axis=0))[0].mean() for t in range(8)]
    assert all(b < a for a, b in itertools.pairwise(columns))
    assert red[0].sum() == red[-1].sum() > 0  # stays whole inside the frame
    with pytest.raises(ValueError, match="unknown color"):
        moving_square_clip(color="mauve")


def test_to_uint8_frames_validates_layout():
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        to_uint8_frames(torch.zeros(2, 3, 4, 4))
    frames = to_uint8_frames(torch.ones(3, 2, 4, 4))
    assert frames.shape == (2, 4, 4, 3) and frames.max() == 255


def test_held_out_split_keeps_every_pair_of_attributes_in_training():
    from opensora_core.data.synthetic import (
        COLORS,
        DIRECTIONS,
        SHAPES,
        held_out_combinations,
        training_combinations,
    )

    held, train = held_out_combinations(), training_combinations()
    assert len(held) == 28 and len(train) == 56 and not set(held) & set(train)
    assert len(training_combinations(hold_out=False)) == len(COLORS) * len(SHAPES) * len(DIRECTIONS)
    for color, shape, direction in held:  # every two of its three words occur together in training
        assert any(c == color and d == direction for c, _, d in train)
        assert any(c == color and s == shape for c, s, _ in train)
        assert any(s == shape and d == direction for _, s, d in train)


def test_synth_with_hold_out_writes_only_training_combinations(tmp_path):
    from opensora_core.data.synthetic import held_out_combinations, synth

    samples = synth(tmp_path, videos=60, images=3, hold_out=True, speed=(3.0, 4.0), num_frames=10)
    videos = [s for s in samples if s.direction is not None]
    assert len(videos) == 60 and not {(s.color, s.shape, s.direction) for s in videos} & set(held_out_combinations())
    with pytest.raises(ValueError, match="speed"):
        synth(tmp_path / "x", videos=1, images=0, speed=(0.0, 1.0))
