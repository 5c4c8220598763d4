"""Run configuration: the ``model:``, ``training:`` and ``data:`` sections of a YAML file.

``RunConfig.from_yaml("configs/base_model.yaml", overrides=["--training.max_steps=20"])`` reads the
file with ``yaml.safe_load``, applies command-line overrides and validates every section: an
unknown key is an error that suggests the nearest valid one, values are converted to the field's
type (``--model.n_layers=2`` is an int, ``--training.learning_rate=1e-3`` a float) and impossible
values are one-line :class:`~nima.errors.ConfigError` messages prefixed with where they came from::

    configs/x.yaml: unknown key training.learnig_rate (did you mean training.learning_rate?)

Each setting has one home; a key given in a section it moved out of says where it went
(``configs/x.yaml: training.num_workers moved to data.num_workers``). The checks are the same
for the three sections (:mod:`nima.config_fields`, which also holds the one table of aliases and
moved keys).

Overrides are written ``--section.key=value`` or ``--section.key value``.

- :mod:`nima.config.run`: :class:`RunConfig`, YAML files, overrides, the shipped ``configs/``.
- :mod:`nima.config.training`: :class:`TrainingConfig` (the ``training:`` section). The model and
  data sections live with their code: :class:`nima.models.ModelConfig`, :class:`nima.data.DataConfig`.

Reading a config imports no part of :mod:`nima.training` (the Trainer, its loggers).
"""

from nima.config.run import SECTIONS, RunConfig, known_keys, parse_overrides, read_yaml, shipped_config
from nima.config.training import TrainingConfig
from nima.config_fields import renamed_keys_help

__all__ = [
    "SECTIONS",
    "RunConfig",
    "TrainingConfig",
    "known_keys",
    "parse_overrides",
    "read_yaml",
    "renamed_keys_help",
    "shipped_config",
]
