"""Stage 0 from a PixArt-alpha image checkpoint: the first forward of the video model
equals the image model on every frame. The image model here is an independent, plain
re-statement of PixArt-alpha's forward over its state dict."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from opensora_core.models import STDiT2, STDiT2Config
from opensora_core.models.layers import sinusoidal_embedding, spatial_sincos_pos_embed
from opensora_core.models.pixart import looks_like_pixart, stdit2_state_from_pixart

HIDDEN, HEADS, DEPTH, CAPTION, TOKENS = 48, 4, 2, 16, 8


def _pixart_state(seed: int = 0, null_rows: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    c = HIDDEN
    state = {
        "x_embedder.proj.weight": rand(c, 4, 2, 2), "x_embedder.proj.bias": rand(c),
        "t_embedder.mlp.0.weight": rand(c, 256), "t_embedder.mlp.0.bias": rand(c),
        "t_embedder.mlp.2.weight": rand(c, c), "t_embedder.mlp.2.bias": rand(c),
        "t_block.1.weight": rand(6 * c, c), "t_block.1.bias": rand(6 * c),
        "y_embedder.y_proj.fc1.weight": rand(c, CAPTION), "y_embedder.y_proj.fc1.bias": rand(c),
        "y_embedder.y_proj.fc2.weight": rand(c, c), "y_embedder.y_proj.fc2.bias": rand(c),
        "y_embedder.y_embedding": rand(null_rows, CAPTION), "pos_embed": rand(1, 16, c),
        "final_layer.scale_shift_table": rand(2, c), "final_layer.linear.weight": rand(4 * 8, c),
        "final_layer.linear.bias": rand(4 * 8),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}."
        state.update({
            p + "scale_shift_table": rand(6, c),
            p + "attn.qkv.weight": rand(3 * c, c), p + "attn.qkv.bias": rand(3 * c),
            p + "attn.proj.weight": rand(c, c), p + "attn.proj.bias": rand(c),
            p + "cross_attn.q_linear.weight": rand(c, c), p + "cross_attn.q_linear.bias": rand(c),
            p + "cross_attn.kv_linear.weight": rand(2 * c, c), p + "cross_attn.kv_linear.bias": rand(2 * c),
            p + "cross_attn.proj.weight": rand(c, c), p + "cross_attn.proj.bias": rand(c),
            p + "mlp.fc1.weight": rand(4 * c, c), p + "mlp.fc1.bias": rand(4 * c),
            p + "mlp.fc2.weight": rand(c, 4 * c), p + "mlp.fc2.bias": rand(c),
        })
    return state


def _attention(q, k, v, mask=None):
    """Plain softmax attention on [B, L, C] with HEADS heads."""
    b, lq, c = q.shape
    d = c // HEADS
    q, k, v = (t.reshape(b, t.shape[1], HEADS, d).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, c)


def _pixart_forward(s, image, t, y, mask, scale, base_size):
    linear = lambda x, name: F.linear(x, s[name + ".weight"], s[name + ".bias"])
    ln = lambda x: F.layer_norm(x, (HIDDEN,), eps=1e-6)
    b, _, _h, _w = image.shape
    x = F.conv2d(image, s["x_embedder.proj.weight"], s["x_embedder.proj.bias"], stride=2)
    gh, gw = x.shape[2:]
    x = x.flatten(2).transpose(1, 2) + spatial_sincos_pos_embed(HIDDEN, gh, gw, scale, base_size)
    temb = linear(F.silu(linear(sinusoidal_embedding(t), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    t0 = linear(F.silu(temb), "t_block.1").view(b, 6, HIDDEN)
    cond = linear(F.gelu(linear(y[:, 0], "y_embedder.y_proj.fc1"), approximate="tanh"), "y_embedder.y_proj.fc2")
    for i in range(DEPTH):
        p = f"blocks.{i}."
        shift, sc, gate, shift2, sc2, gate2 = (s[p + "scale_shift_table"][None] + t0).unbind(1)
        h_ = ln(x) * (1 + sc[:, None]) + shift[:, None]
        q, k, v = linear(h_, p + "attn.qkv").chunk(3, dim=-1)
        x = x + gate[:, None] * linear(_attention(q, k, v), p + "attn.proj")
        kv = linear(cond, p + "cross_attn.kv_linear").view(b, -1, 2, HIDDEN)
        cross = _attention(linear(x, p + "cross_attn.q_linear"), kv[:, :, 0], kv[:, :, 1], mask)
        x = x + linear(cross, p + "cross_attn.proj")
        h_ = ln(x) * (1 + sc2[:, None]) + shift2[:, None]
        x = x + gate2[:, None] * linear(F.gelu(linear(h_, p + "mlp.fc1"), approximate="tanh"), p + "mlp.fc2")
    shift, sc = (s["final_layer.scale_shift_table"][None] + temb[:, None]).unbind(1)
    out = linear(ln(x) * (1 + sc[:, None]) + shift[:, None], "final_layer.linear")
    return out.view(b, gh, gw, 2, 2, 8).permute(0, 5, 1, 3, 2, 4).reshape(b, 8, gh * 2, gw * 2)


def test_video_model_from_pixart_reproduces_the_image_model_per_frame():
    pixart = _pixart_state()
    assert looks_like_pixart(pixart)
    config = STDiT2Config(hidden_size=HIDDEN, depth=DEPTH, num_heads=HEADS, caption_channels=CAPTION,
                          model_max_length=TOKENS, input_sq_size=64, qk_norm=False, class_dropout_prob=0.0)
    model = STDiT2(config)
    model.load_state_dict(stdit2_state_from_pixart(pixart, config), strict=True)
    model.eval()
    torch.testing.assert_close(model.y_embedder.y_embedding[5:], pixart["y_embedder.y_embedding"][-1:].expand(3, -1))

    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, 4, 3, 8, 8, generator=g)  # 3 different frames
    t = torch.tensor([30.0, 700.0])
    y = torch.randn(2, 1, TOKENS, CAPTION, generator=g)
    mask = torch.ones(2, TOKENS, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        out = model(video, t, y, mask=mask, height=64.0, width=64.0, fps=24.0)
        for frame in range(3):
            expected = _pixart_forward(pixart, video[:, :, frame], t, y, mask, scale=1.0, base_size=4)
            torch.testing.assert_close(out[:, :, frame], expected, atol=2e-5, rtol=2e-5)
    # The temporal branch is in place but silent: changing another frame changes nothing.
    changed = video.clone()
    changed[:, :, 2] += 1
    with torch.no_grad():
        torch.testing.assert_close(model(changed, t, y, mask=mask, height=64.0, width=64.0)[:, :, 0], out[:, :, 0])


def test_pixart_tensors_that_do_not_fit_are_named():
    config = STDiT2Config(hidden_size=HIDDEN, depth=DEPTH, num_heads=HEADS, caption_channels=CAPTION,
                          model_max_length=TOKENS, input_sq_size=64, qk_norm=False)
    bad = _pixart_state()
    bad["blocks.0.attn.proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="blocks.0.attn.proj.weight"):
        stdit2_state_from_pixart(bad, config)
    extra = {**_pixart_state(), "ar_embedder.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match="cannot place"):
        stdit2_state_from_pixart(extra, config)
