"""``${VAR}`` and ``${VAR:-default}`` in configuration values, resolved at load."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from opensora_core.config.errors import ConfigError

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


def referenced_env_vars(data: Any) -> list[str]:
    """The names of the ``${VAR}``s in the string values of `data` (a loaded config), in
    order, once each; a ``$${`` escape names none."""
    if isinstance(data, str):
        return list(dict.fromkeys(m.group(1) for m in _ENV_PATTERN.finditer(data) if m.group(1)))
    values = data.values() if isinstance(data, Mapping) else data if isinstance(data, list) else []
    return list(dict.fromkeys(name for value in values for name in referenced_env_vars(value)))


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
