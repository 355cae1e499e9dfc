"""The attention function: on CPU, half-precision inputs (or autocast) attend in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opensora_core.models.attention import attention


def _qkv(dtype: torch.dtype, lq: int = 16, lk: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(3, 2, n, 8, generator=g).to(dtype) for n in (lq, lk, lk))


def test_bf16_inputs_on_cpu_attend_in_fp32_and_return_bf16():
    q, k, v = _qkv(torch.bfloat16)
    out = attention(q, k, v, backend="sdpa")
    assert out.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(torch.bfloat16)
    assert torch.equal(out, reference)


def test_under_cpu_autocast_attention_stays_fp32_with_gradients_and_a_mask():
    q, k, v = (t.requires_grad_() for t in _qkv(torch.float32, lq=8, lk=12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 6:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, kv_mask=mask, backend="sdpa")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :]))
    out.sum().backward()
    assert k.grad[0, :, 6:].abs().max() == 0 and k.grad[0, :, :6].abs().max() > 0  # masked keys get nothing
