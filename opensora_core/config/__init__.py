"""Typed configuration: training stages and runtime profiles, loaded from YAML.

Configs are the interface between people and the pipeline, so every problem is
reported as a :class:`ConfigError` that names the file, the dotted key path and what
was expected, e.g.::

    configs/stages/stage1.yaml: bucket_config.240p.16: keep_prob 1.3 not in [0, 1]

Modules: ``errors`` (the error, the strict schema base, message formatting), ``env``
(``${VAR}`` expansion), ``stage`` and ``profile`` (the schemas), ``loading`` (finding,
reading and validating files; a stage file may ``extends:`` another, see
``loading``). Every public name is importable from here.

This package is pure Python (pydantic + PyYAML) so the CLI, Dagster, TorchX
components and tests can all import it without pulling in torch or dagster.
"""

from opensora_core.config.env import expand_env, referenced_env_vars
from opensora_core.config.errors import ConfigError
from opensora_core.config.errors import _Strict as _Strict  # the base of curation's schemas
from opensora_core.config.loading import (
    CONFIG_KINDS,
    config_dir,
    find_config,
    is_stage_base,
    load_config,
    load_profile,
    load_sampling_profile,
    load_stage,
    project_root,
    read_stage_data,
    validate_config,
)
from opensora_core.config.profile import (
    ProfileConfig,
    SamplingProfile,
    TextEncoderConfig,
    VAEConfig,
)
from opensora_core.config.stage import (
    MASK_NAMES,
    RESOLUTION_AREAS,
    BucketEntry,
    StageConfig,
    validate_mask_ratios,
)

__all__ = [
    "CONFIG_KINDS",
    "MASK_NAMES",
    "RESOLUTION_AREAS",
    "BucketEntry",
    "ConfigError",
    "ProfileConfig",
    "SamplingProfile",
    "StageConfig",
    "TextEncoderConfig",
    "VAEConfig",
    "config_dir",
    "expand_env",
    "find_config",
    "is_stage_base",
    "load_config",
    "load_profile",
    "load_sampling_profile",
    "load_stage",
    "project_root",
    "read_stage_data",
    "referenced_env_vars",
    "validate_config",
    "validate_mask_ratios",
]
