"""How configuration problems are found and reported: :class:`ConfigError`, the strict
schema base that names the valid keys, and pydantic errors turned into one line each."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class ConfigError(ValueError):
    """A configuration problem; ``problems`` holds one line per problem found."""

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]


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


def _raise_problems(
    source: str,
    problems: list[tuple[tuple[Any, ...], str]],
    locate: Callable[[tuple[Any, ...]], str] | None = None,
) -> None:
    """Raise one ConfigError with a line per problem. ``locate`` maps a key path to the
    file that set it (a stage that extends others); such lines name that file first."""
    lines = []
    for loc, message in problems:
        where = _dotted(loc)
        origin = locate(loc) if locate is not None else source
        line = f"{origin}: {where}: {message}" if where else f"{origin}: {message}"
        lines.append(line if origin == source else f"{line} (inherited by {source})")
    raise ConfigError("\n".join(lines), lines)
