"""RunConfig: a whole run (model, training, data), read from YAML with command-line overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nima.config.training import TrainingConfig
from nima.config_fields import ConfigSection, build_section, field_types, suggest
from nima.data import DataConfig
from nima.data.tokenizer import MIN_BPE_VOCAB
from nima.errors import ConfigError
from nima.files import one_line
from nima.models import ModelConfig

SECTIONS: dict[str, type[ConfigSection]] = {
    "model": ModelConfig,
    "training": TrainingConfig,
    "data": DataConfig,
}

CHECKOUT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``nima`` package: a checkout's root when Nima runs from one (as with
``pip install -e .``); the shipped ``configs/`` are found there (they are not installed)."""


@dataclass
class RunConfig:
    """A whole run: model architecture, training recipe and data.

    The rules that tie sections together live here too: a BPE tokenizer is trained to
    ``model.vocab_size`` (:attr:`bpe_vocab_size`, at least 257), and ``model.vocab_size`` follows
    the tokenizer the data was prepared with (:meth:`fit_vocab_size`).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    source: str | None = None
    """Where the config came from (a file path), for messages."""

    def __post_init__(self) -> None:
        vocab = self.model.vocab_size
        if self.data.tokenizer == "bpe" and vocab < MIN_BPE_VOCAB:
            raise ConfigError(
                f"model.vocab_size must be >= {MIN_BPE_VOCAB} with data.tokenizer: bpe (the BPE "
                f"vocabulary is trained to that size: 256 byte values + <|endoftext|>), got {vocab}"
            )

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
        try:
            sections = {
                name: build_section(section, merged.get(name, {}), from_string=from_cli[name])
                for name, section in SECTIONS.items()
            }
            return cls(**sections, source=source)
        except ConfigError as err:
            message = str(err)
            raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
        """Read a YAML config file (safe loader only) and apply ``overrides``.

        An empty file (or one of comments only) is refused: a run of every default (a 19.5M
        model) is almost never what a file that says nothing meant."""
        raw = read_yaml(path)
        if raw is None:
            raise ConfigError(
                f"{path} is empty: a config file needs at least one of the sections model:, training:, "
                "data: (for all the defaults, say so: training: {})"
            )
        return cls.from_dict(raw, source=str(path), overrides=overrides)

    # ------------------------------------------------------------------ rules across sections

    @property
    def bpe_vocab_size(self) -> int | None:
        """The vocabulary size to train a BPE tokenizer to: ``model.vocab_size`` when
        ``data.tokenizer`` is ``bpe``, else None (char and byte vocabularies come from the text,
        a saved tokenizer.json has its own)."""
        return self.model.vocab_size if self.data.tokenizer == "bpe" else None

    def fit_vocab_size(self, tokenizer: Any, say: Callable[[str], Any] = print) -> RunConfig:
        """This run with ``model.vocab_size`` equal to ``tokenizer.vocab_size`` (the tokenizer the
        data was prepared with). When that changes it, ``say`` gets one warning line with the
        reason; when it already matches, the run itself is returned."""
        if self.model.vocab_size == tokenizer.vocab_size:
            return self
        if self.data.tokenizer == "bpe" and tokenizer.vocab_size < self.model.vocab_size:
            why = "the corpus gave fewer BPE merges than asked"
        else:
            why = f"the {self.data.tokenizer} vocabulary comes from the tokenizer"
        say(f"warning: model.vocab_size={self.model.vocab_size} changed to {tokenizer.vocab_size} ({why})")
        return self.replace(model=dataclasses.replace(self.model, vocab_size=tokenizer.vocab_size))

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


# ---------------------------------------------------------------------------------------- files


def read_yaml(path: str | Path) -> Any:
    """The contents of YAML file ``path`` (safe loader only); ConfigError when it is missing,
    unreadable as UTF-8 or not valid YAML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder, not a file; give the path of a YAML file")
    if not path.is_file():
        hint = ""
        configs = Path("configs")
        if configs.is_dir():
            names = sorted(str(p) for p in configs.glob("*.yaml"))
            hint = f"; available: {', '.join(names)}" if names else ""
        raise ConfigError(f"config file not found: {path}{hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{path} is not a config: its YAML is nested too deeply to read") from None
    except Exception as err:  # a constructor's own error (!!int 0xZZ, !!timestamp ...)
        raise ConfigError(f"{path} is not valid YAML ({one_line(err)})") from None


def shipped_config(name: str) -> Path:
    """The path of ``configs/<name>``: in the checkout Nima runs from (:data:`CHECKOUT`, when it
    has a pyproject.toml), else in the working directory; a one-line ConfigError when neither has
    it (an installed Nima ships no configs/)."""
    folders = [CHECKOUT / "configs"] if (CHECKOUT / "pyproject.toml").is_file() else []
    for folder in [*folders, Path("configs")]:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(
        f"configs/{name} not found in Nima's checkout or in ./configs (an installed Nima ships no "
        "configs); run from a Nima checkout or use a config file of your own"
    )


# ---------------------------------------------------------------------------------------- overrides


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
