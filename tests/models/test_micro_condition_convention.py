"""`STDiT2Config.micro_condition_convention`: how training feeds the aspect-ratio and fps
micro-conditions. Published weights (and the XL/2 preset) use Open-Sora 1.1's; our
from-scratch presets keep ours; the choice travels with every checkpoint."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError
from safetensors import safe_open

from opensora_core.config import find_config
from opensora_core.models import STDiT2Config, load_preset
from opensora_core.models.checkpoint_io import (
    CONFIG_METADATA_KEY,
    convert_checkpoint,
    load_stdit2,
    read_config,
    save_model,
)

from .model_fixtures import build_random_model
from .test_published_folder import write_published_folder


@pytest.mark.parametrize(
    ("preset", "convention"),
    [("stdit2-tiny", "consistent"), ("stdit2-demo", "consistent"), ("stdit2-small", "consistent"),
     ("stdit2-xl2", "opensora-1.1"), ("STDiT2-XL/2", "opensora-1.1")],
)
def test_presets(preset, convention):
    assert load_preset(preset).micro_condition_convention == convention


def test_from_scratch_presets_are_their_files_as_before():
    # No new key in their files: every field but the convention is what the YAML says.
    for name in ("stdit2-tiny", "stdit2-demo", "stdit2-small"):
        written = yaml.safe_load(find_config("models", name).read_text())
        assert "micro_condition_convention" not in written
        dumped = load_preset(name).model_dump(mode="json")
        assert {k: dumped[k] for k in written} == {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in written.items()}


def test_bad_values_are_refused(tmp_path):
    with pytest.raises(ValidationError, match=r"micro_condition_convention[\s\S]*'consistent' or 'opensora-1.1'"):
        STDiT2Config(micro_condition_convention="width/height")
    folder = write_published_folder(tmp_path / "f", build_random_model(), micro_condition_convention="w/h")
    with pytest.raises(ValueError, match="micro_condition_convention") as err:
        read_config(folder)
    assert str(folder / "config.json") in str(err.value)


def test_published_folders_read_with_open_soras_convention_unless_they_say(tmp_path):
    model = build_random_model()
    assert read_config(write_published_folder(tmp_path / "a", model)).micro_condition_convention == "opensora-1.1"
    chosen = write_published_folder(tmp_path / "b", model, micro_condition_convention="consistent")
    assert read_config(chosen).micro_condition_convention == "consistent"


@pytest.mark.parametrize("convention", ["consistent", "opensora-1.1"])
def test_the_convention_survives_export_and_convert(tmp_path, convention):
    model = build_random_model(micro_condition_convention=convention)
    path = save_model(model, tmp_path / "export" / "model.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        stored = json.loads(handle.metadata()[CONFIG_METADATA_KEY])
    assert stored["micro_condition_convention"] == convention
    assert json.loads((path.parent / "config.json").read_text())["micro_condition_convention"] == convention
    assert load_stdit2(path).config.micro_condition_convention == convention
    config, _, _ = convert_checkpoint(path, tmp_path / "converted" / "model.safetensors")
    assert config.micro_condition_convention == convention
    assert read_config(tmp_path / "converted").micro_condition_convention == convention


def test_a_converted_published_folder_keeps_open_soras_convention(tmp_path):
    folder = write_published_folder(tmp_path / "OpenSora-STDiT-v2-stage3", build_random_model())
    convert_checkpoint(folder, tmp_path / "ours" / "model.safetensors")
    assert read_config(tmp_path / "ours").micro_condition_convention == "opensora-1.1"


def test_configs_written_before_the_field_keep_ours(tmp_path):
    # Our exports from before the field record no convention; they were trained with ours.
    dumped = build_random_model().config.model_dump(mode="json")
    del dumped["micro_condition_convention"]
    (tmp_path / "config.json").write_text(json.dumps(dumped))
    assert read_config(tmp_path / "model.safetensors").micro_condition_convention == "consistent"
