"""Open-Sora's own STDiT2 config files (its `model = dict(type=...)` and the `config.json`
of Hugging Face's `save_pretrained`) read as our `STDiT2Config` fields: Open-Sora's
defaults, its renamed keys, keys that never change the model, and keys accepted only
with the values whose behaviour the model reproduces."""

from __future__ import annotations

import json
from typing import Any

# Open-Sora's own STDiT2Config defaults where they differ from ours (ours are the
# published XL/2). `save_pretrained` writes every field, so they matter only for
# hand-written files, which Open-Sora would read with these values. enable_flash_attn
# is a field of ours too: a kernel choice, the same attention either way.
_OPENSORA_DEFAULTS: dict[str, Any] = {
    "input_sq_size": 32, "model_max_length": 120, "qk_norm": False, "qk_norm_legacy": False,
    "enable_flash_attn": False,
    # Not an Open-Sora field: its weights were trained with its own convention.
    "micro_condition_convention": "opensora-1.1",
}
_OPENSORA_RENAMED = {"enable_flashattn": "enable_flash_attn"}  # the key's spelling before 1.1
# Keys that never change what the model computes from its weights.
_OPENSORA_IGNORED = {
    "from_pretrained",  # Open-Sora's weight path; here the checkpoint is the path being loaded
    "transformers_version",  # which library wrote config.json
    "_name_or_path",  # where transformers last read the config from
    "dtype",  # the stored tensors' dtype (older transformers: torch_dtype): the
    "torch_dtype",  # safetensors file records it per tensor and loading keeps it
    "enable_layernorm_kernel",  # apex's fused LayerNorm: the same LayerNorm, another kernel
}


def _names_stdit2(value: Any) -> bool:
    names = value if isinstance(value, list) else [value]
    return bool(names) and all(isinstance(n, str) and n.startswith("STDiT2") for n in names)


# Keys accepted only with the values whose behaviour this model reproduces:
# key -> (accepts(value), what a refused value means). Refused, never dropped.
_OPENSORA_CHECKED: dict[str, tuple[Any, str]] = {
    "type": (_names_stdit2, "not an STDiT2 model; this loader builds STDiT2 only"),
    "model_type": (_names_stdit2, "not an STDiT2 model; this loader builds STDiT2 only"),
    "architectures": (_names_stdit2, "not an STDiT2 model; this loader builds STDiT2 only"),
    "input_size": (
        lambda v: v is None or (isinstance(v, (list, tuple)) and all(n is None for n in v)),
        ("a fixed input size is not supported: STDiT2 sizes positions and micro-conditions per sample "
         "(expected [null, null, null])"),
    ),
    "freeze": (
        lambda v: v is None,
        ("freezing parameters for training (Open-Sora: 'not_temporal' trains only temporal attention, "
         "'text' freezes cross-attention) is not implemented here; set it to null"),
    ),
    "enable_sequence_parallelism": (
        lambda v: v is None or v is False,
        ("sequence parallelism (tokens split across GPUs) is not implemented here; set it to false "
         "(the weights are the same)"),
    ),
    # Open-Sora's STDiT2 keeps this STDiT 1.0 flag but adds no temporal position embedding
    # whatever its value (RoPE gives frame positions): our temporal_pos_embed false.
    "no_temporal_pos_emb": (lambda v: isinstance(v, bool), "expected true or false"),
}


def fields_from_opensora(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """`STDiT2Config` fields of an Open-Sora config; keys missing take Open-Sora's
    defaults. Raises ValueError naming every key whose value is not reproduced here."""
    fields: dict[str, Any] = dict(_OPENSORA_DEFAULTS)
    problems = []
    for key, value in model_cfg.items():
        key = _OPENSORA_RENAMED.get(key, key)
        if key in _OPENSORA_CHECKED:
            accepted, why = _OPENSORA_CHECKED[key]
            if not accepted(value):
                problems.append(f"{key} {json.dumps(value)}: {why}")
        elif key not in _OPENSORA_IGNORED:
            fields[key] = value
    if problems:
        raise ValueError("; ".join(problems))
    return fields
