"""The one attention function every STDiT-2 layer calls.

It picks a kernel so the model never has to: flash-attn when it is installed, the
tensors are on CUDA in half precision and the caller allows it; otherwise PyTorch's
`scaled_dot_product_attention`, which never materialises the attention matrix in
Python and dispatches to fused kernels itself (flash / memory-efficient on CUDA,
a flash-style kernel on CPU, which runs in fp32 whatever the inputs' precision).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

import torch
import torch.nn.functional as F

AttentionBackend = Literal["auto", "sdpa", "flash"]
HALF_DTYPES = (torch.float16, torch.bfloat16)
# Up to this many keys, half-precision attention on CPU multiplies out the scores.
CPU_MATMUL_MAX_KEYS = 64


@functools.cache
def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _flash_usable(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in HALF_DTYPES and flash_attn_installed()


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_mask: torch.Tensor | None = None,
    backend: AttentionBackend = "auto",
) -> torch.Tensor:
    """Softmax attention. q `[B, H, Lq, D]`, k/v `[B, H, Lk, D]` -> `[B, H, Lq, D]`.

    `kv_mask` `[B, Lk]` bool (True = attend) restricts each sample to its own keys, so
    padding in one sample never changes another's output. Every row must keep at least
    one key (the caller checks; an all-masked row has no defined softmax).
    """
    if backend == "flash" and not _flash_usable(q):
        raise RuntimeError(
            "attention backend 'flash' needs the flash-attn package, CUDA tensors and "
            f"fp16/bf16 (got device={q.device.type}, dtype={q.dtype}, "
            f"flash_attn installed={flash_attn_installed()})"
        )
    if backend != "sdpa" and _flash_usable(q):
        return _flash_attention(q, k, v, kv_mask)
    attn_mask = None if kv_mask is None else kv_mask[:, None, None, :]
    if q.device.type == "cpu" and (q.dtype in HALF_DTYPES or torch.is_autocast_enabled("cpu")):
        # PyTorch's CPU kernel is slower in bf16/fp16 than in fp32, its backward several
        # times so at short sequences (temporal and cross-attention). Few keys: two half-
        # precision matmuls around an fp32 softmax, the score matrix no larger than q.
        # Many keys: the fused kernel in fp32 (bench/model_step.py).
        if k.shape[-2] <= CPU_MATMUL_MAX_KEYS:
            return _matmul_attention(q, k, v, attn_mask)
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the matmuls in the inputs' (or autocast's) precision
    and the softmax in fp32."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return (probs.to(v.dtype) @ v).to(q.dtype)  # under autocast the matmul runs in its dtype


def _flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_mask: torch.Tensor | None
) -> torch.Tensor:
    flash_attn = importlib.import_module("flash_attn")  # optional: imported only where it can run

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # flash-attn wants [B, L, H, D]
    if kv_mask is None:
        return flash_attn.flash_attn_func(q, k, v).transpose(1, 2)
    # Ragged keys: pack the real keys of all samples and give their offsets.
    batch, q_len = q.shape[:2]
    kv_lens = kv_mask.sum(dim=1, dtype=torch.int32)
    cu_k = F.pad(kv_lens.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32, device=q.device)
    out = flash_attn.flash_attn_varlen_func(
        q.flatten(0, 1),
        k[kv_mask],
        v[kv_mask],
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=q_len,
        max_seqlen_k=int(kv_lens.max()),
    )
    return out.unflatten(0, (batch, q_len)).transpose(1, 2)
