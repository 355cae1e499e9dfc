from __future__ import annotations

import math

import pytest
import torch

from opensora_core.models import STDiT2, STDiT2Config, build_stdit2, load_preset
from opensora_core.models.layers import spatial_sincos_pos_embed
from opensora_core.models.rope import RotaryEmbedding, apply_rotary, rotate_interleaved_pairs

from .model_fixtures import build_random_model, dummy_inputs, get_init_dict


def _read_reference(reference_dir) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (reference_dir / "stdit2_xl2_state_dict.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        shapes[name] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return shapes


def test_xl2_state_dict_matches_published_checkpoint(reference_dir):
    reference = _read_reference(reference_dir)
    assert len(reference) == 707
    with torch.device("meta"):
        model = build_stdit2("stdit2-xl2")
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert sorted(ours) == sorted(reference)
    assert ours == reference
    assert sum(p.numel() for p in model.parameters()) == 767_452_100
    # The published checkpoint loads strictly into our module tree.
    fake = {name: torch.empty(shape, device="meta") for name, shape in reference.items()}
    model.load_state_dict(fake, strict=True, assign=True)


def test_open_sora_alias_and_presets():
    # The defaults are the published shapes; the published micro-condition convention is
    # the preset's (our default stays the one models trained from scratch use).
    published = STDiT2Config(micro_condition_convention="opensora-1.1")
    assert load_preset("STDiT2-XL/2") == load_preset("stdit2-xl2") == published
    with torch.device("meta"):
        tiny = build_stdit2("stdit2-tiny")
    params = sum(p.numel() for p in tiny.parameters())
    assert 200_000 <= params <= 5_000_000
    with torch.device("meta"):
        shallow = build_stdit2("stdit2-tiny", depth=1)
    assert len(shallow.blocks) == 1 and shallow.config.hidden_size == tiny.config.hidden_size


def test_config_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        STDiT2Config(hidden_size=96, num_heads=5)
    with pytest.raises(ValueError, match="divisible by 3"):
        STDiT2Config(hidden_size=64, num_heads=4)
    with pytest.raises(ValueError, match="extra"):
        STDiT2Config(hidden_sise=96)


def test_forward_shapes_with_padding_and_crop():
    model = build_random_model()
    inputs = dummy_inputs(frames=3, height=5, width=7)  # odd sizes: padded to the patch, cropped back
    out = model(**inputs)
    assert out.shape == (2, 8, 3, 5, 7)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_open_sora_keyword_call_with_micro_conditions():
    model = build_random_model()
    inputs = dummy_inputs()
    base = model(**inputs, height=torch.tensor([48.0, 48.0]), width=torch.tensor([64.0, 64.0]),
                 num_frames=torch.tensor([4.0, 4.0]), ar=torch.tensor([0.75, 0.75]), fps=torch.tensor([24.0, 24.0]))
    defaults = model(**inputs)  # defaults: 8x latent size, ar = h/w, T frames, 24 fps
    torch.testing.assert_close(base, defaults)
    other_fps = model(**inputs, fps=8.0)
    assert not torch.allclose(base, other_fps), "fps must condition the output"


def test_padding_of_one_caption_never_changes_another_sample():
    model = build_random_model()
    inputs = dummy_inputs()
    inputs["mask"][1, 5:] = 0  # sample 1 has 5 real tokens, 3 padding
    out = model(**inputs)

    # Garbage in sample 1's padding changes nothing, in either sample.
    noisy = {k: v.clone() for k, v in inputs.items()}
    noisy["y"][1, :, 5:] = 1e3 * torch.randn_like(noisy["y"][1, :, 5:])
    torch.testing.assert_close(model(**noisy), out)

    # Each sample alone (unpadded) gives what it gave in the batch.
    alone0 = model(**{k: v[:1] for k, v in inputs.items()})
    torch.testing.assert_close(alone0, out[:1], atol=1e-5, rtol=1e-5)
    alone1 = model(x=inputs["x"][1:], timestep=inputs["timestep"][1:], y=inputs["y"][1:, :, :5],
                   mask=None)
    torch.testing.assert_close(alone1, out[1:], atol=1e-5, rtol=1e-5)

    # Without the mask the padding would leak: the test above can fail.
    assert not torch.allclose(model(**{**noisy, "mask": None}), out, atol=1e-3)


def test_mask_rows_repeat_for_classifier_free_guidance_batches():
    """Open-Sora doubles y (prompt + null) but passes the prompt mask once."""
    model = build_random_model()
    inputs = dummy_inputs()
    inputs["mask"][:, 6:] = 0
    doubled = {
        "x": torch.cat([inputs["x"]] * 2), "timestep": torch.cat([inputs["timestep"]] * 2),
        "y": torch.cat([inputs["y"], model.null_caption(2)]), "mask": inputs["mask"],
    }
    out = model(**doubled)
    torch.testing.assert_close(out[:2], model(**inputs), atol=1e-5, rtol=1e-5)


def test_all_zero_caption_mask_is_a_clear_error():
    model = build_random_model()
    inputs = dummy_inputs()
    inputs["mask"][0] = 0
    with pytest.raises(ValueError, match="at least one real token"):
        model(**inputs)


def test_gradient_checkpointing_is_numerically_equal():
    model = build_random_model().train()
    inputs = dummy_inputs()

    def run(checkpointing: bool):
        model.zero_grad()
        model.enable_gradient_checkpointing(checkpointing)
        torch.manual_seed(3)  # caption dropout draws the same samples both times
        out = model(**inputs)
        (out**2).mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_plain, grads_plain = run(False)
    out_ckpt, grads_ckpt = run(True)
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > 50
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], msg=name)


