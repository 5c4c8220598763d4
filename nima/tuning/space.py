"""The search space of ``nima sweep``: which config keys to search, and over which values.

One dimension per config key, spelled on the command line as ``--space KEY=SPEC``:

=============================================  ===========================================================
``training.learning_rate=log:1e-4..3e-3``      log-uniform between the two bounds
``training.warmup_steps=0..200``               uniform; an integer or a float as the field is
``training.warmup_steps=int:0..200``           the same, saying the type (``float:`` too)
``model.n_layers=int:log:2..8``                prefixes combine
``model.d_model=choice:64,128``                one of the values (typed like the field)
=============================================  ===========================================================

or in YAML, in a ``sweep:`` section (of the run config, or of a file given as ``--space FILE.yaml``)::

    sweep:
      training.learning_rate: {low: 1e-4, high: 3e-3, log: true}
      training.warmup_steps: {low: 0, high: 200, step: 10}
      model.d_model: [64, 128]            # a list is a choice (or {choices: [64, 128]})
      training.lr_scheduler_type: choice:cosine,linear   # the command-line spelling works too

Keys are checked like every config key (a typo gets a suggestion); a bad spelling is one
:class:`~nima.errors.ConfigError` line that names the key and the expected form. Nothing here
imports optuna until :meth:`Dimension.distribution` is called.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from nima.config import SECTIONS
from nima.config_fields import check_key, coerce, field_types, suggest
from nima.errors import ConfigError

FORMS = (
    "KEY=LOW..HIGH, KEY=log:LOW..HIGH, KEY=int:LOW..HIGH or KEY=choice:A,B,C "
    "(e.g. training.learning_rate=log:1e-4..3e-3, model.d_model=choice:64,128)"
)
PREFIXES = ("int", "float", "log", "choice")
YAML_FIELDS = ("low", "high", "log", "step", "type", "choices")

Kind = Literal["int", "float", "choice"]


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a range of ints or floats (optionally log-scaled, optionally in
    steps) or a choice of values."""

    key: str
    """``section.key`` (canonical spelling)."""
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        """The command-line spelling (``log:0.0001..0.003``, ``int:0..200``, ``choice:64,128``)."""
        if self.kind == "choice":
            return "choice:" + ",".join(_spell(c) for c in self.choices)
        prefix = ("int:" if self.kind == "int" else "") + ("log:" if self.log else "")
        step = f" step {_spell(self.step)}" if self.step is not None else ""
        return f"{prefix}{_spell(self.low)}..{_spell(self.high)}{step}"

    def edges(self) -> list[Any]:
        """The values that bound the dimension (checked against the config before searching)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def distribution(self) -> Any:
        """The Optuna distribution of this dimension."""
        # optuna is an optional extra: imported only when a sweep runs, not to parse a space.
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


def _spell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).splitlines()[0]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------- keys


def field_of(key: Any, where: str) -> tuple[str, Any]:
    """``section.key`` checked against the config sections: its canonical spelling and type hint.
    A typo gets a suggestion (``unknown key training.learnig_rate (did you mean ...?)``)."""
    section, dot, name = str(key).partition(".")
    if not dot or not name or "." in name:
        raise ConfigError(
            f"{where}: expected a config key section.key (e.g. training.learning_rate), got {key!r}"
        )
    if section not in SECTIONS:
        raise ConfigError(
            f"{where}: unknown section {section!r}{suggest(section, SECTIONS)}; "
            f"sections are {', '.join(SECTIONS)}"
        )
    cls = SECTIONS[section]
    try:
        canonical = check_key(cls, name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return f"{section}.{canonical}", field_types(cls)[canonical]


def numeric_kind(hint: Any) -> Kind | None:
    """``int`` or ``float`` for a field that holds a number (``int | None``, ``int | Literal["auto"]``
    too), None for other fields."""
    args = typing.get_args(hint) if typing.get_origin(hint) is not None else (hint,)
    if float in args:
        return "float"
    if int in args:
        return "int"
    return None


# ---------------------------------------------------------------------------------------- parsing


def parse_dimension(key: Any, spec: Any, where: str = "--space") -> Dimension:
    """One dimension from a key and its spec: a string (``log:1e-4..3e-3``, ``choice:64,128``), a list
    (a choice), or a mapping (``{low: 1e-4, high: 3e-3, log: true}`` or ``{choices: [...]}``)."""
    shown = f"{key}={spec}" if isinstance(spec, str) else f"{key}: {spec!r}"
    where = f"{where} {shown}"
    key, hint = field_of(key, where)
    if isinstance(spec, bool) or spec is None or isinstance(spec, (int, float)):
        raise ConfigError(
            f"{where}: a single value is not a search space; give a range or a choice ({FORMS}), "
            f"or set it with --{key}=VALUE"
        )
    if isinstance(spec, (list, tuple)):
        return _choice(key, hint, list(spec), where)
    if isinstance(spec, Mapping):
        return _from_mapping(key, hint, spec, where)
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: expected {FORMS}")
    return _from_string(key, hint, spec.strip(), where)


def _from_string(key: str, hint: Any, spec: str, where: str) -> Dimension:
    prefixes: list[str] = []
    rest = spec
    while ":" in rest:
        head, _, tail = rest.partition(":")
        head = head.strip().lower()
        if head not in PREFIXES:
            break
        prefixes.append(head)
        rest = tail.strip()
        if head == "choice":
            break
    if "choice" in prefixes:
        if len(prefixes) > 1:
            raise ConfigError(f"{where}: choice: takes no other prefix; expected choice:A,B,C")
        values = [v.strip() for v in rest.split(",")]
        if not rest.strip() or not all(values):
            raise ConfigError(f"{where}: expected choice:A,B,C with at least one value (e.g. choice:64,128)")
        return _choice(key, hint, values, where, from_string=True)
    if ":" in rest:
        head = rest.partition(":")[0].strip()
        raise ConfigError(
            f"{where}: unknown prefix {head + ':'!r}{suggest(head, PREFIXES)}; the prefixes are "
            "int:, float:, log: and choice:"
        )
    if ".." not in rest:
        raise ConfigError(f"{where}: expected {FORMS}")
    low_text, _, high_text = rest.partition("..")
    if len(set(prefixes)) != len(prefixes) or {"int", "float"} <= set(prefixes):
        raise ConfigError(f"{where}: give int: or float: once, optionally with log: (e.g. int:log:8..128)")
    kind = "int" if "int" in prefixes else "float" if "float" in prefixes else None
    low = _number(low_text, where)
    high = _number(high_text, where)
    return _range(key, hint, low, high, log="log" in prefixes, step=None, kind=kind, where=where)


def _from_mapping(key: str, hint: Any, spec: Mapping[str, Any], where: str) -> Dimension:
    unknown = [k for k in spec if k not in YAML_FIELDS]
    if unknown:
        name = str(unknown[0])
        raise ConfigError(
            f"{where}: unknown field {name!r}{suggest(name, YAML_FIELDS, quote=True)}; expected "
            "{low: L, high: H} with optional log: true, step: S, type: int|float, or {choices: [A, B]}"
        )
    if "choices" in spec:
        if len(spec) > 1:
            raise ConfigError(f"{where}: choices: stands alone (no low/high/log/step/type with it)")
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)):
            raise ConfigError(f"{where}: choices must be a list, e.g. {{choices: [64, 128]}}")
        return _choice(key, hint, list(choices), where)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(
            f"{where}: expected {{low: L, high: H}} (optional log: true, step: S, type: int|float) "
            "or {choices: [A, B]}"
        )
    kind = spec.get("type")
    if kind not in (None, "int", "float"):
        raise ConfigError(f"{where}: type must be int or float, got {kind!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    low, high = (_number(spec[name], where) for name in ("low", "high"))
    step = None if spec.get("step") is None else _number(spec["step"], where)
    return _range(key, hint, low, high, log=log, step=step, kind=kind, where=where)


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a number")
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    try:
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number (expected {FORMS})") from None


def _range(
    key: str,
    hint: Any,
    low: float | int,
    high: float | int,
    *,
    log: bool,
    step: float | int | None,
    kind: str | None,
    where: str,
) -> Dimension:
    field_kind = numeric_kind(hint)
    if field_kind is None:
        raise ConfigError(
            f"{where}: {key} is not a number, so it cannot take a range; use choice:A,B (e.g. "
            f"{key}=choice:...)"
        )
    if kind == "float" and field_kind == "int":
        raise ConfigError(f"{where}: {key} is an integer; use LOW..HIGH or int:LOW..HIGH")
    kind = kind or field_kind
    if not all(math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{where}: the bounds must be finite numbers")
    if kind == "int":
        whole = [v for v in (low, high, step) if v is not None and float(v) != int(v)]
        if whole:
            raise ConfigError(
                f"{where}: {key} is an integer; bounds and step must be whole numbers, got {whole[0]}"
            )
        low, high = int(low), int(high)
        step = None if step is None else int(step)
    else:
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    if not low < high:
        raise ConfigError(f"{where}: the low end must be below the high end (LOW..HIGH), got {low}..{high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log: range needs a low end above 0, got {low}")
    if step is not None:
        if step <= 0:
            raise ConfigError(f"{where}: step must be above 0, got {step}")
        if log and (kind == "float" or step != 1):
            raise ConfigError(f"{where}: log: and step cannot go together (Optuna samples one or the other)")
    return Dimension(key, kind, low, high, log=log, step=step)  # type: ignore[arg-type]


def _choice(key: str, hint: Any, values: list[Any], where: str, from_string: bool = False) -> Dimension:
    if not values:
        raise ConfigError(f"{where}: a choice needs at least one value (e.g. choice:64,128)")
    typed = []
    for value in values:
        try:
            value = coerce(value, hint, key, from_string=from_string)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise ConfigError(
                f"{where}: choices must be single values (numbers, strings, true/false), got {value!r}"
            )
        typed.append(value)
    if len(set(map(repr, typed))) != len(typed):
        raise ConfigError(f"{where}: a choice lists a value twice")
    return Dimension(key, "choice", choices=tuple(typed))


# ---------------------------------------------------------------------------------------- spaces


def read_space_file(path: Path, where: str = "--space") -> dict[str, Any]:
    """The ``sweep:`` section of a YAML file (or the whole file when it has no such section)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where} {path}: cannot be read ({err})") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where} {path}: not valid YAML ({problem})") from None
    section = raw.get("sweep", raw) if isinstance(raw, dict) else raw
    if not isinstance(section, dict) or not section:
        raise ConfigError(
            f"{where} {path}: expected a sweep: section mapping config keys to ranges "
            "(e.g. sweep: {training.learning_rate: {low: 1e-4, high: 3e-3, log: true}})"
        )
    return section


