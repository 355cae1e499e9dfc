"""STDiT-2: the spatial-temporal diffusion transformer of Open-Sora 1.1.

Each block runs, on tokens `[B, T, S, C]` (S = patches per frame): spatial
self-attention within each frame, temporal self-attention (with RoPE) across the
frames of each spatial position, cross-attention to the caption, and an MLP. The
spatial, temporal and MLP branches are adaLN-single modulated by the timestep plus
micro-conditions (size, aspect ratio, frame count, fps). Conditioning frames
(`x_mask` False) are modulated as if at timestep 0, so the same model does
text-to-video, image-to-video, extension and editing.

Parameter names and shapes equal the published STDiT2-XL/2 checkpoint, which loads
with `strict=True` (`checkpoint_io.load_stdit2`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from opensora_core.models.attention import AttentionBackend
from opensora_core.models.layers import (
    CaptionEmbedder,
    CrossAttention,
    FinalLayer,
    Mlp,
    PatchEmbed3D,
    SelfAttention,
    SizeEmbedder,
    TimestepEmbedder,
    drop_path,
    modulate,
    select_per_frame,
    sinusoidal_embedding,
    spatial_sincos_pos_embed,
)
from opensora_core.models.rope import RotaryEmbedding

# Pixels per latent cell of the SD VAE; used only to default the size micro-conditions.
VAE_DOWNSAMPLE = 8
IMAGE_FPS = 120  # Open-Sora conditions images with fps 120.
DEFAULT_VIDEO_FPS = 24


MicroConditionConvention = Literal["consistent", "opensora-1.1"]


class STDiT2Config(BaseModel):
    """Flat, typed STDiT-2 hyper-parameters. Field names are Open-Sora's, so its model
    configs port as they are; the defaults are the published STDiT2-XL/2, except
    `micro_condition_convention`, whose default keeps configs written before the field
    (our from-scratch presets and exports) as they were trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_sq_size: int = Field(512, gt=0, description="Reference side (pixels) for position-embedding scale.")
    in_channels: int = Field(4, gt=0)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = Field(1152, gt=0)
    depth: int = Field(28, gt=0)
    num_heads: int = Field(16, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    class_dropout_prob: float = Field(0.1, ge=0, le=1)
    pred_sigma: bool = True
    drop_path: float = Field(0.0, ge=0, lt=1)
    caption_channels: int = Field(4096, gt=0)
    model_max_length: int = Field(200, gt=0)
    qk_norm: bool = True
    qk_norm_legacy: bool = Field(True, description="RoPE before QK-norm, as the published weights expect.")
    enable_flash_attn: bool = Field(True, description="Use flash-attn where installed and on CUDA.")
    temporal_pos_embed: bool = Field(
        False, description="Add a parameter-free sin-cos embedding of the frame index to every token (as STDiT 1.0 "
                           "did); the published STDiT-2 has none: RoPE gives only relative frame positions.")
    micro_condition_convention: MicroConditionConvention = Field(
        "consistent", description="How training feeds the aspect-ratio and fps micro-conditions. 'opensora-1.1', "
        "as the published weights were trained: ar = width/height and the clip's source fps (images 120). "
        "'consistent' (our from-scratch models): ar = height/width and the fps of the frames the model sees "
        "(source fps / frame_interval). Sampling passes ar = height/width under both, as Open-Sora's inference "
        "does, and the fps each was trained on: the requested fps, or fps / frame_interval.")

    @model_validator(mode="after")
    def _check_shapes(self) -> STDiT2Config:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"head dim {self.hidden_size // self.num_heads} must be even for RoPE")
        # csize (2 scalars) and ar (1 scalar) embed to C/3 each and must add up to C.
        if self.hidden_size % 3:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 3 (size embedders)")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos positions)")
        if any(p <= 0 for p in self.patch_size):
            raise ValueError(f"patch_size {self.patch_size} must be positive")
        return self

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_opensora(cls, model_cfg: dict[str, Any]) -> STDiT2Config:
        """Build from an Open-Sora STDiT2 config: its `model = dict(type=..., ...)` or the
        `config.json` that Hugging Face's `save_pretrained` writes beside published
        weights. Keys missing take Open-Sora's defaults, as its loaders do. Keys that
        would change the model in a way not reproduced here raise, naming the key."""
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
        return cls(**fields)


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


# 1. The block


