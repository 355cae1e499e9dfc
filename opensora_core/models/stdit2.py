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
from opensora_core.models.stdit2_inputs import (
    caption_4d,
    caption_mask,
    first_value,
    micro_condition,
)
from opensora_core.models.stdit2_opensora import fields_from_opensora

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
        return cls(**fields_from_opensora(model_cfg))



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

    def use_attention_backend(self, backend: AttentionBackend) -> None:
        """The runtime profile's `attention_backend`: "auto" keeps the config's choice
        (flash-attn where usable, unless `enable_flash_attn` is false); "sdpa" or "flash"
        sets every attention layer to it ("flash" then fails where flash-attn cannot run)."""
        if backend == "auto":
            return
        for module in self.modules():
            if isinstance(module, (SelfAttention, CrossAttention)):
                module.backend = backend

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.gradient_checkpointing = enabled

    def compile_blocks(self) -> None:
        """`torch.compile` each block in place: parameter names stay unchanged, so
        checkpoints stay interchangeable, and since every block runs the same code on the
        same shapes one compilation serves them all."""
        for block in self.blocks:
            block.compile()

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
        drop_caption: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict noise (and variance) for latents.

        x `[B, C, T, H, W]`; timestep `[B]`; y `[B, 1, N, caption_channels]` (or
        `[B, N, caption_channels]`); mask `[B, N]` with 1 for real tokens (a mask with
        fewer rows than y, as Open-Sora passes for classifier-free guidance, is
        repeated); x_mask `[B, T]` bool, True for frames being generated; micro-
        conditions `[B]` or scalars (defaults: pixel size from the latent size,
        aspect ratio height/width, T frames, 24 fps or 120 for images). drop_caption
        `[B]` bool: which captions to replace by the null caption; None draws them in
        training with `class_dropout_prob` (training passes its own, drawn per sample).
        Returns `[B, out_channels, T, H, W]` in fp32.
        """
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be [B, {c.in_channels}, T, H, W], got {tuple(x.shape)}")
        batch, _, frames_in, height_in, width_in = x.shape
        dtype = self.dtype
        x = x.to(dtype)
        y = caption_4d(y, batch, c.caption_channels).to(dtype)
        cond_mask = caption_mask(mask, y)
        x_mask = self._frame_mask(x_mask, batch, frames_in, x.device)

        # 1. Micro-conditions: size, aspect ratio, frame count, fps
        scale, data_info, fl = self._embed_micro_conditions(x, num_frames, height, width, ar, fps)

        # 2. Patchify and add 2-D positions (scaled by the sample's resolution)
        x, (frames, grid_h, grid_w) = self._patchify(x, scale)

        # 3. Timestep modulation (and timestep 0 for conditioning frames)
        t, t_spatial, t_temporal, t0, t0_spatial, t0_temporal = self._modulations(
            micro_condition(timestep, None, dtype, batch, x.device), data_info, fl, x_mask is not None)

        # 4. Caption tokens and RoPE table
        cond = self.y_embedder(y, self.training, drop_caption).squeeze(1)  # [B, N, C]
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

    def _frame_mask(self, x_mask: torch.Tensor | None, batch: int, frames: int, device: torch.device):
        """`x_mask` checked against the latents and as bool on their device."""
        if x_mask is None:
            return None
        if x_mask.shape != (batch, frames):
            raise ValueError(f"x_mask must be [B, T] = [{batch}, {frames}], got {tuple(x_mask.shape)}")
        x_mask = x_mask.to(device=device, dtype=torch.bool)
        if self.config.patch_size[0] != 1:
            raise ValueError("x_mask needs a temporal patch size of 1")
        return x_mask

    def _modulations(self, timestep: torch.Tensor, data_info: torch.Tensor, fl: torch.Tensor, conditioning: bool):
        """(t, spatial modulation, temporal modulation) of `timestep`, then the same at
        timestep 0 for conditioning frames, or three Nones without them."""
        t = self.t_embedder(timestep)
        t_spatial, t_temporal = self.t_block(t + data_info), self.t_block_temp(t + fl)
        t0 = t0_spatial = t0_temporal = None
        if conditioning:
            t0 = self.t_embedder(torch.zeros_like(t[:, 0]))
            t0_spatial, t0_temporal = self.t_block(t0 + data_info), self.t_block_temp(t0 + fl)
        return t, t_spatial, t_temporal, t0, t0_spatial, t0_temporal

    def _embed_micro_conditions(
        self, x: torch.Tensor, num_frames: Any, height: Any, width: Any, ar: Any, fps: Any
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(position scale, size + aspect-ratio embedding `[B, C]`, frame count + fps
        embedding `[B, C]`) of the latents `x`, each condition defaulted from x's shape.

        Like the timestep, the conditions enter in the model's dtype (the published bf16
        model saw 854 as 856). One bucket per batch: the first sample's resolution sets
        the position scale."""
        batch, _, frames_in, height_in, width_in = x.shape
        dtype, device = x.dtype, x.device
        scale = math.sqrt(
            first_value(height, height_in * VAE_DOWNSAMPLE, dtype) * first_value(width, width_in * VAE_DOWNSAMPLE, dtype)
        ) / self.config.input_sq_size
        height = micro_condition(height, height_in * VAE_DOWNSAMPLE, dtype, batch, device)
        width = micro_condition(width, width_in * VAE_DOWNSAMPLE, dtype, batch, device)
        ar = micro_condition(ar, height / width, dtype, batch, device)
        num_frames = micro_condition(num_frames, frames_in, dtype, batch, device)
        fps = micro_condition(fps, IMAGE_FPS if frames_in == 1 else DEFAULT_VIDEO_FPS, dtype, batch, device)
        data_info = torch.cat([self.csize_embedder(torch.stack([height, width], 1)), self.ar_embedder(ar[:, None])], 1)
        fl = self.fl_embedder(num_frames[:, None]) + self.fps_embedder(fps[:, None])
        return scale, data_info, fl

    def _patchify(self, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Latents `[B, C, T, H, W]` -> tokens `[B, T', S, C]` with their 2-D sin-cos
        positions (and frame index when configured), and the grid `(T', H', W')`."""
        c = self.config
        batch, _, frames_in, height_in, width_in = x.shape
        frames, grid_h, grid_w = (math.ceil(n / p) for n, p in zip((frames_in, height_in, width_in), c.patch_size))
        patches = grid_h * grid_w
        pos = spatial_sincos_pos_embed(c.hidden_size, grid_h, grid_w, scale, round(math.sqrt(patches)), x.device, x.dtype)
        x = self.x_embedder(x).view(batch, frames, patches, c.hidden_size) + pos
        if c.temporal_pos_embed:
            x = x + sinusoidal_embedding(torch.arange(frames, device=x.device), c.hidden_size).to(x.dtype)[None, :, None]
        return x, (frames, grid_h, grid_w)

    def _unpatchify(self, x: torch.Tensor, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        out = self.config.out_channels
        x = x.reshape(x.shape[0], frames, grid_h, grid_w, pt, ph, pw, out)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], out, frames * pt, grid_h * ph, grid_w * pw)
