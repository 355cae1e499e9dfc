"""Starting STDiT-2 from a PixArt-alpha image checkpoint, as Open-Sora 1.1's stage 0 did.

What maps over: the patch embedding (the 2-D kernel becomes a one-frame 3-D kernel), the
timestep and caption embedders, `t_block`, every block's spatial attention,
cross-attention, MLP and modulation table, the final layer, and the size / aspect-ratio
embedders of the multi-scale ("MS") checkpoints. PixArt's fixed `pos_embed` is dropped
(STDiT-2 computes the same sin-cos table at any size). The caption null embedding is
cut or extended (repeating its last row) to the model's caption length.

What is new starts so that the video model reproduces the image model frame by frame:
the temporal attention's output projection and the temporal gates are zero, QK-norm
weights are one, and without PixArt size embedders their output layers are zero (no
micro-condition enters `t_block`). Two differences cannot be zeroed away and are
documented rather than hidden: QK-norm itself (off in PixArt) renormalises q and k, and
for MS checkpoints PixArt's final layer saw the size condition while STDiT-2's sees the
raw timestep. With `qk_norm=False` and a non-MS checkpoint the first forward equals
PixArt's on every frame (tested).
"""

from __future__ import annotations

import torch

from opensora_core.models.stdit2 import STDiT2, STDiT2Config

_DROPPED = {"pos_embed"}


def looks_like_pixart(state: dict[str, torch.Tensor]) -> bool:
    weight = state.get("x_embedder.proj.weight")
    return weight is not None and weight.ndim == 4


def stdit2_state_from_pixart(pixart: dict[str, torch.Tensor], config: STDiT2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full STDiT-2 state dict for `config`: PixArt's weights where they exist, the
    new temporal parts initialised as described in the module docstring."""
    torch.manual_seed(seed)
    model = STDiT2(config)
    state = model.state_dict()
    hidden = config.hidden_size
    unknown = sorted(k for k in pixart if k not in state and k not in _DROPPED)
    if unknown:
        raise ValueError(f"PixArt checkpoint has tensors STDiT-2 cannot place: {unknown[:8]}")
    for name, tensor in pixart.items():
        if name in _DROPPED:
            continue
        if name == "x_embedder.proj.weight":
            tensor = tensor.unsqueeze(2)
        elif name == "y_embedder.y_embedding":
            tensor = _fit_rows(tensor, config.model_max_length)
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise ValueError(f"{name}: PixArt {tuple(tensor.shape)} does not fit STDiT-2 {tuple(state[name].shape)}")
        state[name] = tensor.to(state[name].dtype)

    for index in range(config.depth):
        prefix = f"blocks.{index}."
        state[prefix + "attn_temp.proj.weight"].zero_()
        state[prefix + "attn_temp.proj.bias"].zero_()
        state[prefix + "scale_shift_table_temporal"][2].zero_()  # gate row
        for norm in ("attn.q_norm", "attn.k_norm", "attn_temp.q_norm", "attn_temp.k_norm"):
            if prefix + norm + ".weight" in state:
                state[prefix + norm + ".weight"].fill_(1.0)
    state["t_block_temp.1.weight"][2 * hidden :].zero_()  # gate chunk
    state["t_block_temp.1.bias"][2 * hidden :].zero_()
    if "csize_embedder.mlp.2.weight" not in pixart:
        for name in ("csize_embedder", "ar_embedder"):
            state[f"{name}.mlp.2.weight"].zero_()
            state[f"{name}.mlp.2.bias"].zero_()
    return state


def _fit_rows(table: torch.Tensor, rows: int) -> torch.Tensor:
    if table.shape[0] >= rows:
        return table[:rows]
    return torch.cat([table, table[-1:].expand(rows - table.shape[0], -1)])
