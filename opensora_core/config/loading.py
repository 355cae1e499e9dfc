"""Finding config files in the project folder, reading their YAML and validating it
against a schema; every failure is a :class:`ConfigError` naming the file."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from opensora_core.config.env import _expand_tree
from opensora_core.config.errors import ConfigError, _describe, _raise_problems, _show
from opensora_core.config.profile import ProfileConfig, SamplingProfile, _resolve_path
from opensora_core.config.stage import StageConfig

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound=StageConfig)

CONFIG_KINDS: tuple[str, ...] = ("models", "stages", "profiles", "data")

# Lets deployments (TorchX jobs, Dagster code locations) point at a project folder
# without depending on their working directory.
_ROOT_ENV_VAR = "OPENSORA_PROJECT_ROOT"


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
    return _validate(data, schema, source, expand_env_vars=expand_env_vars)


def _validate(
    data: Any,
    schema: type[M],
    source: str,
    *,
    expand_env_vars: bool = True,
    locate: Callable[[tuple[Any, ...]], str] | None = None,
) -> M:
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{source}: top level must be a mapping of keys, got {kind}")
    if expand_env_vars:
        env_problems: list[tuple[tuple[Any, ...], str]] = []
        data = _expand_tree(data, (), env_problems)
        if env_problems:
            _raise_problems(source, env_problems, locate)
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors(include_url=False)]
        _raise_problems(source, problems, locate)
        raise AssertionError("unreachable") from err


def load_config(path: str | os.PathLike[str], schema: type[M]) -> M:
    """Read a YAML file and validate it against ``schema``; every failure is a ConfigError.

    A stage config (``schema`` :class:`StageConfig`) may ``extends:`` another first.
    """
    if issubclass(schema, StageConfig):
        return _load_stage_file(Path(path), schema)
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
    return Path(__file__).resolve().parents[2]


def config_dir(kind: str) -> Path:
    """``<project>/configs/<kind>`` for one of :data:`CONFIG_KINDS`."""
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"unknown config kind '{kind}' (valid: {', '.join(CONFIG_KINDS)})")
    return project_root() / "configs" / kind


def _available_stems(directory: Path, *, bases: bool = True) -> list[str]:
    if not directory.is_dir():
        return []
    stems = {
        str(p.relative_to(directory).with_suffix(""))
        for pattern in ("*.yaml", "*.yml")
        for p in directory.rglob(pattern)
        if bases or not is_stage_base(p)
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
    stems = _available_stems(directory, bases=kind != "stages")
    listing = ", ".join(stems) if stems else f"none; {directory} has no YAML files"
    raise ConfigError(f"unknown {kind} config '{raw}' (available: {listing})")


def load_stage(name_or_path: str | os.PathLike[str]) -> StageConfig:
    """Load a stage config by path or stem (``stage1``, ``tiny/stage1``), with the
    files it extends merged under it."""
    return _load_stage_file(find_config("stages", name_or_path), StageConfig)


# ---------------------------------------------------------------- stage inheritance
#
# A stage file may start from another: `extends: tiny/base` (a stem under configs/stages,
# as --stage takes) or `extends: base.yaml` (a path ending in .yaml/.yml, relative to the
# extending file). The parent is read first (it may extend another in turn) and the
# child's keys are merged over it: mappings merge key by key, recursively; anything
# else the child sets (a scalar, a list, null) replaces the parent's value whole. So
# `mask_ratios: null` in a child means null, not "inherit": a key cannot be deleted, only
# set. Environment variables are expanded after the merge, in the merged values only.
# Files named *base.yaml hold shared keys and are never stages themselves.

EXTENDS_KEY = "extends"
_BASE_SUFFIX = "base"


def is_stage_base(path: str | os.PathLike[str]) -> bool:
    """Whether a file under configs/stages is a base for other stages (``base.yaml``,
    ``tiny/base.yaml``, ``*base.yaml``) rather than a stage of its own."""
    return Path(path).stem.endswith(_BASE_SUFFIX)


def _stages_dir_of(path: Path) -> Path:
    # A stage inside <root>/configs/stages extends within <root>, wherever we run from.
    for parent in path.resolve().parents:
        if parent.name == "stages" and parent.parent.name == "configs":
            return parent
    return config_dir("stages")


def _resolve_extends(ref: Any, path: Path, source: str) -> Path:
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(
            f"{source}: {EXTENDS_KEY}: expected a stage name (tiny/base) or a path ending "
            f"in .yaml relative to this file, got {_show(ref)}"
        )
    if Path(ref).suffix in (".yaml", ".yml"):
        candidate = Path(ref).expanduser()
        candidate = candidate if candidate.is_absolute() else path.parent / candidate
        if not candidate.is_file():
            raise ConfigError(
                f"{source}: {EXTENDS_KEY}: file not found: {ref} "
                f"(looked for {_display_name(candidate.resolve())})"
            )
        return candidate.resolve()
    directory = _stages_dir_of(path)
    for suffix in (".yaml", ".yml"):
        option = directory / f"{ref}{suffix}"
        if option.is_file():
            return option.resolve()
    stems = _available_stems(directory)
    listing = ", ".join(stems) if stems else f"none; {directory} has no YAML files"
    raise ConfigError(
        f"{source}: {EXTENDS_KEY}: unknown stages config '{ref}' (available: {listing}; "
        "a path relative to this file must end in .yaml)"
    )


def _paths_below(value: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    found = [path]
    if isinstance(value, Mapping):
        for key, child in value.items():
            found += _paths_below(child, (*path, str(key)))
    return found


def _merge(
    parent: Mapping[Any, Any],
    child: Mapping[Any, Any],
    origin: dict[tuple[str, ...], str],
    source: str,
    prefix: tuple[str, ...] = (),
) -> dict[Any, Any]:
    """``child`` over ``parent`` (mappings merged, other values replaced); ``origin``
    (key path -> file that set it) is updated in place."""
    merged = dict(parent)
    for key, value in child.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value, origin, source, path)
            origin[path] = source  # a check on the whole mapping blames the last writer
            continue
        for stale in [p for p in origin if p[: len(path)] == path]:
            del origin[stale]
        merged[key] = value
        origin.update(dict.fromkeys(_paths_below(value, path), source))
    return merged


def _read_stage_tree(
    path: Path, chain: tuple[Path, ...] = ()
) -> tuple[dict[Any, Any], dict[tuple[str, ...], str]]:
    """The merged mapping of a stage file and the files it extends, and which file set
    each key path."""
    source = _display_name(path)
    data = _read_yaml(path, source)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{source}: top level must be a mapping of keys, got {kind}")
    data = dict(data)
    if EXTENDS_KEY not in data:
        origin: dict[tuple[str, ...], str] = {}
        return _merge({}, data, origin, source), origin
    parent = _resolve_extends(data.pop(EXTENDS_KEY), path, source)
    here = path.resolve()
    if parent in (*chain, here):
        loop = [*chain, here]
        loop = loop[loop.index(parent):] + [parent]
        raise ConfigError(
            f"{source}: {EXTENDS_KEY}: cycle: {' -> '.join(_display_name(p) for p in loop)}"
        )
    parent_data, origin = _read_stage_tree(parent, (*chain, here))
    return _merge(parent_data, data, origin, source), origin


def read_stage_data(name_or_path: str | os.PathLike[str]) -> dict[Any, Any]:
    """A stage config's mapping with its ``extends`` chain merged, as YAML gives it
    (``${VAR}`` not expanded, nothing validated): for code that edits a stage before
    validating it."""
    return _read_stage_tree(find_config("stages", name_or_path))[0]


def _load_stage_file(path: Path, schema: type[S]) -> S:
    source = _display_name(path)
    if is_stage_base(path):
        raise ConfigError(
            f"{source}: a base for other stage configs (its name ends in "
            f"{_BASE_SUFFIX}.yaml), not a stage; load a stage that extends it"
        )
    data, origin = _read_stage_tree(path)

    def locate(loc: tuple[Any, ...]) -> str:
        parts = tuple(str(part) for part in loc if part != "[key]")
        for end in range(len(parts), 0, -1):
            if parts[:end] in origin:
                return origin[parts[:end]]
        return source

    return _validate(data, schema, source, locate=locate)


def load_profile(name_or_path: str | os.PathLike[str]) -> ProfileConfig:
    """Load a profile by path or stem (``embedded``), with env vars expanded and
    relative paths made absolute under the project folder the file belongs to."""
    path = find_config("profiles", name_or_path)
    return load_config(path, ProfileConfig).resolve_paths(_profile_root(path))


def load_sampling_profile(name_or_path: str | os.PathLike[str]) -> SamplingProfile:
    """The encoders, device and attention backend of a profile, read without the keys
    only training and orchestration need (a full profile's other keys are checked by
    name only)."""
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
