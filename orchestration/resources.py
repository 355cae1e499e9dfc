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
