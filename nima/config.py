"""Run configuration: the ``model:``, ``training:`` and ``data:`` sections of a YAML file.

``RunConfig.from_yaml("configs/base_model.yaml", overrides=["--training.max_steps=20"])`` reads the
file with ``yaml.safe_load``, applies command-line overrides and validates every section: an
unknown key is an error that suggests the nearest valid one, values are converted to the field's
type (``--model.n_layers=2`` is an int, ``--training.learning_rate=1e-3`` a float) and impossible
values are one-line :class:`~nima.errors.ConfigError` messages prefixed with where they came from::

    configs/x.yaml: unknown key training.learnig_rate (did you mean training.learning_rate?)

Each setting has one home; a key given in a section it moved out of says where it went
(``configs/x.yaml: training.num_workers moved to data.num_workers``). The checks are the same
for the three sections (:mod:`nima.config_fields`).

Overrides are written ``--section.key=value`` or ``--section.key value``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nima.config_fields import ConfigSection, build_section, field_types, suggest
from nima.data import DataConfig
from nima.errors import ConfigError
from nima.models import ModelConfig
from nima.training.config import TrainingConfig

SECTIONS: dict[str, type[ConfigSection]] = {
    "model": ModelConfig,
    "training": TrainingConfig,
    "data": DataConfig,
}


@dataclass
class RunConfig:
    """A whole run: model architecture, training recipe and data."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    source: str | None = None
    """Where the config came from (a file path), for messages."""

    # ------------------------------------------------------------------ building

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any] | None,
        source: str | None = None,
        overrides: list[str] | dict[str, Any] | None = None,
    ) -> RunConfig:
        """Validate ``raw`` (``{"model": {...}, "training": {...}, "data": {...}}``) plus overrides."""
        where = source or "config"
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{where}: expected sections model:, training:, data: at the top level, "
                f"got {type(raw).__name__}"
            )
        merged: dict[str, dict[str, Any]] = {}
        for section, values in raw.items():
            _check_section(section, where)
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise ConfigError(
                    f"{where}: section {section} must be a mapping of key: value, got {values!r}"
                )
            merged[section] = dict(values)
        from_cli: dict[str, set[str]] = {name: set() for name in SECTIONS}
        if overrides:
            parsed = parse_overrides(overrides) if isinstance(overrides, list) else overrides
            for dotted, value in parsed.items():
                section, key = _split_key(dotted)
                _check_section(section, "command line")
                aliases, moved = SECTIONS[section].ALIASES, SECTIONS[section].MOVED
                if key in moved:
                    raise ConfigError(f"command line: {section}.{key} moved to {moved[key]}")
                values = merged.setdefault(section, {})
                canonical = aliases.get(key, key)
                for spelling in [k for k in values if aliases.get(k, k) == canonical]:
                    del values[spelling]  # an override replaces any spelling of the same key
                values[key] = value
                if isinstance(value, str):
                    from_cli[section].add(key)
        sections: dict[str, Any] = {}
        for name, cls_ in SECTIONS.items():
            values = merged.get(name, {})
            try:
                sections[name] = build_section(cls_, values, from_string=from_cli[name])
            except ConfigError as err:
                message = str(err)
                raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None
        return cls(sections["model"], sections["training"], sections["data"], source=source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
        """Read a YAML config file (safe loader only) and apply ``overrides``."""
        path = Path(path)
        if not path.is_file():
            hint = ""
            configs = Path("configs")
            if configs.is_dir():
                names = sorted(str(p) for p in configs.glob("*.yaml"))
                hint = f"; available: {', '.join(names)}" if names else ""
            raise ConfigError(f"config file not found: {path}{hint}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}:{where} is not valid YAML ({problem})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text") from None
        return cls.from_dict(raw, source=str(path), overrides=overrides)

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (what a YAML file of this config holds)."""
        return {
            "model": self.model.to_dict(),
            "training": self.training.to_dict(),
            "data": self.data.to_dict(),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **sections: Any) -> RunConfig:
        return dataclasses.replace(self, **sections)


def _check_section(section: Any, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(
            f"{where}: unknown section {section!r}{suggest(str(section), SECTIONS)}; "
            f"sections are {', '.join(SECTIONS)}"
        )


def _split_key(dotted: str) -> tuple[str, str]:
    section, sep, key = dotted.partition(".")
    if not sep or not key or "." in key:
        raise ConfigError(
            f"override --{dotted} must be --section.key=value with a section of "
            f"{', '.join(SECTIONS)} (e.g. --training.max_steps=20)"
        )
    return section, key


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--training.max_steps=20", "--model.n_layers", "2"]`` -> ``{"training.max_steps": "20", ...}``.

    Values stay strings here; they are converted to each field's type when the config is built.
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(
                f"unexpected argument {arg!r}; overrides look like --section.key=value "
                "(e.g. --training.max_steps=20)"
            )
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
                raise ConfigError(f"override --{name} needs a value: --{name}=VALUE")
            value = args[i + 1]
            i += 1
        _split_key(name)
        out[name] = value
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def known_keys() -> dict[str, list[str]]:
    """Every valid key per section (for ``--help`` and suggestions)."""
    return {name: list(field_types(cls)) for name, cls in SECTIONS.items()}


__all__ = ["RunConfig", "SECTIONS", "known_keys", "parse_overrides"]