class STDiT2Block(nn.Module):
    def __init__(self, config: STDiT2Config, drop_path_prob: float):
        super().__init__()
        hidden = config.hidden_size
        backend: AttentionBackend = "auto" if config.enable_flash_attn else "sdpa"
        self.drop_path_prob = drop_path_prob
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, config.num_heads, config.qk_norm, config.qk_norm_legacy, backend)
        self.cross_attn = CrossAttention(hidden, config.num_heads, backend)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * config.mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden) / hidden**0.5)
        self.norm_temp = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn_temp = SelfAttention(hidden, config.num_heads, config.qk_norm, config.qk_norm_legacy, backend)
        self.scale_shift_table_temporal = nn.Parameter(torch.randn(3, hidden) / hidden**0.5)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor | None,
        t_spatial: torch.Tensor,
        t_temporal: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        x_mask: torch.Tensor | None = None,
        t0_spatial: torch.Tensor | None = None,
        t0_temporal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `[B, T, S, C]`; t_spatial `[B, 6C]`, t_temporal `[B, 3C]` (t0_* for conditioning frames)."""
        batch, frames, patches, hidden = x.shape
        mods = select_per_frame(
            self.scale_shift_table[None] + t_spatial.view(batch, 6, hidden),
            None if t0_spatial is None else self.scale_shift_table[None] + t0_spatial.view(batch, 6, hidden),
            x_mask,
        ).unsqueeze(3)  # [B, T|1, 6, 1, C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(2)
        mods_t = select_per_frame(
            self.scale_shift_table_temporal[None] + t_temporal.view(batch, 3, hidden),
            None if t0_temporal is None else self.scale_shift_table_temporal[None] + t0_temporal.view(batch, 3, hidden),
            x_mask,
        ).unsqueeze(3)
        shift_tmp, scale_tmp, gate_tmp = mods_t.unbind(2)

        # 1. Spatial attention within each frame
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        h = self.attn(h.reshape(batch * frames, patches, hidden)).view(batch, frames, patches, hidden)
        x = x + drop_path(gate_msa * h, self.drop_path_prob, self.training)

        # 2. Temporal attention across frames at each spatial position
        h = modulate(self.norm_temp(x), shift_tmp, scale_tmp)
        h = h.transpose(1, 2).reshape(batch * patches, frames, hidden)
        h = self.attn_temp(h, rope).view(batch, patches, frames, hidden).transpose(1, 2)
        x = x + drop_path(gate_tmp * h, self.drop_path_prob, self.training)

        # 3. Cross-attention to the caption (no norm, no gate)
        h = self.cross_attn(x.reshape(batch, frames * patches, hidden), cond, cond_mask)
        x = x + h.view(batch, frames, patches, hidden)

        # 4. MLP
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + drop_path(gate_mlp * h, self.drop_path_prob, self.training)


# 2. The model


class STDiT2(nn.Module):
    def __init__(self, config: STDiT2Config | None = None, **overrides: Any):
        super().__init__()
        self.config = STDiT2Config(**{**(config or STDiT2Config()).model_dump(), **overrides})
        c = self.config
        hidden = c.hidden_size
        self.gradient_checkpointing = False

        self.x_embedder = PatchEmbed3D(c.patch_size, c.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.t_block_temp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        self.y_embedder = CaptionEmbedder(c.caption_channels, hidden, c.class_dropout_prob, c.model_max_length)
        self.rope = RotaryEmbedding(c.head_dim)
        drop_rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(STDiT2Block(c, rate) for rate in drop_rates)
        self.final_layer = FinalLayer(hidden, math.prod(c.patch_size), c.out_channels)
        self.csize_embedder = SizeEmbedder(hidden // 3)
        self.ar_embedder = SizeEmbedder(hidden // 3)
        self.fl_embedder = SizeEmbedder(hidden)
        self.fps_embedder = SizeEmbedder(hidden)
        self.initialize_weights()

    # -- construction -------------------------------------------------------

    def initialize_weights(self) -> None:
        """PixArt-style init: xavier linears, small-normal timestep/caption MLPs, and
        zero output projections so each new branch starts as the identity."""

        def xavier(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(xavier)
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for embedder in (self.t_embedder, self.csize_embedder, self.ar_embedder, self.fl_embedder, self.fps_embedder):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.normal_(self.t_block_temp[1].weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
            nn.init.zeros_(block.attn_temp.proj.weight)
            nn.init.zeros_(block.attn_temp.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.gradient_checkpointing = enabled

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def null_caption(self, batch: int) -> torch.Tensor:
        """The learned null caption `[batch, 1, N, caption_channels]` for classifier-free guidance."""
        return self.y_embedder.y_embedding[None, None].expand(batch, 1, -1, -1)

    # -- forward ------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        num_frames: torch.Tensor | float | None = None,
        height: torch.Tensor | float | None = None,
        width: torch.Tensor | float | None = None,
        ar: torch.Tensor | float | None = None,
        fps: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Predict noise (and variance) for latents.

        x `[B, C, T, H, W]`; timestep `[B]`; y `[B, 1, N, caption_channels]` (or
        `[B, N, caption_channels]`); mask `[B, N]` with 1 for real tokens (a mask with
        fewer rows than y, as Open-Sora passes for classifier-free guidance, is
        repeated); x_mask `[B, T]` bool, True for frames being generated; micro-
        conditions `[B]` or scalars (defaults: pixel size from the latent size,
        aspect ratio height/width, T frames, 24 fps or 120 for images).
        Returns `[B, out_channels, T, H, W]` in fp32.
        """
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be [B, {c.in_channels}, T, H, W], got {tuple(x.shape)}")
        batch, _, frames_in, height_in, width_in = x.shape
        dtype = self.dtype
        x = x.to(dtype)
        y = _caption_4d(y, batch, c).to(dtype)
        cond_mask = _caption_mask(mask, y)
        if x_mask is not None:
            if x_mask.shape != (batch, frames_in):
                raise ValueError(f"x_mask must be [B, T] = [{batch}, {frames_in}], got {tuple(x_mask.shape)}")
            x_mask = x_mask.to(device=x.device, dtype=torch.bool)
            if c.patch_size[0] != 1:
                raise ValueError("x_mask needs a temporal patch size of 1")

        # 1. Micro-conditions: size, aspect ratio, frame count, fps. Like the timestep,
        # they enter in the model's dtype (the published bf16 model saw 854 as 856).
        # One bucket per batch: the first sample's resolution sets the position scale.
        scale = math.sqrt(
            _first_value(height, height_in * VAE_DOWNSAMPLE, dtype) * _first_value(width, width_in * VAE_DOWNSAMPLE, dtype)
        ) / c.input_sq_size
        height = _micro_condition(height, height_in * VAE_DOWNSAMPLE, dtype, batch, x.device)
        width = _micro_condition(width, width_in * VAE_DOWNSAMPLE, dtype, batch, x.device)
        ar = _micro_condition(ar, height / width, dtype, batch, x.device)
        num_frames = _micro_condition(num_frames, frames_in, dtype, batch, x.device)
        fps = _micro_condition(fps, IMAGE_FPS if frames_in == 1 else DEFAULT_VIDEO_FPS, dtype, batch, x.device)
        data_info = torch.cat([self.csize_embedder(torch.stack([height, width], 1)), self.ar_embedder(ar[:, None])], 1)
        fl = self.fl_embedder(num_frames[:, None]) + self.fps_embedder(fps[:, None])

        # 2. Patchify and add 2-D positions (scaled by the sample's resolution)
        frames, grid_h, grid_w = (math.ceil(n / p) for n, p in zip((frames_in, height_in, width_in), c.patch_size))
        patches = grid_h * grid_w
        pos = spatial_sincos_pos_embed(c.hidden_size, grid_h, grid_w, scale, round(math.sqrt(patches)), x.device, dtype)
        x = self.x_embedder(x).view(batch, frames, patches, c.hidden_size) + pos
        if c.temporal_pos_embed:
            x = x + sinusoidal_embedding(torch.arange(frames, device=x.device), c.hidden_size).to(dtype)[None, :, None]

        # 3. Timestep modulation (and timestep 0 for conditioning frames)
        timestep = _micro_condition(timestep, None, dtype, batch, x.device)
        t = self.t_embedder(timestep)
        t_spatial, t_temporal = self.t_block(t + data_info), self.t_block_temp(t + fl)
        t0 = t0_spatial = t0_temporal = None
        if x_mask is not None:
            t0 = self.t_embedder(torch.zeros_like(t[:, 0]))
            t0_spatial, t0_temporal = self.t_block(t0 + data_info), self.t_block_temp(t0 + fl)

        # 4. Caption tokens and RoPE table
        cond = self.y_embedder(y, self.training).squeeze(1)  # [B, N, C]
        rope = self.rope.angles(frames, x.device)

        # 5. Blocks
        for block in self.blocks:
            args = (x, cond, cond_mask, t_spatial, t_temporal, rope, x_mask, t0_spatial, t0_temporal)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)

        # 6. Final layer: conditioning frames use t0 + data_info (as published)
        x = self.final_layer(x, t, None if t0 is None else t0 + data_info, x_mask)

        # 7. Unpatchify and crop the padding
        return self._unpatchify(x, frames, grid_h, grid_w)[:, :, :frames_in, :height_in, :width_in].float()

    def _unpatchify(self, x: torch.Tensor, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        out = self.config.out_channels
        x = x.reshape(x.shape[0], frames, grid_h, grid_w, pt, ph, pw, out)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], out, frames * pt, grid_h * ph, grid_w * pw)


