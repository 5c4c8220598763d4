"""Type checking and coercion for config dataclass fields (YAML values and command-line strings).

Config sections are plain dataclasses; this module turns a raw value (from YAML, or a string
from ``--section.key=value``) into the field's declared type, or raises a one-line ConfigError
naming the key, the expected type and the bad value. It also suggests the nearest valid key for
typos.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Literal, Union

import yaml

from nima.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's init fields (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        return "a list"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, key: str, from_string: bool = False) -> Any:
    """Return ``value`` converted to ``hint`` or raise ConfigError naming ``key``.

    ``from_string`` marks command-line values: they are parsed as YAML scalars first
    (``20`` -> 20, ``null`` -> None, ``[0.9, 0.95]`` -> list) unless the field is a string.
    """
    if hint is Any:
        return yaml.safe_load(value) if from_string else value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (
            value is None or (from_string and str(value).strip().lower() in ("null", "none", "~"))
        ):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, from_string)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ConfigError(
            f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            f"{suggest(str(value), map(str, choices))}"
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, str):
            value = _parse_number(value, key, hint)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):
            value = _parse_number(value, key, hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            parsed = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            value = parsed
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} values, got {value!r}")
            return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = [coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    return value


def _parse_number(text: str, key: str, hint: Any) -> Any:
    # YAML 1.1 reads "1e-4" as a string (it wants "1.0e-4"); users write both, so accept both.
    try:
        return int(text.strip()) if hint is int and text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise ConfigError(f"{key} must be {_describe(hint)}, got {text!r}") from None


def build_section(
    cls: type,
    values: dict[str, Any],
    section: str,
    aliases: dict[str, str] | None = None,
    from_string: frozenset[str] = frozenset(),
) -> Any:
    """Construct dataclass ``cls`` from ``values`` with unknown-key and type checks.

    ``section`` prefixes key names in messages (``training.learning_rate``); ``aliases`` maps
    accepted alternative spellings to their canonical field; keys in ``from_string`` hold
    command-line strings still to be parsed.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"section {section}: must be a mapping of key: value, got {values!r}")
    hints = field_types(cls)
    aliases = aliases or {}
    kwargs: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name not in hints:
            known = [f"{section}.{k}" for k in [*hints, *aliases]]
            raise ConfigError(f"unknown key {section}.{key}{suggest(f'{section}.{key}', known)}")
        if name in spelled and spelled[name] != key:
            raise ConfigError(
                f"{section}.{spelled[name]} and {section}.{key} are the same setting; give only one"
            )
        spelled[name] = key
        kwargs[name] = coerce(value, hints[name], f"{section}.{key}", from_string=key in from_string)
    return cls(**kwargs)
