"""One validation mechanism for the config sections ``model:``, ``training:`` and ``data:``.

Each section is a dataclass deriving from :class:`ConfigSection`, which names the section::

    @dataclass
    class TrainingConfig(ConfigSection, section="training"):
        learning_rate: float = 3e-4
        ...
        def __post_init__(self) -> None:
            need = check_types(self)  # every field converted to its type hint, or a ConfigError
            need("> 0", "learning_rate")  # ranges: >= x, > x, <= x, < x, in [a, b), in (a, b], ...
            need.one_of("optimizer_type", OPTIMIZERS)  # choices, with a typo suggestion
            need.that(self.min_lr <= self.learning_rate, "min_lr", "<= learning_rate")  # anything else

Every mistake is a one-line :class:`~nima.errors.ConfigError` naming ``section.key``:

- an unknown key (from YAML, the command line or Python keyword arguments) suggests the nearest
  valid one: ``unknown key training.learnig_rate (did you mean training.learning_rate?)``;
- a key that moved says where to: ``training.num_workers moved to data.num_workers``
  (:data:`MOVED`); a second spelling of a key (:data:`ALIASES`) works everywhere the key does;
- a value of the wrong type: ``training.max_steps must be an integer or null, got 2.5``;
- a value out of range: ``training.learning_rate must be > 0, got -0.1``.

Types come from the dataclass type hints. Command-line strings (``--training.max_steps=20``) are
parsed by the field's type; from YAML or Python a value must already have the type, except that a
number written in exponent notation may be a string (YAML 1.1 reads ``1e-4`` as one). An int is a
valid float, a whole float a valid int. Fields typed ``X | None`` accept null. A field typed
``Literal[...]`` (``model.arch``) has its choices checked with its type.

This module sits at the bottom of the dependency chain: it imports nothing from ``nima`` but
:mod:`nima.errors`, so models, data and training all build on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal, Self, Union

import yaml

from nima.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"null", "none", "~"}
# Numbers that YAML 1.1 (PyYAML) reads as strings: exponent notation without a dot or without a
# sign in the exponent (1e-4, 3e5, 1.0e4).
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")


# -------------------------------------------------------------------------------- renamed keys

# Every key with a second spelling, and every key that moved to another section, declared once.
# The sections, the YAML and command-line readers, Python keyword arguments and ``nima train
# --help`` (:func:`renamed_keys_help`) all read these two tables.
ALIASES: dict[str, str] = {  # a second spelling -> the key (same section); the guide uses both
    "training.save_steps": "training.save_every",
    "training.eval_steps": "training.eval_every",
}
MOVED: dict[str, str] = {  # a key that used to live here -> its one home now (an error that says so)
    "training.gradient_checkpointing": "model.gradient_checkpointing",
    "training.num_workers": "data.num_workers",
    "data.seed": "training.seed",
}


def renamed_keys_help() -> list[str]:
    """The ``--help`` lines about :data:`ALIASES` and :data:`MOVED`."""
    return [
        "aliases: " + ", ".join(f"{alias} = {key}" for alias, key in ALIASES.items()),
        "moved: " + ", ".join(f"{old} is now {new}" for old, new in MOVED.items()),
    ]


def _in_section(table: Mapping[str, str], section: str) -> dict[str, str]:
    """``{"training.x": "y.z"}`` -> ``{"x": "y.z"}`` for the keys of ``section``."""
    return {key.partition(".")[2]: home for key, home in table.items() if key.partition(".")[0] == section}


class _SectionType(type):
    """Checks the keyword arguments of every section's constructor and maps aliases to their key,
    so ``TrainingConfig(save_steps=5, typo=1)`` is checked like the same keys in a YAML file."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **canonical_keys(cls, kwargs))