def infer_config(state_dict: dict[str, torch.Tensor], **overrides: Any) -> STDiT2Config:
    """Recover STDiT-2 hyper-parameters from a state dict's tensor shapes. `input_sq_size`
    cannot be read off shapes; it defaults to the published 512 unless overridden. A
    state dict without a config is Open-Sora's, so its micro-condition convention too."""
    try:
        patch_weight = state_dict["x_embedder.proj.weight"]
        hidden, in_channels, *patch = patch_weight.shape
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        qk_norm = "blocks.0.attn.q_norm.weight" in state_dict
        head_dim = 2 * state_dict["rope.freqs"].shape[0]
        caption_tokens, caption_channels = state_dict["y_embedder.y_embedding"].shape
        out_channels = state_dict["final_layer.linear.weight"].shape[0] // math.prod(patch)
        mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise ValueError(f"not an STDiT-2 state dict: cannot read {err} from its tensors") from err
    fields: dict[str, Any] = {
        "in_channels": in_channels,
        "patch_size": tuple(patch),
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": hidden // head_dim,
        "mlp_ratio": mlp_hidden / hidden,
        "pred_sigma": out_channels == 2 * in_channels,
        "caption_channels": caption_channels,
        "model_max_length": caption_tokens,
        "qk_norm": qk_norm,
        "micro_condition_convention": "opensora-1.1",
    }
    fields.update(overrides)
    return STDiT2Config(**fields)


