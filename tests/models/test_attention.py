"""The attention function on CPU in half precision (or autocast): many keys attend in
fp32 through the fused kernel; few keys multiply out the scores in half precision with
an fp32 softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opensora_core.models.attention import CPU_MATMUL_MAX_KEYS, attention


def _qkv(dtype: torch.dtype, lq: int = 16, lk: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(3, 2, n, 8, generator=g).to(dtype) for n in (lq, lk, lk))


def test_bf16_inputs_with_many_keys_attend_in_fp32_and_return_bf16():
    q, k, v = _qkv(torch.bfloat16, lk=CPU_MATMUL_MAX_KEYS + 1)
    out = attention(q, k, v, backend="sdpa")
    assert out.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(torch.bfloat16)
    assert torch.equal(out, reference)


def test_bf16_inputs_with_few_keys_match_fp32_within_bf16_rounding():
    q, k, v = _qkv(torch.bfloat16, lk=CPU_MATMUL_MAX_KEYS)
    out = attention(q, k, v, backend="sdpa")
    assert out.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


def test_under_cpu_autocast_attention_keeps_the_input_dtype_with_gradients_and_a_mask():
    for lk in (12, CPU_MATMUL_MAX_KEYS + 4):  # both CPU paths
        q, k, v = (t.requires_grad_() for t in _qkv(torch.float32, lq=8, lk=lk))
        mask = torch.ones(3, lk, dtype=torch.bool)
        mask[0, 6:] = False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attention(q, k, v, kv_mask=mask, backend="sdpa")
        assert out.dtype == torch.float32
        reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        torch.testing.assert_close(out, reference, atol=2e-2, rtol=2e-2)
        out.sum().backward()
        assert k.grad[0, :, 6:].abs().max() == 0 and k.grad[0, :, :6].abs().max() > 0  # masked keys get nothing
