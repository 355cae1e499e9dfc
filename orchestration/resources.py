"""Resources: adapters to outside systems. They import nothing of `assets_defs`."""

from __future__ import annotations

import os
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from opensora_core.config import load_profile
from opensora_core.data.config import CurationConfig, load_curation_config
from opensora_core.data.storage import Storage


class CurationStorage(ConfigurableResource):
    """Where raw files arrive and where curated partitions and the training table go.

    Both roots are fsspec URLs or local folders; with an object store every worker
    reads and writes the same place, so partitions can run on different machines.
    """

    raw_root: str = Field(description="Folder or fsspec URL the sensor watches for raw videos and images.")
    curated_root: str = Field(description="Folder or fsspec URL of partitions and the training table.")
    data_config: str = Field("default", description="configs/data stem or YAML path with scene and filter settings.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (credentials, endpoint).")

    def source(self) -> Storage:
        return Storage(self.raw_root, **self.storage_options)

    def out(self) -> Storage:
        return Storage(self.curated_root, **self.storage_options)

    def curation_config(self) -> CurationConfig:
        return load_curation_config(self.data_config)


def curation_storage_from_env() -> CurationStorage:
    """Roots from `OPENSORA_RAW_ROOT` / `OPENSORA_CURATED_ROOT`, else `raw/` and
    `curated/` under the data root of the profile named by `OPENSORA_PROFILE`
    (default `embedded`)."""
    data_root = load_profile(os.environ.get("OPENSORA_PROFILE", "embedded")).data_root.rstrip("/")
    return CurationStorage(
        raw_root=os.environ.get("OPENSORA_RAW_ROOT", f"{data_root}/raw"),
        curated_root=os.environ.get("OPENSORA_CURATED_ROOT", f"{data_root}/curated"),
        data_config=os.environ.get("OPENSORA_DATA_CONFIG", "default"),
    )


class CacheSettings(ConfigurableResource):
    """Where the text and video caches live and what decides their contents.

    Caches are local folders on the machine that trains (safetensors are memory-mapped);
    the video cache covers every bucket size any of `stages` can assign.
    """

    root: str = Field(description="Local folder holding text/ and video/ caches.")
    profile: str = Field("embedded", description="Profile naming the VAE and text encoder.")
    preset: str = Field("stdit2-tiny", description="Model preset: caption width and length.")
    stages: list[str] = Field(description="Stage configs whose buckets decide the cached video sizes.")

    def text_root(self) -> str:
        return f"{self.root.rstrip('/')}/text"

    def video_root(self) -> str:
        return f"{self.root.rstrip('/')}/video"


def cache_settings_from_env() -> CacheSettings:
    """`OPENSORA_CACHE_ROOT` (default `caches/` under the profile's artifacts root),
    `OPENSORA_PRESET` and `OPENSORA_STAGES` (comma-separated; default the tiny stages)."""
    profile = os.environ.get("OPENSORA_PROFILE", "embedded")
    artifacts = load_profile(profile).artifacts_root.rstrip("/")
    stages = os.environ.get("OPENSORA_STAGES", "tiny/stage0,tiny/stage1,tiny/stage2,tiny/stage3")
    return CacheSettings(
        root=os.environ.get("OPENSORA_CACHE_ROOT", f"{artifacts}/caches"),
        profile=profile,
        preset=os.environ.get("OPENSORA_PRESET", "stdit2-tiny"),
        stages=[s.strip() for s in stages.split(",") if s.strip()],
    )