def parse_space(
    spec: str | Path | Mapping[str, Any] | Iterable[str | Path | Mapping[str, Any]] | None,
    where: str = "--space",
) -> dict[str, Dimension]:
    """The search space from ``--space`` values: ``KEY=SPEC`` strings, YAML files (their ``sweep:``
    section), mappings ``{key: spec}``; one or an iterable of them. A key given twice is an error."""
    if spec is None:
        return {}
    items = [spec] if isinstance(spec, (str, Path, Mapping)) else list(spec)
    space: dict[str, Dimension] = {}

    def add(dim: Dimension, shown: str) -> None:
        if dim.key in space:
            raise ConfigError(f"{where} {shown}: {dim.key} is searched twice; give it once")
        space[dim.key] = dim

    for item in items:
        if isinstance(item, Mapping):
            for key, value in item.items():
                add(parse_dimension(key, value, where), str(key))
            continue
        text = str(item).strip()
        if isinstance(item, Path) or (text.lower().endswith((".yaml", ".yml")) and "=" not in text):
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"{where} {text}: no such file (a space file holds a sweep: section)")
            for key, value in read_space_file(path, where).items():
                add(parse_dimension(key, value, f"{where} {path}:"), str(key))
            continue
        key, eq, value = text.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"{where} {text!r}: expected {FORMS}")
        add(parse_dimension(key.strip(), value.strip(), where), text)
    return space


def space_to_json(space: Mapping[str, Dimension]) -> dict[str, str]:
    """The space as ``{key: spelling}``: what a study records, to tell a resumed sweep's space."""
    return {key: dim.describe() for key, dim in space.items()}


__all__ = ["Dimension", "FORMS", "parse_dimension", "parse_space", "read_space_file", "space_to_json"]
