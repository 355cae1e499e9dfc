"""Typed configuration: training stages and runtime profiles, loaded from YAML.

Configs are the interface between people and the pipeline, so every problem is
reported as a :class:`ConfigError` that names the file, the dotted key path and what
was expected, e.g.::

    configs/stages/stage1.yaml: bucket_config.240p.16: keep_prob 1.3 not in [0, 1]

This module is pure Python (pydantic + PyYAML) so the CLI, Dagster, TorchX
components and tests can all import it without pulling in torch or dagster.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
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
    "load_config",
    "load_profile",
    "load_sampling_profile",
    "load_stage",
    "project_root",
    "validate_config",
    "validate_mask_ratios",
]

M = TypeVar("M", bound=BaseModel)

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

CONFIG_KINDS: tuple[str, ...] = ("models", "stages", "profiles", "data")

# Ratios come from YAML decimals, so exact equality with 1 would reject valid files.
_MASK_SUM_TOLERANCE = 1e-6

# Lets deployments (TorchX jobs, Dagster code locations) point at a project folder
# without depending on their working directory.
_ROOT_ENV_VAR = "OPENSORA_PROJECT_ROOT"


class ConfigError(ValueError):
    """A configuration problem; ``problems`` holds one line per problem found."""

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]


# --------------------------------------------------------------------------------------
# Environment variable expansion
# --------------------------------------------------------------------------------------

# `$${` is an escape for a literal `${`, so the pattern consumes it first.
_ENV_PATTERN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _UnsetEnvVar(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _expand(value: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        current = os.environ.get(name)
        # Shell semantics of `:-`: the default also covers a variable set to "".
        if current:
            return current
        if default is not None:
            return default
        if current is not None:
            return current
        raise _UnsetEnvVar(name)

    return _ENV_PATTERN.sub(substitute, value)


def expand_env(value: str) -> str:
    """Resolve ``${VAR}`` and ``${VAR:-default}``; ``$${`` stands for a literal ``${``.

    An unset variable without a default raises :class:`ConfigError` naming it.
    """
    try:
        return _expand(value)
    except _UnsetEnvVar as err:
        raise ConfigError(
            f"environment variable '{err.name}' is not set and has no default (in {value!r})"
        ) from None


def _expand_tree(
    data: Any, path: tuple[Any, ...], problems: list[tuple[tuple[Any, ...], str]]
) -> Any:
    if isinstance(data, str):
        try:
            return _expand(data)
        except _UnsetEnvVar as err:
            problems.append(
                (path, f"environment variable '{err.name}' is not set and has no default")
            )
            return data
    if isinstance(data, Mapping):
        return {k: _expand_tree(v, (*path, k), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_tree(v, (*path, i), problems) for i, v in enumerate(data)]
    return data


# --------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `keep_prob: true` is a typo, not a probability.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Strict(BaseModel):
    """Base for every schema: unknown keys are errors, with a spelling suggestion."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # pydantic's own extra="forbid" stays as a backstop; this check exists to say
        # which keys *are* valid, which is what a person fixing a typo needs.
        if isinstance(data, Mapping):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    raise ValueError(
                        f"unknown key '{key}'{hint} (valid keys: {', '.join(allowed)})"
                    )
        return data


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
    # trains and keeps a local record to upload later (opensora_core/train/tracking.py).
    mlflow_required: bool = False
    dagster_home: str
    data_root: str
    artifacts_root: str
    vae: VAEConfig
    text_encoder: TextEncoderConfig
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
                "dagster_home": path(self.dagster_home),
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
    """The part of a profile that sampling reads: the encoders and the default device.

    Sampling never needs a tracking server or a cluster, so a profile written only for
    sampling may leave the other keys out, and their ``${VAR}``s are not expanded.
    """

    name: str
    device: Literal["cpu", "cuda"] = "cpu"
    vae: VAEConfig
    text_encoder: TextEncoderConfig


# --------------------------------------------------------------------------------------
# Error formatting
# --------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(loc: Sequence[Any]) -> str:
    # "[key]" marks an error in a dict key rather than its value; the key itself is
    # already the previous element, which is the path people recognise.
    return ".".join(str(part) for part in loc if part != "[key]")


def _describe(error: Mapping[str, Any]) -> tuple[tuple[Any, ...], str]:
    """Turn one pydantic error into (location, human message)."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _show(error.get("input"))

    if kind == "extra_forbidden":
        return loc[:-1], f"unknown key '{loc[-1]}'"
    if kind == "missing":
        return loc, "missing required key"
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        return loc, message
    simple = {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "finite_number": "a finite number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "list_type": "a list",
        "tuple_type": "a list",
    }
    if kind in simple:
        return loc, f"expected {simple[kind]}, got {got}"
    bounds = {
        "greater_than": ("> ", "gt"),
        "greater_than_equal": (">= ", "ge"),
        "less_than": ("< ", "lt"),
        "less_than_equal": ("<= ", "le"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return loc, f"expected a value {op}{ctx.get(key)}, got {got}"
    if kind == "literal_error":
        return loc, f"expected {ctx.get('expected')}, got {got}"
    if kind == "string_pattern_mismatch":
        return loc, f"expected a name matching {ctx.get('pattern')}, got {got}"
    return loc, f"{error['msg']} (got {got})"


def _display_name(source: str | os.PathLike[str]) -> str:
    """Show config paths relative to the project (or cwd) so messages stay short."""
    path = Path(source)
    if not path.is_absolute():
        return str(source)
    for base in (project_root(), Path.cwd()):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def _raise_problems(source: str, problems: list[tuple[tuple[Any, ...], str]]) -> None:
    lines = []
    for loc, message in problems:
        where = _dotted(loc)
        lines.append(f"{source}: {where}: {message}" if where else f"{source}: {message}")
    raise ConfigError("\n".join(lines), lines)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML would silently overwrite."""


def _construct_unique_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source}: cannot read: {err}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or str(err)
        label = (
            "YAML error"
            if isinstance(err, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        raise ConfigError(f"{source}: {where}{label}: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: YAML error: {err}") from None


def validate_config(
    data: Any,
    schema: type[M],
    source: str,
    *,
    expand_env_vars: bool = True,
) -> M:
    """Validate an already-parsed mapping against ``schema``.

    ``source`` prefixes every message (a file name, "dagster run config", ...).
    ``${VAR}`` references in string values are expanded first unless disabled.
    """
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{source}: top level must be a mapping of keys, got {kind}")
    if expand_env_vars:
        env_problems: list[tuple[tuple[Any, ...], str]] = []
        data = _expand_tree(data, (), env_problems)
        if env_problems:
            _raise_problems(source, env_problems)
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors(include_url=False)]
        _raise_problems(source, problems)
        raise AssertionError("unreachable") from err


def load_config(path: str | os.PathLike[str], schema: type[M]) -> M:
    """Read a YAML file and validate it against ``schema``; every failure is a ConfigError."""
    source = _display_name(path)
    return validate_config(_read_yaml(Path(path), source), schema, source)


def _looks_like_project(candidate: Path) -> bool:
    configs = candidate / "configs"
    return configs.is_dir() and any((configs / kind).is_dir() for kind in CONFIG_KINDS)


def project_root() -> Path:
    """The project folder: ``$OPENSORA_PROJECT_ROOT``, else the nearest directory at or
    above the working directory that holds ``configs/``, else this checkout."""
    override = os.environ.get(_ROOT_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if _looks_like_project(candidate):
            return candidate
    return Path(__file__).resolve().parents[1]


def config_dir(kind: str) -> Path:
    """``<project>/configs/<kind>`` for one of :data:`CONFIG_KINDS`."""
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"unknown config kind '{kind}' (valid: {', '.join(CONFIG_KINDS)})")
    return project_root() / "configs" / kind


def _available_stems(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    stems = {
        str(p.relative_to(directory).with_suffix(""))
        for pattern in ("*.yaml", "*.yml")
        for p in directory.rglob(pattern)
    }
    return sorted(stems)


def find_config(kind: str, name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a config given as a path or as a stem under ``configs/<kind>``.

    Stems may name subfolders (``tiny/stage1``). A value ending in ``.yaml``/``.yml``
    or naming an existing file is taken as a path.
    """
    directory = config_dir(kind)
    raw = str(name_or_path)
    candidate = Path(raw).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        for option in (candidate, project_root() / candidate):
            if option.is_file():
                return option.resolve()
        raise ConfigError(f"{raw}: file not found")
    for suffix in (".yaml", ".yml"):
        option = directory / f"{raw}{suffix}"
        if option.is_file():
            return option.resolve()
    stems = _available_stems(directory)
    listing = ", ".join(stems) if stems else f"none; {directory} has no YAML files"
    raise ConfigError(f"unknown {kind} config '{raw}' (available: {listing})")


def load_stage(name_or_path: str | os.PathLike[str]) -> StageConfig:
    """Load a stage config by path or stem (``stage1``, ``tiny/stage1``)."""
    return load_config(find_config("stages", name_or_path), StageConfig)


def load_profile(name_or_path: str | os.PathLike[str]) -> ProfileConfig:
    """Load a profile by path or stem (``embedded``), with env vars expanded and
    relative paths made absolute under the project folder the file belongs to."""
    path = find_config("profiles", name_or_path)
    return load_config(path, ProfileConfig).resolve_paths(_profile_root(path))


def load_sampling_profile(name_or_path: str | os.PathLike[str]) -> SamplingProfile:
    """The encoders and device of a profile, read without the keys only training and
    orchestration need (a full profile's other keys are checked by name only)."""
    path = find_config("profiles", name_or_path)
    source = _display_name(path)
    data = _read_yaml(path, source)
    if isinstance(data, Mapping):
        known = list(ProfileConfig.model_fields)
        problems = []
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                problems.append(((), f"unknown key '{key}'{hint} (valid keys: {', '.join(known)})"))
        if problems:
            _raise_problems(source, problems)
        data = {k: v for k, v in data.items() if k in SamplingProfile.model_fields}
    profile = validate_config(data, SamplingProfile, source)
    base = Path(_profile_root(path)).resolve()
    return profile.model_copy(update={
        "vae": profile.vae.model_copy(update={"path": _resolve_path(profile.vae.path, base)}),
        "text_encoder": profile.text_encoder.model_copy(
            update={"path": _resolve_path(profile.text_encoder.path, base)}),
    })


def _profile_root(path: Path) -> Path:
    # A profile inside <root>/configs/profiles belongs to <root>, wherever we run from.
    if path.parent.name == "profiles" and path.parent.parent.name == "configs":
        return path.parent.parent.parent
    return project_root()
