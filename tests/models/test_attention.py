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


def _backends(model) -> set[str]:
    from opensora_core.models.layers import CrossAttention, SelfAttention

    return {m.backend for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))}


def test_the_profiles_attention_backend_overrides_the_presets_unless_auto():
    from opensora_core.models import build_stdit2

    model = build_stdit2("stdit2-tiny", depth=1)
    preset = _backends(model)
    model.use_attention_backend("auto")  # the preset's choice stays
    assert _backends(model) == preset
    model.use_attention_backend("sdpa")
    assert _backends(model) == {"sdpa"}
    off = build_stdit2("stdit2-tiny", depth=1, enable_flash_attn=False)
    off.use_attention_backend("flash")
    assert _backends(off) == {"flash"}


def test_sampling_refuses_flash_attention_off_cuda(tmp_path):
    import pytest
    import yaml

    from opensora_core.config import find_config, load_sampling_profile
    from opensora_core.infer.sample import load_generation_stack

    data = yaml.safe_load(find_config("profiles", "embedded").read_text())
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**data, "attention_backend": "sdpa"}))
    assert load_sampling_profile(path).attention_backend == "sdpa"
    path.write_text(yaml.safe_dump({k: data[k] for k in ("name", "vae", "text_encoder")}))
    assert load_sampling_profile(path).attention_backend == "auto"  # a sampling-only profile
    path.write_text(yaml.safe_dump({k: data[k] for k in ("name", "vae", "text_encoder")}
                                   | {"attention_backend": "flash"}))
    with pytest.raises(ValueError, match="attention_backend flash, which needs a CUDA device"):
        load_generation_stack(preset="stdit2-tiny", profile=str(path), device="cpu")
