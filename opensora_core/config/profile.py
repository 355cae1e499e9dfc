"""The schema of a runtime profile (``configs/profiles``): where and how things run, and
the part of it that sampling reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from opensora_core.config.errors import _Strict


class VAEConfig(_Strict):
    # "dct" is our weight-free stand-in for CPU runs; "sd-kl" is Stable Diffusion's VAE.
    kind: Literal["dct", "sd-kl"]
    path: str | None = None


class TextEncoderConfig(_Strict):
    kind: Literal["word-embedding", "t5"]
    path: str | None = None


class ProfileConfig(_Strict):
    """Where and how things run: the same code switches scale by switching profile."""

    name: str
    device: Literal["cpu", "cuda"]
    dist_backend: Literal["gloo", "nccl"]
    nproc_per_node: int = Field(ge=1)
    nnodes: int = Field(ge=1)
    torchx_scheduler: Literal["local_cwd", "kubernetes", "slurm"]
    mlflow_tracking_uri: str
    # true: training refuses to start when the tracking store is unreachable; false: it
    # trains and keeps a local record to upload later (opensora_core/tracking/).
    mlflow_required: bool = False
    data_root: str
    artifacts_root: str
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    # The STDiT-2 attention kernel in training and sampling: auto = the model preset's
    # choice (flash-attn where installed, on CUDA in fp16/bf16, unless enable_flash_attn
    # is false; else PyTorch's SDPA); sdpa or flash force one (flash fails where it cannot run).
    attention_backend: Literal["auto", "sdpa", "flash"]
    compile: bool
    # When Dagster's retrain_schedule launches retrain_job (five-field cron; the schedule
    # starts switched off). OPENSORA_RETRAIN_CRON / OPENSORA_RETRAIN_TIMEZONE override.
    retrain_cron: str = "0 3 * * 0"
    retrain_timezone: str = "UTC"

    @field_validator("retrain_cron")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron with five fields (minute hour day month weekday)")
        return value

    @model_validator(mode="after")
    def _check_cross_fields(self) -> ProfileConfig:
        if self.dist_backend == "nccl" and self.device != "cuda":
            raise ValueError("dist_backend: nccl needs device cuda; use gloo on cpu")
        if self.attention_backend == "flash" and self.device != "cuda":
            raise ValueError("attention_backend: flash attention needs device cuda")
        return self

    def resolve_paths(self, root: str | os.PathLike[str]) -> ProfileConfig:
        """Make relative paths (and a relative sqlite URI) absolute under ``root``.

        Training runs in separate processes with their own working directories, so
        "in the project folder" has to be pinned down once, at load.
        """
        base = Path(root).resolve()

        def path(value: str | None) -> str | None:
            return _resolve_path(value, base)

        uri = self.mlflow_tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
            uri = prefix + str(base / uri[len(prefix) :])
        elif "://" not in uri:
            uri = str(path(uri))

        return self.model_copy(
            update={
                "mlflow_tracking_uri": uri,
                "data_root": path(self.data_root),
                "artifacts_root": path(self.artifacts_root),
                "vae": self.vae.model_copy(update={"path": path(self.vae.path)}),
                "text_encoder": self.text_encoder.model_copy(
                    update={"path": path(self.text_encoder.path)}
                ),
            }
        )


def _resolve_path(value: str | None, base: Path) -> str | None:
    if value is None or "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


class SamplingProfile(_Strict):
    """The part of a profile that sampling reads: the encoders, the default device and
    the attention backend.

    Sampling never needs a tracking server or a cluster, so a profile written only for
    sampling may leave the other keys out, and their ``${VAR}``s are not expanded.
    """

    name: str
    device: Literal["cpu", "cuda"] = "cpu"
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    attention_backend: Literal["auto", "sdpa", "flash"] = "auto"
