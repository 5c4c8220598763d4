"""The plan of a sweep: the config, what each trial changes in it, and the space searched.

Everything here is decided once, before the study is opened, and refused with one
:class:`~nima.errors.ConfigError` line when it makes no sense, so that nothing runs for a sweep
that would fail: the config (a YAML file whose ``sweep:`` section adds to the space, a
:class:`~nima.config.RunConfig` or a dict), the overrides, the trials' length and evaluation
interval, and the space, each end of which must make a valid config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nima.config import RunConfig, parse_overrides
from nima.errors import ConfigError
from nima.files import check_writable
from nima.tuning.space import Dimension, field_of, parse_space

Say = Callable[[str], Any]


@dataclass
class Plan:
    """Everything a trial needs, decided once per sweep."""

    raw: dict[str, Any]
    """The config's sections as a YAML file holds them (no ``sweep:`` section)."""
    source: str
    overrides: dict[str, Any]
    trial_settings: dict[str, Any]
    """What trials change besides the searched values (their length, evaluation, checkpoints)."""
    space: dict[str, Dimension]
    study_dir: Path
    keep_checkpoints: bool

    @property
    def trial_steps(self) -> int | None:
        """Training steps per trial (None: the config's epochs)."""
        return self.trial_settings.get("training.max_steps")

    def trial_config(self, params: Mapping[str, Any], output_dir: Path) -> RunConfig:
        """The config of one trial: the base config, the trial settings, the trial's values."""
        extra = {**self.trial_settings, "training.output_dir": str(output_dir)}
        return RunConfig.from_dict(
            self.raw, source=self.source, overrides={**self.overrides, **extra, **params}
        )

    def best_config(self, params: Mapping[str, Any]) -> RunConfig:
        """The base config (its own length and output folder) with ``params``."""
        return RunConfig.from_dict(self.raw, source=self.source, overrides={**self.overrides, **params})


def make_plan(
    config: str | Path | RunConfig | Mapping[str, Any],
    space: Any,
    overrides: list[str] | Mapping[str, Any] | None,
    steps: int | None,
    study_dir: str | Path | None,
    keep_checkpoints: bool,
    say: Say,
) -> Plan:
    """Load the config, decide the trials' settings and the space (and say them), and make the
    study folder."""
    raw, source, file_space = load_config(config)
    parsed = _parse_overrides(overrides)
    base = RunConfig.from_dict(raw, source=source, overrides=parsed)
    trial_settings, setting_notes = trial_settings_of(base, parsed, steps, keep_checkpoints)
    trial_steps = trial_settings.get("training.max_steps")
    dims = {**parse_space(file_space, where=f"{source} sweep:"), **parse_space(space)}
    default = not dims
    if default:
        dims = default_space(base, trial_steps)
    check_space_against_config(raw, source, parsed, dims)
    spelled = ", ".join(f"{k}={d.describe()}" for k, d in dims.items())
    say(f"space{' (default)' if default else ''}: {spelled}")
    for note in setting_notes:
        say(note)
    replaced = [k for k in parsed if _canonical(k) in dims]
    if replaced:
        say(f"note: {', '.join('--' + k for k in replaced)} replaced by the searched values")

    folder = Path(study_dir) if study_dir else Path(base.training.output_dir) / "sweep"
    check_writable(folder, "--study_dir" if study_dir else "--study_dir (default: <output_dir>/sweep)")
    folder.mkdir(parents=True, exist_ok=True)
    return Plan(raw, source, parsed, trial_settings, dims, folder, keep_checkpoints)


