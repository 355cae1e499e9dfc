import math

import numpy as np
import pytest
import torch

from opensora_core.data.synthetic import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    moving_shape_clip,
    moving_square_clip,
)
from opensora_core.eval.metrics import (
    classify_color,
    estimate_motion,
    evaluate_videos,
    parse_synthetic_prompt,
    sample_diversity,
)


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [3, T, H, W] in [-1, 1], as the generator returns."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def test_parse_synthetic_prompt():
    p = parse_synthetic_prompt("An orange triangle moving up")
    assert (p.color, p.direction) == ("orange", "up")
    p = parse_synthetic_prompt("a cyan circle")
    assert (p.color, p.direction) == ("cyan", None)
    p = parse_synthetic_prompt("a cat playing piano")
    assert (p.color, p.direction) == (None, None)


@pytest.mark.parametrize("color", list(COLORS))
def test_every_color_is_recognised(color):
    for shape in SHAPES:
        found, votes = classify_color(moving_shape_clip(8, 64, 64, color, "right", shape, seed=1))
        assert found == color and votes[color] > 0


@pytest.mark.parametrize("color", list(COLORS))
def test_true_clips_through_the_embedded_codec_keep_colour_and_direction(color):
    # The block-DCT codec keeps one chroma value per 8x8 block, so the object's edge
    # pixels blend with the background; the metrics must still read a decoded true clip
    # (what a perfect model of those latents would give) as right.
    from opensora_core.data.synthetic import BACKGROUNDS
    from opensora_core.models.dct_autoencoder import DCTAutoencoder

    codec = DCTAutoencoder()
    for index, (shape, background) in enumerate((s, b) for s in SHAPES for b in BACKGROUNDS):
        direction = list(DIRECTIONS)[index % 4]
        clip = as_tensor(moving_shape_clip(8, 64, 64, color, direction, shape, 4.0, background, seed=index))
        with torch.no_grad():
            decoded = codec.decode(codec.encode(clip[None]))[0].clamp(-1, 1)
        assert classify_color(decoded)[0] == color, (shape, background)
        assert estimate_motion(decoded)[0] == direction, (shape, background)


def test_a_stray_pixel_does_not_set_the_colour():
    clip = moving_shape_clip(8, 64, 64, "orange", "right", "circle", seed=3)
    clip[:, 0, 0] = COLORS["cyan"]  # one saturated pixel of another colour in every frame
    assert classify_color(clip)[0] == "orange"


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_every_direction_is_recognised(direction):
    for shape in SHAPES:
        found, _ = estimate_motion(moving_shape_clip(8, 64, 64, "green", direction, shape, seed=2))
        assert found == direction


def test_correct_clips_score_one_wrong_clips_zero():
    clips, right, wrong = [], [], []
    for i, (color, direction) in enumerate(zip(COLORS, [*DIRECTIONS, *DIRECTIONS])):
        clips.append(as_tensor(moving_square_clip(8, 64, 64, color, direction, seed=i)))
        right.append(f"a {color} square moving {direction}")
        other_color = list(COLORS)[(list(COLORS).index(color) + 1) % len(COLORS)]
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[direction]
        wrong.append(f"a {other_color} square moving {opposite}")
    good = evaluate_videos(clips, right)
    assert good["color_accuracy"] == 1.0 and good["direction_accuracy"] == 1.0
    assert good["color_counted"] == good["direction_counted"] == len(clips)
    bad = evaluate_videos(clips, wrong)
    assert bad["color_accuracy"] == 0.0 and bad["direction_accuracy"] == 0.0


def test_uint8_frames_are_accepted():
    frames = moving_square_clip(8, 64, 64, "blue", "down")
    result = evaluate_videos([frames], ["a blue square moving down"])
    assert result["color_accuracy"] == 1.0 and result["direction_accuracy"] == 1.0


def test_static_clip_is_not_moving():
    frames = moving_square_clip(8, 64, 64, "red", "right", speed=0.0)
    direction, (dx, dy) = estimate_motion(frames)
    assert direction is None and math.hypot(dx, dy) < 0.25
    result = evaluate_videos([as_tensor(frames)], ["a red square moving right"])
    assert result["direction_accuracy"] == 0.0 and result["color_accuracy"] == 1.0


def test_prompts_without_attributes_are_skipped_and_counted():
    clip = as_tensor(moving_square_clip(8, 64, 64, "red", "left"))
    result = evaluate_videos([clip, clip, clip], ["a red square", "a cat playing piano", "a red square moving left"])
    assert result["color_counted"] == 2 and result["color_skipped"] == 1
    assert result["direction_counted"] == 1 and result["direction_skipped"] == 2
    assert result["color_accuracy"] == 1.0 and result["direction_accuracy"] == 1.0
    nothing = evaluate_videos([clip], ["a cat playing piano"])
    assert math.isnan(nothing["color_accuracy"]) and math.isnan(nothing["direction_accuracy"])


def test_diversity():
    a = as_tensor(moving_square_clip(8, 64, 64, "red", "left", seed=0))
    b = as_tensor(moving_square_clip(8, 64, 64, "red", "left", seed=5))
    assert sample_diversity([a, a.clone()]) == 0.0
    assert sample_diversity([a, b]) > 0.0
    assert math.isnan(sample_diversity([a]))
    prompt = "a red square moving left"
    assert evaluate_videos([a, a.clone()], [prompt, prompt])["diversity"] == 0.0
    result = evaluate_videos([a, b, a], [prompt, prompt, "a red square"])
    assert result["diversity"] > 0.0 and result["diversity_prompts"] == 1
    assert math.isnan(evaluate_videos([a], [prompt])["diversity"])


def test_mismatched_lengths_fail():
    with pytest.raises(ValueError):
        evaluate_videos([as_tensor(moving_square_clip(8))], [])
