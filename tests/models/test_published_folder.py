"""Published Open-Sora 1.1 weights come as Hugging Face folders written by `save_pretrained`:
`model.safetensors` (plain tensor names, no config in its metadata) and a `config.json`
with Open-Sora's STDiT2 fields plus transformers' bookkeeping. A tiny folder in exactly
that format stands in for the 3 GB ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from opensora_core import cli
from opensora_core.models import STDiT2
from opensora_core.models.checkpoint_io import load_stdit2, read_config

from .model_fixtures import build_random_model, dummy_inputs


def hf_config(model: STDiT2, **changes) -> dict:
    """config.json as `save_pretrained` writes it for Open-Sora's STDiT2Config."""
    c = model.config
    config = {
        "architectures": ["STDiT2"],
        "caption_channels": c.caption_channels,
        "class_dropout_prob": c.class_dropout_prob,
        "depth": c.depth,
        "drop_path": c.drop_path,
        "enable_flash_attn": False,
        "enable_layernorm_kernel": False,
        "enable_sequence_parallelism": False,
        "freeze": None,
        "hidden_size": c.hidden_size,
        "in_channels": c.in_channels,
        "input_size": [None, None, None],
        "input_sq_size": c.input_sq_size,
        "mlp_ratio": c.mlp_ratio,
        "model_max_length": c.model_max_length,
        "model_type": "STDiT2",
        "no_temporal_pos_emb": False,
        "num_heads": c.num_heads,
        "patch_size": list(c.patch_size),
        "pred_sigma": c.pred_sigma,
        "qk_norm": c.qk_norm,
        "qk_norm_legacy": c.qk_norm_legacy,
        "torch_dtype": "float32",
        "transformers_version": "4.36.2",
    }
    config.update(changes)
    return config


def write_published_folder(folder: Path, model: STDiT2, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(model, **changes), indent=2))
    return folder


@pytest.fixture
def model() -> STDiT2:
    return build_random_model(qk_norm_legacy=True)


def test_tiny_state_dict_has_the_published_tensor_names(model, reference_dir):
    def pattern(name: str) -> str:
        return re.sub(r"^blocks\.\d+\.", "blocks.*.", name)

    table = (reference_dir / "stdit2_xl2_state_dict.tsv").read_text()
    published = {line.split("\t")[0] for line in table.splitlines() if line.strip()}
    assert {pattern(k) for k in model.state_dict()} == {pattern(k) for k in published}


def test_published_folder_loads_strictly_and_computes_the_same(tmp_path, model):
    folder = write_published_folder(tmp_path / "OpenSora-STDiT-v2-stage3", model)
    loaded = load_stdit2(folder).eval()
    assert loaded.config == model.config.model_copy(
        update={"enable_flash_attn": False, "micro_condition_convention": "opensora-1.1"})
    inputs = dummy_inputs(height=5, width=7)
    torch.testing.assert_close(loaded(**inputs), model(**inputs), rtol=0, atol=0)
    # The weights file alone finds its config.json beside it.
    assert load_stdit2(folder / "model.safetensors").config == loaded.config


def test_bookkeeping_variants_are_accepted(tmp_path, model):
    # Newer transformers write `dtype`; older ones `torch_dtype`; `_name_or_path` after a re-save.
    folder = write_published_folder(tmp_path / "f", model, dtype="bfloat16", _name_or_path="hpcai-tech/x",
                                    input_size=None, no_temporal_pos_emb=True, enable_layernorm_kernel=True)
    assert read_config(folder).temporal_pos_embed is False


@pytest.mark.parametrize("source", ["folder", "folder/model.safetensors"])
def test_convert_without_preset(tmp_path, model, source):
    write_published_folder(tmp_path / "folder", model)
    target = tmp_path / "ours" / "model.safetensors"
    result = CliRunner().invoke(cli.app, ["model", "convert", "--from", str(tmp_path / source), "--to", str(target)])
    assert result.exit_code == 0, result.output
    converted = load_stdit2(target).eval()
    inputs = dummy_inputs()
    torch.testing.assert_close(converted(**inputs), model(**inputs), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"freeze": "not_temporal"}, 'freeze "not_temporal"'),
        ({"freeze": "text"}, 'freeze "text"'),
        ({"enable_sequence_parallelism": True}, "enable_sequence_parallelism true"),
        ({"input_size": [16, 32, 32]}, "input_size [16, 32, 32]"),
        ({"model_type": "STDiT3", "architectures": ["STDiT3"]}, 'model_type "STDiT3"'),
        ({"no_temporal_pos_emb": "yes"}, "no_temporal_pos_emb"),
        ({"space_scale": 1.0}, "space_scale"),
    ],
)
def test_behaviour_changing_keys_are_refused_by_name(tmp_path, model, changes, named):
    folder = write_published_folder(tmp_path / "f", model, **changes)
    with pytest.raises(ValueError, match=re.escape(named)) as err:
        load_stdit2(folder)
    assert str(folder / "config.json") in str(err.value)
    result = CliRunner().invoke(cli.app, ["model", "convert", "--from", str(folder), "--to",
                                          str(tmp_path / "out.safetensors")])
    assert result.exit_code == 2 and named.split()[0] in result.output
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_keys_take_open_soras_defaults(tmp_path, model):
    # transformers fills a key absent from config.json with Open-Sora's class default,
    # e.g. qk_norm_legacy false (RoPE after QK-norm), not our published-model default.
    folder = write_published_folder(tmp_path / "f", model)
    config = json.loads((folder / "config.json").read_text())
    del config["qk_norm_legacy"]
    (folder / "config.json").write_text(json.dumps(config))
    assert read_config(folder).qk_norm_legacy is False
