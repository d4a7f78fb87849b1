"""What every section of the parameters is made of: the error, the section decorator, a field
with its help."""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import field
from typing import Any

import pydantic
import pydantic.dataclasses
import yaml

EMBEDDED = "embedded"
PROFILE_NAMES = ("smoke", "default", "paper")


class ConfigError(ValueError):
    """A parameter file that cannot be used; the message names the file and the key."""


# a section: frozen, every field of its declared type (an int is no bool, a string no number; an
# int is taken for a float), no other key, no NaN or infinity
section = pydantic.dataclasses.dataclass(
    frozen=True,
    config=pydantic.ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
)


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its one line of documentation."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def field_default(f: dataclasses.Field) -> Any:
    """The default of a dataclass field, whether a value or a factory (lists)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def with_override(cfg: Any, option: str, where: str = "option") -> Any:
    """`cfg` (a section) with one 'key=value' override applied and checked."""
    key, sep, text = option.partition("=")
    if not sep:
        raise ConfigError(f"{where}: {option!r} is not 'key=value'")
    return _section(type(cfg), {key.strip(): yaml.safe_load(text)}, f"{where} {option!r}", cfg)


def _yaml_value(value: Any, hint: Any) -> Any:
    """What YAML writes for a declared type: 1e-3 (no dot) is a string to PyYAML, a tuple is a
    list."""
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _section(cls: type, body: Any, where: str, base: Any = None) -> Any:
    """A section `cls` from a (possibly partial) mapping `body` over `base` (default: the declared
    defaults); a refusal names the key under `where`."""
    if not isinstance(body, dict):
        raise ConfigError(
            f"{where}: must be a mapping of {cls.__name__} fields, got {type(body).__name__}"
        )
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in body if k not in known]
    if unknown:
        hint = cls.unknown_key_hint(unknown[0]) if hasattr(cls, "unknown_key_hint") else ""
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(known)}){hint}")
    hints = typing.get_type_hints(cls)
    values = {k: _yaml_value(v, hints[k]) for k, v in body.items()}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "value_error":  # a check of __post_init__: its message names the key
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
            # an override ('key=value' of an arm or a sweep) also says where it was written
            raise ConfigError(f"{where}: {msg}" if "'" in where else msg) from None
        key = ".".join(str(x) for x in err["loc"])
        got = body.get(err["loc"][0], err.get("input")) if err["loc"] else err.get("input")
        if err["type"] == "finite_number":
            raise ConfigError(f"{where}.{key}: must be a finite number, got {got}") from None
        hint = hints.get(err["loc"][0]) if len(err["loc"]) == 1 else None
        expected = getattr(hint, "__name__", None) if hint is not None else None
        what = f"expected {expected}" if expected else err["msg"].lower()
        raise ConfigError(f"{where}.{key}: {what}, got {type(got).__name__} ({got!r})") from None
