"""The schema of one training stage (``configs/stages``): buckets, masks, optimiser and
schedule, with Open-Sora 1.1's named resolutions and training mask kinds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from opensora_core.config.errors import _is_number, _show, _Strict

# Pixel areas of Open-Sora 1.1's named resolutions (OPEN_SORA_1_1.md, "Buckets").
RESOLUTION_AREAS: dict[str, int] = {
    "144p": 36864,
    "256": 65536,
    "240p": 102240,
    "360p": 230400,
    "512": 262144,
    "480p": 409920,
    "720p": 921600,
    "1024": 1048576,
    "1080p": 2073600,
}

# Training mask kinds (OPEN_SORA_1_1.md, "Training masks"); order is the published one.
MASK_NAMES: tuple[str, ...] = (
    "no_mask",
    "quarter_random",
    "quarter_head",
    "quarter_tail",
    "quarter_head_tail",
    "image_random",
    "image_head",
    "image_tail",
    "image_head_tail",
    # Not in Open-Sora 1.1: k in [1, T//2] frames at the head or the tail. On short
    # windows (8 frames: a quarter is at most 2) they train extension from half a clip.
    "half_head",
    "half_tail",
)

# Ratios come from YAML decimals, so exact equality with 1 would reject valid files.
_MASK_SUM_TOLERANCE = 1e-6


def validate_mask_ratios(value: Mapping[str, float]) -> dict[str, float]:
    """Check names and ranges and that the ratios sum to 1; return every kind in
    `MASK_NAMES` order (omitted kinds get 0 and are never drawn)."""
    for name, ratio in value.items():
        if name not in MASK_NAMES:
            raise ValueError(f"unknown mask '{name}' (valid: {', '.join(MASK_NAMES)})")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} {ratio} not in [0, 1]")
    total = math.fsum(value.values())
    if abs(total - 1.0) > _MASK_SUM_TOLERANCE:
        raise ValueError(f"ratios sum to {total:.6g}, expected 1 (within {_MASK_SUM_TOLERANCE:g})")
    return {name: float(value.get(name, 0.0)) for name in MASK_NAMES}


class BucketEntry(_Strict):
    """One ``(keep_prob, batch_size)`` cell of a bucket config.

    YAML form is Open-Sora's tuple written as a 2-list, ``[0.5, 48]``; a mapping with
    the two field names is accepted too. ``[0, null]`` means "never assign clips here".
    """

    keep_prob: float
    batch_size: int | None

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) != 2:
                raise ValueError(
                    f"expected [keep_prob, batch_size], got a list of {len(data)} items"
                )
            data = {"keep_prob": data[0], "batch_size": data[1]}
        elif isinstance(data, BucketEntry):
            return data
        elif not isinstance(data, Mapping):
            # pydantic only turns ValueError into a located validation error.
            raise ValueError(f"expected [keep_prob, batch_size], got {_show(data)}")  # noqa: TRY004
        elif set(data) - {"keep_prob", "batch_size"}:
            return data  # let the unknown-key check report it

        # Checked here rather than with Field(ge=..) so the message sits on the bucket's
        # path (bucket_config.240p.16) and reads like the tuple people wrote.
        keep_prob = data.get("keep_prob")
        batch_size = data.get("batch_size")
        if not _is_number(keep_prob) or not math.isfinite(keep_prob):
            raise ValueError(f"keep_prob: expected a number in [0, 1], got {_show(keep_prob)}")
        if not 0.0 <= keep_prob <= 1.0:
            raise ValueError(f"keep_prob {keep_prob} not in [0, 1]")
        if batch_size is None:
            if keep_prob > 0:
                raise ValueError(
                    f"batch_size is null but keep_prob {keep_prob} > 0; "
                    "a bucket that can receive clips needs a batch size"
                )
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(
                f"batch_size: expected a positive integer or null, got {_show(batch_size)}"
            )
        return {"keep_prob": float(keep_prob), "batch_size": batch_size}

    def as_tuple(self) -> tuple[float, int | None]:
        return (self.keep_prob, self.batch_size)


# num_frames keys; a constrained key type keeps the error on bucket_config.<res>.<key>.
_NumFrames = Annotated[int, Field(gt=0)]


class StageConfig(_Strict):
    """One training stage, with the knobs Open-Sora 1.1's stage configs have.

    Model hyper-parameters (depth, caption dropout, ...) live in the model preset
    named by ``model_preset``, not here.
    """

    stage: int = Field(ge=0, le=3)
    description: str
    # Stem of a file in configs/models; checked by whoever loads the preset so this
    # schema stays usable without a project folder.
    model_preset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    # Extra named resolutions (name -> pixel area) for tiny CPU stages.
    extra_resolutions: dict[str, int] = Field(default_factory=dict)
    bucket_config: dict[str, dict[_NumFrames, BucketEntry]]
    mask_ratios: dict[str, float] | None
    frame_interval: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    grad_clip: float = Field(gt=0)
    ema_decay: float | None = Field(gt=0, lt=1)
    mixed_precision: Literal["bf16", "fp16", "fp32"]
    grad_checkpoint: bool
    # torch.compile each STDiT-2 block; None: the profile's `compile`. A stage that trains
    # long enough at fixed shapes pays back the compilation.
    compile: bool | None = None
    max_steps: int = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    # After warm-up: constant, or a cosine from lr down to min_lr at the stage's last step
    # (a short run's last steps at a small lr sharpen what it learnt).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = Field(0.0, ge=0)
    scheduler: Literal["iddpm", "iddpm-speed", "rflow"]
    # rflow only: t' = s t / (1 + (s - 1) t) moves training and sampling toward noise.
    timestep_shift: float = Field(1.0, ge=1.0, le=100.0)
    ckpt_every: int = Field(gt=0)
    log_every: int = Field(gt=0)
    seed: int
    # "previous" = the previous stage's export; otherwise a checkpoint path, or null
    # for random initialisation.
    init_from: str | None

    @field_validator("extra_resolutions")
    @classmethod
    def _check_extra_resolutions(cls, value: dict[str, int]) -> dict[str, int]:
        for name, area in value.items():
            if name in RESOLUTION_AREAS:
                raise ValueError(
                    f"'{name}' is already a known resolution "
                    f"({RESOLUTION_AREAS[name]} pixels); pick another name"
                )
            if area <= 0:
                raise ValueError(f"{name}: pixel area must be a positive integer, got {area}")
        return value

    @field_validator("bucket_config", mode="before")
    @classmethod
    def _stringify_resolution_names(cls, value: Any) -> Any:
        # YAML reads an unquoted `256:` as an int; the name is still clearly "256".
        if isinstance(value, Mapping):
            return {
                str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v
                for k, v in value.items()
            }
        return value

    @field_validator("bucket_config")
    @classmethod
    def _check_bucket_shape(
        cls, value: dict[str, dict[int, BucketEntry]]
    ) -> dict[str, dict[int, BucketEntry]]:
        if not value:
            raise ValueError("must define at least one resolution")
        for resolution, frames in value.items():
            if not frames:
                raise ValueError(f"{resolution}: must define at least one num_frames entry")
        return value

    @field_validator("mask_ratios")
    @classmethod
    def _check_mask_ratios(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return None if value is None else validate_mask_ratios(value)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> StageConfig:
        known = self.resolution_areas()
        for resolution in self.bucket_config:
            if resolution not in known:
                # After-validators report at the top level, so the path goes in the text.
                raise ValueError(
                    f"bucket_config.{resolution}: unknown resolution '{resolution}' "
                    f"(known: {', '.join(known)}; declare others in extra_resolutions)"
                )
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps: {self.warmup_steps} exceeds max_steps {self.max_steps}"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: {self.min_lr} exceeds lr {self.lr}")
        if self.timestep_shift != 1.0 and self.scheduler != "rflow":
            raise ValueError(f"timestep_shift: {self.timestep_shift} needs scheduler rflow, not {self.scheduler}")
        if self.stage == 0 and self.init_from == "previous":
            raise ValueError("init_from: stage 0 has no previous stage")
        return self

    def resolution_areas(self) -> dict[str, int]:
        """Pixel area of every resolution name this stage may use."""
        return {**RESOLUTION_AREAS, **self.extra_resolutions}

    def bucket_tuples(self) -> dict[str, dict[int, tuple[float, int | None]]]:
        """The bucket config in Open-Sora's ``{res: {frames: (keep_prob, bs)}}`` form."""
        return {
            res: {t: entry.as_tuple() for t, entry in frames.items()}
            for res, frames in self.bucket_config.items()
        }