def load_config(config: str | Path | RunConfig | Mapping[str, Any]) -> tuple[dict[str, Any], str, Any]:
    """The config as raw sections (what a YAML file holds), its source, and its ``sweep:`` section.

    Raw sections, not a RunConfig: each trial applies its values to them as overrides and the
    whole config is validated again, so that a field left unset (``d_ff: null``) follows a
    searched one (``d_model``).
    """
    if isinstance(config, RunConfig):
        # The fields as set (a model's d_ff: null stays null, so that a searched d_model changes it).
        sections = {"model": config.model, "training": config.training, "data": config.data}
        raw = {
            name: {f.name: getattr(sec, f.name) for f in dataclasses.fields(sec)}
            for name, sec in sections.items()
        }
        return _plain(raw), config.source or "config", None
    if isinstance(config, Mapping):
        raw = dict(config)
        return raw, "config", raw.pop("sweep", None)
    path = Path(config)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except Exception:  # whatever is wrong, RunConfig.from_yaml words it below
        loaded = None
    if not isinstance(loaded, dict):
        # Missing, unreadable, not YAML, not sections: RunConfig words the error as nima train
        # does (an empty file is the default config, as there).
        RunConfig.from_yaml(path)
        loaded = {}
    file_space = loaded.pop("sweep", None)  # nima train would refuse the section: not passed on
    return loaded, str(path), file_space


def _plain(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        s: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()} for s, values in raw.items()
    }


def _parse_overrides(overrides: list[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    return dict(parse_overrides(list(overrides)))


def _canonical(dotted: str) -> str:
    """The key an override sets, by its canonical name (an alias such as eval_steps is eval_every)."""
    try:
        return field_of(dotted, "override")[0]
    except ConfigError:
        return dotted


def trial_settings_of(
    base: RunConfig, overrides: Mapping[str, Any], steps: int | None, keep_checkpoints: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """What trials change besides the searched values: their length; an evaluation interval that
    gives the pruner something to compare (when the config's would evaluate only at the end); no
    periodic checkpoints unless they are kept. Returns the overrides and the notes to say."""
    training, notes = base.training, []
    settings: dict[str, Any] = {}
    if not keep_checkpoints:  # removed when the trial ends: writing step_N / epoch_N is wasted time
        settings.update({"training.save_every": 0, "training.save_epoch_checkpoints": False})
    trial_steps = steps if steps is not None else training.max_steps
    if trial_steps is None:
        notes.append(
            f"note: each trial trains the config's {training.num_epochs} epoch(s) (training.max_steps is not "
            "set); --steps S makes trials short"
        )
        return settings, notes
    settings["training.max_steps"] = trial_steps
    chosen = {_canonical(k) for k in overrides}
    every = training.eval_every
    if "training.eval_every" not in chosen and (every == 0 or trial_steps // every < 2):
        settings["training.eval_every"] = max(1, trial_steps // 4)
        notes.append(
            f"trials evaluate every {settings['training.eval_every']} steps (training.eval_every={every} "
            f"would evaluate {trial_steps}-step trials only at the end, leaving nothing to prune on; "
            "--training.eval_every=N sets it)"
        )
    return settings, notes


def default_space(base: RunConfig, trial_steps: int | None) -> dict[str, Dimension]:
    """The learning rate, log-uniform a decade either side of the config's (not below min_lr),
    and the warmup, from none to a quarter of a trial."""
    training = base.training
    lr = training.learning_rate
    low = max(lr / 10, training.min_lr)
    high_warmup = max(1, trial_steps // 4) if trial_steps else max(10, 2 * training.warmup_steps)
    return {
        "training.learning_rate": Dimension("training.learning_rate", "float", low, lr * 10, log=True),
        "training.warmup_steps": Dimension("training.warmup_steps", "int", 0, high_warmup),
    }


def check_space_against_config(
    raw: dict[str, Any], source: str, overrides: Mapping[str, Any], space: Mapping[str, Dimension]
) -> None:
    """Each end of each range (each choice) must make a valid config with the others' values; one
    that clashes only with another searched key is left to the trials (they fail, with the reason)."""
    for key, dim in space.items():
        for value in dim.edges():
            try:
                RunConfig.from_dict(raw, source=source, overrides={**overrides, key: value})
            except ConfigError as err:
                message = str(err)
                others = [k for k in space if k != key and (k in message or k.split(".")[1] in message)]
                if others:
                    continue
                raise ConfigError(
                    f"--space {key}={dim.describe()}: {key}={value} makes an invalid config: {message} "
                    "(change the range, or the setting it clashes with)"
                ) from None
