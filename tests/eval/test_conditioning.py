"""Image-to-video and extension scoring, checked against real clips, static clips and
clips whose object vanishes."""

import numpy as np
import pytest

from opensora_core.data.synthetic import held_out_combinations, moving_shape_clip
from opensora_core.data.video_io import read_frames
from opensora_core.eval.conditioning import build_cases, combination_of, score_case, summarize
from opensora_core.eval.evaluate import prompt_following


def test_combination_of_reads_colour_shape_and_direction():
    assert combination_of("an orange triangle moving up") == ("orange", "triangle", "up")
    assert combination_of("a red square") is None and combination_of("a cat moving left") is None


@pytest.mark.parametrize("kind", ["i2v", "extend"])
def test_true_continuations_score_right_and_static_or_vanished_ones_wrong(tmp_path, kind):
    combos = held_out_combinations()[:6]
    cases = build_cases(kind, combos, tmp_path, num_frames=8, speed=3.0)
    assert [(c.color, c.direction) for c in cases] == [(c, d) for c, _, d in combos]
    assert all(c.mask_strategy == ("0" if kind == "i2v" else "0,0,-4,0,4") for c in cases)
    rows = {"true": [], "static": [], "vanished": [], "backwards": []}
    for case, (color, shape, direction) in zip(cases, combos):
        reference = read_frames(case.reference, 8) if kind == "extend" else None
        truth = moving_shape_clip(8, 64, 64, color, direction, shape, 3.0, seed=1)
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[direction]
        backwards = moving_shape_clip(8, 64, 64, color, opposite, shape, 3.0, seed=1)
        static = np.repeat(truth[:1], 8, axis=0)
        vanished = np.repeat(truth[:1], 8, axis=0)
        vanished[1:] = vanished[0, 0, 0]  # only the first frame shows the object
        if reference is not None:  # an extension's first frames are the reference's last ones
            static = np.repeat(reference[-1:], 8, axis=0)
        for name, video in (("true", truth), ("static", static), ("vanished", vanished), ("backwards", backwards)):
            rows[name].append(score_case(video, case))
    assert summarize(rows["true"])[f"{kind}_direction_accuracy"] == 1.0
    assert summarize(rows["true"])[f"{kind}_color_accuracy"] == 1.0
    assert summarize(rows["static"])[f"{kind}_direction_accuracy"] == 0.0
    assert summarize(rows["backwards"])[f"{kind}_direction_accuracy"] == 0.0
    assert summarize(rows["vanished"])[f"{kind}_direction_accuracy"] == 0.0


def test_prompt_following_averages_what_was_measured():
    assert prompt_following({"color_accuracy": 1.0, "direction_accuracy": 0.5}) == 0.75
    full = {"color_accuracy": 1.0, "direction_accuracy": 0.5, "i2v_direction_accuracy": 0.0,
            "extend_direction_accuracy": 0.5}
    assert prompt_following(full) == 0.5
    assert np.isnan(prompt_following({"color_accuracy": float("nan")}))


def _room_ahead(frame: np.ndarray, direction: str) -> int:
    """Pixels between the object (what differs clearly from the background, the frame's
    median colour; mp4 blurs edges) and the frame's edge it moves toward."""
    background = np.median(frame.reshape(-1, 3), axis=0)
    ys, xs = np.nonzero(np.abs(frame.astype(float) - background).max(axis=-1) > 60)
    height, width = frame.shape[:2]
    return {"left": xs.min(), "right": width - 1 - xs.max(), "up": ys.min(), "down": height - 1 - ys.max()}[direction]


@pytest.mark.parametrize("kind", ["i2v", "extend"])
def test_references_leave_room_for_the_motion_asked_for(tmp_path, kind):
    # An object at the edge it must move toward could only stop or leave the frame.
    combos = held_out_combinations()
    cases = build_cases(kind, combos, tmp_path, num_frames=8, speed=4.0, context=4, room_speed=5.0)
    for case in cases:
        if kind == "i2v":
            from PIL import Image

            last_given, needed = np.asarray(Image.open(case.reference).convert("RGB")), 5.0 * 7
        else:
            last_given, needed = read_frames(case.reference, 8)[-1], 4.0 * 4
        assert _room_ahead(last_given, case.direction) >= needed - 2, case