class ConfigSection(metaclass=_SectionType):
    """Base of the config section dataclasses: ``class XConfig(ConfigSection, section="x")``.

    The section's aliases and moved keys come from :data:`ALIASES` and :data:`MOVED`: ``XConfig``
    accepts an alias as a keyword argument and reads it as an attribute (``cfg.save_steps`` is
    ``cfg.save_every``), and a moved or unknown keyword is the same one-line ConfigError as the
    key in a YAML file.
    """

    SECTION: ClassVar[str] = ""
    ALIASES: ClassVar[Mapping[str, str]] = {}
    """This section's part of :data:`ALIASES`: ``{"save_steps": "save_every"}``."""
    MOVED: ClassVar[Mapping[str, str]] = {}
    """This section's part of :data:`MOVED`: ``{"num_workers": "data.num_workers"}``."""

    def __init_subclass__(cls, section: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if section is None:  # a subclass without a section keeps its parent's
            return
        cls.SECTION = section
        cls.MOVED = _in_section(MOVED, section)
        cls.ALIASES = {}
        for alias, key in _in_section(ALIASES, section).items():
            home, _, name = key.partition(".")
            assert home == section, f"alias {section}.{alias} must name a key of its own section"
            cls.ALIASES[alias] = name
            setattr(cls, alias, _alias_property(name))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build from a mapping such as a YAML section (unknown keys suggest the nearest one)."""
        return build_section(cls, values)


def _alias_property(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(self, name)

    def set_(self: Any, value: Any) -> None:
        setattr(self, name, value)

    return property(get, set_, doc=f"Same as {name}.")


# ---------------------------------------------------------------------------------------- keys


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's init fields (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to ``name``, or None when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def suggest(name: str, choices: Iterable[str], quote: bool = False) -> str:
    """' (did you mean X?)' for the nearest choice, or '' when nothing is close."""
    match = closest(name, choices)
    if match is None:
        return ""
    return f" (did you mean {match!r}?)" if quote else f" (did you mean {match}?)"


def check_key(cls: type, key: Any) -> str:
    """The canonical field name of ``key`` in section ``cls``; ConfigError when unknown or moved."""
    section = cls.SECTION
    if key in cls.MOVED:
        raise ConfigError(f"{section}.{key} moved to {cls.MOVED[key]}")
    name = cls.ALIASES.get(key, key)
    hints = field_types(cls)
    if name not in hints:
        known = [*hints, *cls.ALIASES]
        match = closest(str(key), known)
        hint = f"did you mean {section}.{match}?" if match else f"valid keys: {', '.join(known)}"
        raise ConfigError(f"unknown key {section}.{key} ({hint})")
    return name


def build_section(cls: type, values: Mapping[str, Any], from_string: Iterable[str] = ()) -> Any:
    """Construct section dataclass ``cls`` from ``values`` with key, type and value checks.

    Keys in ``from_string`` hold command-line strings, parsed by their field's type.
    """
    section = cls.SECTION
    if not isinstance(values, Mapping):
        raise ConfigError(f"section {section}: must be a mapping of key: value, got {values!r}")
    from_string = frozenset(from_string)
    hints = field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, name, value in _checked_items(cls, values):
        kwargs[name] = coerce(value, hints[name], f"{section}.{key}", from_string=key in from_string)
    return cls(**kwargs)


def canonical_keys(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every key checked (:func:`check_key`) and spelled as its field."""
    return {name: value for _, name, value in _checked_items(cls, values)}


def _checked_items(cls: type, values: Mapping[Any, Any]) -> Iterator[tuple[Any, str, Any]]:
    """``(key as given, its field, value)`` per item; ConfigError for an unknown or moved key, or
    for two spellings of one key."""
    spelled: dict[str, Any] = {}
    for key, value in values.items():
        name = check_key(cls, key)
        if name in spelled:
            raise ConfigError(
                f"{cls.SECTION}.{spelled[name]} and {cls.SECTION}.{key} are the same setting; give only one"
            )
        spelled[name] = key
        yield key, name, value


# --------------------------------------------------------------------------------------- types


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
    """Return ``value`` converted to type ``hint`` or raise ConfigError naming ``key``.

    ``from_string`` marks command-line values: they are parsed by the type (``20`` -> 20, ``null``
    -> None, ``yes`` -> True, ``0.9,0.95`` -> a list) unless the field is a string.
    """
    if hint is Any:
        return yaml.safe_load(value) if from_string and isinstance(value, str) else value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (
            value is None or (from_string and isinstance(value, str) and value.strip().lower() in _NULL)
        ):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, from_string)
            except ConfigError:
                pass
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
            f"{key} must be {_describe(hint)}, got {value!r}"
            f"{suggest(str(value), [str(c) for c in choices], quote=True)}"
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_string and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int or hint is float:
        if isinstance(value, str) and (from_string or _EXPONENT_NUMBER.fullmatch(value.strip())):
            value = _parse_number(value, key, hint)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}")
        if hint is float:
            if isinstance(value, int) and abs(value) > 1e308:  # float() would overflow
                digits = value.bit_length() * 3 // 10  # str() of a huge int is refused by Python itself
                raise ConfigError(f"{key} must be {_describe(hint)} up to 1e308, got one of {digits} digits")
            return float(value)
        given = value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            # Nothing Nima counts goes near 2**63 (torch's and numpy's integers stop there).
            if abs(value) >= 2**63:
                raise ConfigError(f"{key} must be an integer below 2**63, got {given!r}")
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if origin in (tuple, list):
        if from_string and isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
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
    stripped = text.strip()
    try:
        return int(stripped) if hint is int and stripped.lstrip("+-").isdigit() else float(stripped)
    except ValueError:
        raise ConfigError(f"{key} must be {_describe(hint)}, got {text!r}") from None


