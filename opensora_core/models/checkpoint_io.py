"""Reading Open-Sora / our STDiT-2 checkpoints and writing ours.

Ours: `model.safetensors` whose metadata holds the config as JSON, plus the same
config as `config.json` beside it for people and tools that do not read safetensors
metadata. Published Open-Sora 1.1 weights: a Hugging Face folder (`model.safetensors`
and the `config.json` of `save_pretrained`), read through `STDiT2Config.from_opensora`. Open-Sora's: raw or wrapped state dicts in `.pt`/`.pth` (loaded with
`weights_only=True`) or `.safetensors`, possibly with DDP/ColossalAI `module.` prefixes.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from opensora_core.models.stdit2 import STDiT2, STDiT2Config
from opensora_core.utils.atomic import atomic_path, write_text_atomic

CONFIG_METADATA_KEY = "stdit2_config"
OBJECTIVE_METADATA_KEY = "objective"  # what the weights were trained for: iddpm or rflow
SHIFT_METADATA_KEY = "timestep_shift"  # rflow's timestep shift, which sampling must repeat
_WRAPPER_KEYS = ("model", "state_dict", "module", "ema")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def load_stdit2(
    path: str | Path, config: STDiT2Config | None = None, map_location: str | torch.device = "cpu"
) -> STDiT2:
    """Load a checkpoint strictly: our `model.safetensors` (config in its metadata
    or a `config.json` beside it), or an Open-Sora `.pt`/`.pth`/`.safetensors`
    (config given, or inferred from tensor shapes)."""
    state_dict = load_state_dict(path, map_location=map_location)
    config = config or read_config(path) or infer_config(state_dict)
    with torch.device("meta"):
        model = STDiT2(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def load_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors; with `map_location="meta"`, names and shapes only (a
    safetensors file is not read beyond its header)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "ema.pt", path / "model.pt"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: no checkpoint file inside (looked for {[p.name for p in candidates]})")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        raise ValueError(f"{path}: unsupported checkpoint format {path.suffix!r} (expected .safetensors, .pt, .pth)")
    try:
        if path.suffix == ".safetensors" and str(map_location) == "meta":
            with safe_open(str(path), framework="pt") as handle:
                state = {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
        elif path.suffix == ".safetensors":
            state = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only loading refuses a pickle that would build other objects (or run code).
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: refused: not a plain tensor checkpoint ({reason[:200]})") from None
    except (SafetensorError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable {path.suffix} checkpoint ({type(err).__name__}: "
                         f"{str(err)[:200]})") from None
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        key = next((k for k in _WRAPPER_KEYS if k in state), None)
        if key is None:
            raise ValueError(f"{path}: no tensors found; top-level keys are {sorted(state)[:10]}")
        state = state[key]
    if not isinstance(state, dict):
        # ValueError, not TypeError: callers report ValueError as bad input.
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")  # noqa: TRY004
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def read_config(path: str | Path) -> STDiT2Config | None:
    """The config stored with one of our checkpoints, or None for foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix == ".safetensors" and path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(CONFIG_METADATA_KEY)
        if text:
            return STDiT2Config(**json.loads(text))
    sidecar = path.with_name("config.json")
    if sidecar.is_file():
        return _read_config_json(sidecar)
    return None


def _read_config_json(path: Path) -> STDiT2Config:
    """Ours, or the Hugging Face `config.json` of published Open-Sora weights (told
    apart by its `model_type`); errors name the file and the key."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of model fields, got {type(raw).__name__}")  # noqa: TRY004
    try:
        return STDiT2Config.from_opensora(raw) if "model_type" in raw else STDiT2Config(**raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{path}: {problems}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def read_objective(path: str | Path) -> tuple[str, float]:
    """The training objective ("iddpm" or "rflow") and timestep shift recorded in one of
    our exports; ("iddpm", 1.0) for files that record none (Open-Sora 1.1's weights)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    metadata = {}
    if path.suffix == ".safetensors" and path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    return metadata.get(OBJECTIVE_METADATA_KEY, "iddpm"), float(metadata.get(SHIFT_METADATA_KEY, 1.0))


def save_model(model: STDiT2, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write `model.safetensors` (+ `config.json` beside it) atomically."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: config_to_json(model.config), **(extra_metadata or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    write_text_atomic(path.with_name("config.json"), json.dumps(model.config.model_dump(mode="json"), indent=2))
    return path


@dataclass
class KeyReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 8) -> str:
        parts = []
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatch", self.mismatched)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")
                parts.append(f"{name}: {shown}")
        return "; ".join(parts) or "all keys match"


def compare_keys(state_dict: dict[str, torch.Tensor], config: STDiT2Config) -> KeyReport:
    with torch.device("meta"):
        expected = STDiT2(config).state_dict()
    report = KeyReport(
        missing=sorted(set(expected) - set(state_dict)),
        unexpected=sorted(set(state_dict) - set(expected)),
    )
    for name in sorted(set(expected) & set(state_dict)):
        if tuple(expected[name].shape) != tuple(state_dict[name].shape):
            report.mismatched.append(f"{name} {tuple(state_dict[name].shape)} != {tuple(expected[name].shape)}")
    return report


def convert_checkpoint(
    source: str | Path, target: str | Path, config: STDiT2Config | None = None, dtype: torch.dtype | None = None
) -> tuple[STDiT2Config, KeyReport, int]:
    """Open-Sora checkpoint in, our safetensors out. Raises ValueError when the keys
    do not match the model exactly. Returns the config, the key report and the
    number of tensors written."""
    state = load_state_dict(source)
    config = config or read_config(source) or infer_config(state)
    report = compare_keys(state, config)
    if not report.ok:
        raise ValueError(f"{source}: does not match STDiT-2 {config.model_dump()}: {report.describe()}")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = STDiT2(config)
    model.load_state_dict(state, strict=True, assign=True)
    save_model(model, target, extra_metadata={"converted_from": Path(source).name})
    return config, report, len(state)


def infer_config(state_dict: dict[str, torch.Tensor], **overrides: Any) -> STDiT2Config:
    """Recover STDiT-2 hyper-parameters from a state dict's tensor shapes. `input_sq_size`
    cannot be read off shapes; it defaults to the published 512 unless overridden. A
    state dict without a config is Open-Sora's, so its micro-condition convention too."""
    try:
        patch_weight = state_dict["x_embedder.proj.weight"]
        hidden, in_channels, *patch = patch_weight.shape
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        qk_norm = "blocks.0.attn.q_norm.weight" in state_dict
        head_dim = 2 * state_dict["rope.freqs"].shape[0]
        caption_tokens, caption_channels = state_dict["y_embedder.y_embedding"].shape
        out_channels = state_dict["final_layer.linear.weight"].shape[0] // math.prod(patch)
        mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise ValueError(f"not an STDiT-2 state dict: cannot read {err} from its tensors") from err
    fields: dict[str, Any] = {
        "in_channels": in_channels,
        "patch_size": tuple(patch),
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": hidden // head_dim,
        "mlp_ratio": mlp_hidden / hidden,
        "pred_sigma": out_channels == 2 * in_channels,
        "caption_channels": caption_channels,
        "model_max_length": caption_tokens,
        "qk_norm": qk_norm,
        "micro_condition_convention": "opensora-1.1",
    }
    fields.update(overrides)
    return STDiT2Config(**fields)


def config_to_json(config: STDiT2Config) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)
