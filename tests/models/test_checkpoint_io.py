from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from opensora_core.models import infer_config
from opensora_core.models.checkpoint_io import (
    compare_keys,
    convert_checkpoint,
    load_state_dict,
    load_stdit2,
    read_config,
    save_model,
)

from .model_fixtures import build_random_model, dummy_inputs


def test_save_and_load_round_trip_is_exact(tmp_path):
    model = build_random_model()
    path = save_model(model, tmp_path / "stage1" / "model.safetensors")
    assert json.loads((path.parent / "config.json").read_text())["hidden_size"] == model.config.hidden_size
    loaded = load_stdit2(path).eval()
    assert loaded.config == model.config
    inputs = dummy_inputs()
    torch.testing.assert_close(loaded(**inputs), model(**inputs), rtol=0, atol=0)
    # A folder holding model.safetensors is accepted too.
    assert load_stdit2(path.parent).config == model.config
    assert not list(path.parent.glob("*.tmp")), "atomic writes leave no temporaries"


def test_open_sora_pth_with_wrappers_converts_and_loads(tmp_path):
    model = build_random_model()
    wrapped = {"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "step": 3}
    source = tmp_path / "epoch1-global_step3.pth"
    torch.save(wrapped, source)
    assert set(load_state_dict(source)) == set(model.state_dict())

    target = tmp_path / "converted.safetensors"
    config, report, count = convert_checkpoint(source, target, dtype=torch.bfloat16)
    assert report.ok and count == len(model.state_dict())
    # A config-less Open-Sora file holds Open-Sora's weights, trained with its convention.
    assert config.micro_condition_convention == "opensora-1.1"
    unread = {"input_sq_size": 0, "micro_condition_convention": None}
    assert config.model_dump() | unread == model.config.model_dump() | unread
    loaded = load_stdit2(target)
    assert loaded.x_embedder.proj.weight.dtype == torch.bfloat16
    assert read_config(target) == config


def test_safetensors_from_open_sora_without_config_is_inferred(tmp_path):
    model = build_random_model(depth=3, num_heads=2, pred_sigma=False, qk_norm=False)
    source = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(source))
    inferred = infer_config(load_state_dict(source), input_sq_size=model.config.input_sq_size)
    assert inferred == model.config.model_copy(update={"micro_condition_convention": "opensora-1.1"})


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    model = build_random_model()
    state = model.state_dict()
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    del state["blocks.1.mlp.fc2.bias"]
    state["pos_embed"] = torch.zeros(1, 4, 48)
    source = tmp_path / "broken.pt"
    torch.save(state, source)
    report = compare_keys(state, model.config)
    assert report.missing == ["blocks.1.mlp.fc2.bias"]
    assert report.unexpected == ["pos_embed"]
    assert report.mismatched and report.mismatched[0].startswith("blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.bias"):
        convert_checkpoint(source, tmp_path / "out.safetensors", config=model.config)
    assert not (tmp_path / "out.safetensors").exists()


def test_unreadable_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict(tmp_path / "nope.pth")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        load_state_dict(tmp_path / "weights.npz")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "opt.pt")
    with pytest.raises(ValueError, match="no tensors found"):
        load_state_dict(tmp_path / "opt.pt")


class _Payload:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (print, ("payload ran",))


def test_random_bytes_and_pickled_objects_are_refused_as_value_errors(tmp_path, capsys):
    (tmp_path / "random.safetensors").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    torch.save({"weight": torch.zeros(2), "obj": _Payload()}, tmp_path / "payload.pt")
    with pytest.raises(ValueError, match=r"random.safetensors: not a readable .safetensors checkpoint"):
        load_state_dict(tmp_path / "random.safetensors")
    with pytest.raises(ValueError, match=r"random.pt: (not a readable .pt checkpoint|refused)"):
        load_state_dict(tmp_path / "random.pt")
    with pytest.raises(ValueError, match=r"payload.pt: refused: not a plain tensor checkpoint"):
        load_state_dict(tmp_path / "payload.pt")
    assert "payload ran" not in capsys.readouterr().out


def test_cli_commands_refuse_unreadable_checkpoints_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from opensora_core import cli

    bad = tmp_path / "random.safetensors"
    bad.write_bytes(b"\x00" * 64)
    convert = CliRunner().invoke(cli.app, ["model", "convert", "--from", str(bad), "--to", str(tmp_path / "o.safetensors")])
    assert convert.exit_code == 2 and "not a readable .safetensors checkpoint" in " ".join(convert.output.split())
    sample = CliRunner().invoke(cli.app, ["sample", "--checkpoint", str(bad), "--prompt", "a red square",
                                          "--height", "64", "--width", "64", "--out", str(tmp_path / "s")])
    assert sample.exit_code == 2 and "not a readable .safetensors checkpoint" in " ".join(sample.output.split())
