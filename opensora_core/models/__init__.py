"""STDiT-2 and the encoders around it. `build_stdit2("stdit2-tiny")` is the entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opensora_core.models.checkpoint_io import infer_config
from opensora_core.models.stdit2 import STDiT2, STDiT2Config

# Open-Sora's registry names for the presets we ship.
PRESET_ALIASES = {"STDiT2-XL/2": "stdit2-xl2"}


def load_preset(preset: str | Path) -> STDiT2Config:
    """A preset by name (a file stem in configs/models, or an Open-Sora alias) or by path."""
    from opensora_core.config import find_config, load_config

    name = PRESET_ALIASES.get(str(preset), str(preset))
    return load_config(find_config("models", name), STDiT2Config)


def build_stdit2(preset: str | Path = "stdit2-tiny", **overrides: Any) -> STDiT2:
    """Build an STDiT-2 from a preset, with field overrides (`depth=2`, ...)."""
    return STDiT2(load_preset(preset), **overrides)


__all__ = ["PRESET_ALIASES", "STDiT2", "STDiT2Config", "build_stdit2", "infer_config", "load_preset"]
