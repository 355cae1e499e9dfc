from __future__ import annotations

import pytest
import torch

from opensora_core.infer.mask_strategy import (
    MaskOp,
    MaskStrategyError,
    apply_mask_strategy,
    parse_mask_strategy,
)


def test_defaults_fill_missing_fields():
    assert parse_mask_strategy("0") == [MaskOp(0, 0, 0, 0, 1, 0.0)]
    assert parse_mask_strategy("0;0,1,0,-1,1") == [MaskOp(0, 0, 0, 0, 1, 0.0), MaskOp(0, 1, 0, -1, 1, 0.0)]
    assert parse_mask_strategy("1,0,-4,0,4,0.5") == [MaskOp(1, 0, -4, 0, 4, 0.5)]
    assert parse_mask_strategy("") == [] and parse_mask_strategy(None) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,a", "ref_id must be an integer"),
        ("0,0,0,0,1,0.5,9", "at most 6"),
        ("0;;0", "empty field"),
        ("0,0,0,0,0", "length must be >= 1"),
        ("0,0,0,0,1,1.5", r"edit_ratio must be in \[0, 1\]"),
        ("-1", "loop and ref_id must be >= 0"),
        ("0,0,0,0,1,x", "edit_ratio must be a number"),
    ],
)
def test_malformed_strategies_name_the_problem(text, message):
    with pytest.raises(MaskStrategyError, match=message):
        parse_mask_strategy(text)


def _ref(frames: int, value: float) -> torch.Tensor:
    return torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1).expand(4, frames, 2, 2) + value


def test_image_to_video_extension_connect_and_edit_place_the_right_frames():
    shape = (4, 8, 2, 2)
    image, clip = _ref(1, 100.0), _ref(6, 200.0)

    placed, mask = apply_mask_strategy(parse_mask_strategy("0"), 0, [image], 8, shape)
    assert torch.equal(placed[:, 0], image[:, 0]) and mask.tolist() == [0] + [1] * 7

    placed, mask = apply_mask_strategy(parse_mask_strategy("0,0,-3,0,3"), 0, [clip], 8, shape)
    assert torch.equal(placed[:, :3], clip[:, 3:]) and mask.tolist() == [0, 0, 0] + [1] * 5

    placed, mask = apply_mask_strategy(parse_mask_strategy("0;0,1,0,-1,1"), 0, [image, clip], 8, shape)
    assert torch.equal(placed[:, 0], image[:, 0]) and torch.equal(placed[:, 7], clip[:, 0])
    assert mask.tolist() == [0] + [1] * 6 + [0]

    placed, mask = apply_mask_strategy(parse_mask_strategy("0,0,0,0,6,0.4"), 0, [clip], 8, shape)
    assert torch.equal(placed[:, :6], clip) and mask.tolist() == pytest.approx([0.4] * 6 + [1, 1])

    assert apply_mask_strategy(parse_mask_strategy("1"), 0, [image], 8, shape) is None


def test_impossible_placements_are_errors():
    shape = (4, 8, 2, 2)
    with pytest.raises(MaskStrategyError, match="only 1 reference"):
        apply_mask_strategy(parse_mask_strategy("0,1"), 0, [_ref(1, 0)], 8, shape)
    with pytest.raises(MaskStrategyError, match="do not fit"):
        apply_mask_strategy(parse_mask_strategy("0,0,0,6,4"), 0, [_ref(6, 0)], 8, shape)
    with pytest.raises(MaskStrategyError, match="do not match the target"):
        apply_mask_strategy(parse_mask_strategy("0"), 0, [torch.zeros(4, 1, 3, 3)], 8, shape)