def test_bf16_forward_on_cpu_matches_fp32():
    model = build_random_model()
    inputs = dummy_inputs()
    reference = model(**inputs)
    out = model.to(torch.bfloat16)(**inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = (out - reference).norm() / reference.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3f}"


def test_conditioning_frames_are_modulated_at_timestep_zero():
    model = build_random_model()
    inputs = dummy_inputs()
    frames = inputs["x"].shape[2]
    generate_all = torch.ones(2, frames, dtype=torch.bool)
    torch.testing.assert_close(model(**inputs, x_mask=generate_all), model(**inputs))

    # All frames conditioning: every block is modulated with t0, so what reaches the
    # final layer cannot depend on the timestep.
    captured = []
    hook = model.final_layer.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    condition_all = torch.zeros(2, frames, dtype=torch.bool)
    early = model(**{**inputs, "timestep": torch.tensor([5.0, 5.0])}, x_mask=condition_all)
    late = model(**{**inputs, "timestep": torch.tensor([900.0, 900.0])}, x_mask=condition_all)
    model(**{**inputs, "timestep": torch.tensor([5.0, 5.0])})
    model(**{**inputs, "timestep": torch.tensor([900.0, 900.0])})
    hook.remove()
    torch.testing.assert_close(captured[0], captured[1])
    assert not torch.allclose(captured[2], captured[3])
    # Keep (published quirk): the final layer modulates conditioning frames with t,
    # normalises again and modulates with t0 + data_info, so the output still moves.
    assert not torch.allclose(early, late)

    # Mixed: changing the timestep changes generated frames' outputs, and the
    # per-frame choice follows x_mask.
    mixed = generate_all.clone()
    mixed[:, 0] = False
    a = model(**{**inputs, "timestep": torch.tensor([5.0, 5.0])}, x_mask=mixed)
    b = model(**{**inputs, "timestep": torch.tensor([900.0, 900.0])}, x_mask=mixed)
    assert not torch.allclose(a[:, :, 1:], b[:, :, 1:])