def check_types(obj: Any) -> Need:
    """Convert every field of section ``obj`` to its declared type (in place; ConfigError naming
    ``section.key`` when it cannot be) and return the :class:`Need` that states its value rules."""
    section = type(obj).SECTION
    for name, hint in field_types(type(obj)).items():
        setattr(obj, name, coerce(getattr(obj, name), hint, f"{section}.{name}"))
    return Need(obj)


# -------------------------------------------------------------------------------------- values


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType) and type(None) in typing.get_args(hint)


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, b: v >= b,
    ">": lambda v, b: v > b,
    "<=": lambda v, b: v <= b,
    "<": lambda v, b: v < b,
}


@functools.cache
def _range_test(rule: str) -> Callable[[float], bool]:
    """``">= 1"``, ``"> 0"``, ``"<= 1"``, ``"< 1"``, ``"in [0, 1)"``, ``"in (0, 1)"`` -> a test."""
    m = re.fullmatch(r"(>=|>|<=|<) *(\S+)", rule)
    if m:
        compare, bound = _COMPARE[m[1]], float(m[2])
        return lambda v: compare(v, bound)
    m = re.fullmatch(r"in *([\[(]) *([^,\s]+) *, *([^\])\s]+) *([\])])", rule)
    if m:
        low = _COMPARE[">=" if m[1] == "[" else ">"]
        high = _COMPARE["<=" if m[4] == "]" else "<"]
        lo, hi = float(m[2]), float(m[3])
        return lambda v: low(v, lo) and high(v, hi)
    raise ValueError(f"unknown range rule {rule!r}: use >= x, > x, <= x, < x or in [a, b) style")


class Need:
    """The value rules of one config section, stated in its ``__post_init__``.

    ``need(">= 1", "batch_size", "max_steps")`` checks a range on numeric fields (a field that is
    null and typed ``X | None`` passes; nan and infinity never do); ``need.one_of(key, choices)``
    checks a choice and suggests the nearest; ``need.that(ok, key, rule)`` any other condition.
    Each failure is ``ConfigError("<section>.<key> must be <rule>, got <value>")``.
    """

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.section = type(obj).SECTION
        self.hints = field_types(type(obj))

    def __call__(self, rule: str, *keys: str) -> None:
        test = _range_test(rule)
        for key in keys:
            value = getattr(self.obj, key)
            optional = _optional(self.hints[key])
            if value is None and optional:
                continue
            if not (math.isfinite(value) and test(value)):
                self.fail(key, f"{rule} (or null)" if optional else rule)

    def one_of(self, key: str, choices: Iterable[str]) -> None:
        choices = list(choices)
        value = getattr(self.obj, key)
        if value not in choices:
            self.fail(key, f"one of {', '.join(choices)}", suggest(str(value), choices))

    def that(self, ok: bool, key: str, rule: str, hint: str = "") -> None:
        if not ok:
            self.fail(key, rule, hint)

    def fail(self, key: str, rule: str, hint: str = "") -> typing.NoReturn:
        raise ConfigError(f"{self.section}.{key} must be {rule}, got {getattr(self.obj, key)!r}{hint}")


__all__ = [
    "ALIASES",
    "MOVED",
    "ConfigSection",
    "Need",
    "build_section",
    "canonical_keys",
    "check_key",
    "check_types",
    "closest",
    "coerce",
    "field_types",
    "renamed_keys_help",
    "suggest",
]