def _first_value(value: Any, default: float, dtype: torch.dtype) -> float:
    """The first value of a condition, rounded to `dtype`, read without a device op
    when it is a Python number (so the meta-device cost model works)."""
    if isinstance(value, torch.Tensor):
        return float(value.reshape(-1)[0].to(dtype))
    return float(torch.tensor(float(default if value is None else value)).to(dtype))


def _micro_condition(value: Any, default: Any, dtype: torch.dtype, batch: int, device: torch.device) -> torch.Tensor:
    """A micro-condition (scalar, `[n]` or `[B]`) as `[B]`, rounded to the model dtype
    and tiled when n divides B (Open-Sora doubles the batch for classifier-free
    guidance but not the conditions)."""
    value = default if value is None else value
    values = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1).to(dtype).float()
    if batch % values.numel():
        raise ValueError(f"a condition has {values.numel()} values for a batch of {batch}")
    return values.repeat(batch // values.numel())


def _caption_4d(y: torch.Tensor, batch: int, config: STDiT2Config) -> torch.Tensor:
    if y.ndim == 3:
        y = y.unsqueeze(1)
    if y.ndim != 4 or y.shape[0] != batch or y.shape[1] != 1 or y.shape[3] != config.caption_channels:
        raise ValueError(
            f"y must be [B={batch}, 1, N, caption_channels={config.caption_channels}], got {tuple(y.shape)}"
        )
    return y


def _caption_mask(mask: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    batch, tokens = y.shape[0], y.shape[2]
    mask = mask.reshape(mask.shape[0], -1).to(device=y.device)
    if mask.shape[1] != tokens or batch % mask.shape[0]:
        raise ValueError(f"mask must be [B={batch}, N={tokens}], got {tuple(mask.shape)}")
    mask = mask.bool().repeat(batch // mask.shape[0], 1)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every caption needs at least one real token (a mask row is all zeros)")
    return mask


def config_to_json(config: STDiT2Config) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)