def test_rope_equals_complex_rotation():
    dim, length = 8, 5
    rope = RotaryEmbedding(dim)
    expected_freqs = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
    torch.testing.assert_close(rope.freqs.data, expected_freqs)
    assert not rope.freqs.requires_grad
    x = torch.randn(2, 3, length, dim)
    rotated = apply_rotary(x, *rope.angles(length))
    as_complex = torch.view_as_complex(x.reshape(2, 3, length, dim // 2, 2))
    phase = torch.polar(torch.ones(length, dim // 2), torch.outer(torch.arange(length).float(), expected_freqs))
    expected = torch.view_as_real(as_complex * phase).reshape(2, 3, length, dim)
    torch.testing.assert_close(rotated, expected)
    # The real-valued form (bf16 models, as published) is the same rotation.
    cos, sin = rope.angles(length)
    torch.testing.assert_close(x * cos + rotate_interleaved_pairs(x) * sin, expected)
    half = apply_rotary(x.bfloat16(), cos.bfloat16(), sin.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=0.05, rtol=0.02)


def test_spatial_position_embedding_layout():
    dim, rows, cols = 16, 3, 4
    table = spatial_sincos_pos_embed(dim, rows, cols, scale=1.0, base_size=cols).view(rows, cols, dim)
    # First half: column only; second half: row only.
    torch.testing.assert_close(table[0, :, : dim // 2], table[2, :, : dim // 2])
    torch.testing.assert_close(table[:, 0, dim // 2 :], table[:, 3, dim // 2 :])
    # Position (0, 0) is sin(0)=0 then cos(0)=1 in each half.
    quarter = dim // 4
    torch.testing.assert_close(table[0, 0], torch.tensor(([0.0] * quarter + [1.0] * quarter) * 2))
    # Column 1 at the lowest frequency (omega 1) with base_size stretching cols/base_size = 1.
    assert math.isclose(table[0, 1, 0].item(), math.sin(1.0), rel_tol=1e-6)


def test_temporal_attention_is_the_only_path_between_frames():
    model = build_random_model()
    inputs = dummy_inputs()
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["x"][:, :, 3] += 1.0
    out, out_changed = model(**inputs), model(**changed)
    assert not torch.allclose(out[:, :, 0], out_changed[:, :, 0])  # frames talk to each other
    for block in model.blocks:
        torch.nn.init.zeros_(block.scale_shift_table_temporal)
        torch.nn.init.zeros_(block.attn_temp.proj.weight)
        torch.nn.init.zeros_(block.attn_temp.proj.bias)
    torch.testing.assert_close(model(**inputs)[:, :, 0], model(**changed)[:, :, 0])


def test_drop_path_is_active_only_in_training():
    model = build_random_model(drop_path=0.5, class_dropout_prob=0.0)
    inputs = dummy_inputs()
    torch.testing.assert_close(model(**inputs), model(**inputs))
    model.train()
    torch.manual_seed(0)
    first = model(**inputs)
    torch.manual_seed(1)
    assert not torch.allclose(first, model(**inputs))


def test_bad_inputs_name_the_problem():
    model = build_random_model()
    inputs = dummy_inputs()
    with pytest.raises(ValueError, match=r"x must be \[B, 4"):
        model(**{**inputs, "x": inputs["x"][:, :3]})
    with pytest.raises(ValueError, match="y must be"):
        model(**{**inputs, "y": inputs["y"][..., :5]})
    with pytest.raises(ValueError, match="x_mask must be"):
        model(**inputs, x_mask=torch.ones(2, 9, dtype=torch.bool))


def test_init_starts_new_branches_at_identity():
    model = STDiT2(STDiT2Config(**get_init_dict()))
    out = model(**dummy_inputs())
    assert torch.count_nonzero(out) == 0  # zero final layer, as in DiT/PixArt


def test_open_sora_model_dicts_port_as_they_are():
    published = {"type": "STDiT2-XL/2", "from_pretrained": None, "input_sq_size": 512, "qk_norm": True,
                     "qk_norm_legacy": True, "enable_flashattn": False, "enable_layernorm_kernel": True,
                     "model_max_length": 200}
    config = STDiT2Config.from_opensora(published)
    assert config.model_dump() == STDiT2Config().model_dump() | {"enable_flash_attn": False,
                                                                 "micro_condition_convention": "opensora-1.1"}
    with pytest.raises(ValueError, match="hidden_sise"):
        STDiT2Config.from_opensora({"hidden_sise": 3})


def test_final_layer_modulates_conditioning_frames_twice():
    from opensora_core.models.layers import FinalLayer

    torch.manual_seed(0)
    layer = FinalLayer(hidden_size=8, patch_volume=1, out_channels=2)
    x, t, t0 = torch.randn(1, 2, 3, 8), torch.randn(1, 8), torch.randn(1, 8)
    x_mask = torch.tensor([[True, False]])
    out = layer(x, t, t0, x_mask)

    def modulate_with(h, emb):
        shift, scale = (layer.scale_shift_table + emb).unbind(0)
        return torch.nn.functional.layer_norm(h, (8,), eps=1e-6) * (1 + scale) + shift

    once = modulate_with(x, t)
    torch.testing.assert_close(out[:, 0], layer.linear(once)[:, 0])
    torch.testing.assert_close(out[:, 1], layer.linear(modulate_with(once, t0))[:, 1])


def test_bf16_model_sees_rounded_conditions_like_the_published_one():
    model = build_random_model().to(torch.bfloat16)
    inputs = dummy_inputs()
    # bf16 has 8 significant bits: 854 and 856 are the same number, 999 and 1000 too.
    a = model(**{**inputs, "timestep": torch.tensor([999.0, 999.0])}, height=480.0, width=854.0)
    b = model(**{**inputs, "timestep": torch.tensor([1000.0, 1000.0])}, height=480.0, width=856.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = model(**{**inputs, "timestep": torch.tensor([999.0, 999.0])}, height=480.0, width=864.0)
    assert not torch.allclose(a, c)


def test_temporal_position_embedding_tells_frames_apart_and_adds_no_weights():
    """Off (the published STDiT-2), a model whose frames cannot talk gives every frame of
    a repeated input the same output; on, each frame knows its index."""
    torch.manual_seed(0)
    plain = build_random_model()
    config = plain.config.model_copy(update={"temporal_pos_embed": True})
    with_index = STDiT2(config)
    with_index.load_state_dict(plain.state_dict(), strict=True)  # the same tensors: nothing new to load
    assert plain.config.temporal_pos_embed is False and load_preset("stdit2-xl2").temporal_pos_embed is False
    for model in (plain, with_index):
        for block in model.blocks:
            torch.nn.init.zeros_(block.attn_temp.proj.weight)
            torch.nn.init.zeros_(block.attn_temp.proj.bias)
    inputs = dummy_inputs()
    inputs["x"] = inputs["x"][:, :, :1].repeat(1, 1, inputs["x"].shape[2], 1, 1)
    same = plain(**inputs)
    torch.testing.assert_close(same[:, :, 0], same[:, :, -1])
    indexed = with_index(**inputs)
    assert not torch.allclose(indexed[:, :, 0], indexed[:, :, -1])


def test_demo_preset_is_the_tiny_one_with_frame_indices():
    demo, tiny = load_preset("stdit2-demo"), load_preset("stdit2-tiny")
    assert demo.temporal_pos_embed and demo.model_copy(update={"temporal_pos_embed": False}) == tiny
