"""Open-Sora's sizes give latents that are not multiples of the 2x2 patch (240x426 ->
30x53): STDiT-2 pads them to the patch inside the model and crops the output back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model_fixtures import build_random_model, dummy_inputs


def test_odd_patch_counts_give_the_inputs_size():
    model = build_random_model()
    inputs = dummy_inputs(batch=1, frames=2, height=30, width=53)  # 240x426 pixels
    assert model(**inputs).shape == (1, 8, 2, 30, 53)


def test_padding_inside_equals_padding_outside_and_cropping():
    model = build_random_model()
    inputs = dummy_inputs(frames=3, height=5, width=7)  # 3 x 4 patches, the last row and column half empty
    # The pixel size conditions the model; give it, or the padded run would condition on 48x64.
    conditions = {"height": 40.0, "width": 56.0}
    out = model(**inputs, **conditions)
    padded = {**inputs, "x": F.pad(inputs["x"], (0, 1, 0, 1))}
    cropped = model(**padded, **conditions)[..., :5, :7]
    assert out.shape == (2, 8, 3, 5, 7)
    torch.testing.assert_close(out, cropped, rtol=0, atol=0)


def test_padded_cells_do_not_leak_into_the_output():
    # Zero padding is what the model sees beyond the edge: different values there change
    # the result, so the pad must be zeros, as Open-Sora's.
    model = build_random_model()
    inputs = dummy_inputs(batch=1, frames=1, height=5, width=7)
    conditions = {"height": 40.0, "width": 56.0}
    other = {**inputs, "x": F.pad(inputs["x"], (0, 1, 0, 1), value=1.0)}
    assert not torch.allclose(model(**inputs, **conditions), model(**other, **conditions)[..., :5, :7])
