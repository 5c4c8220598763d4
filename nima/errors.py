"""The user-facing error types.

A ``NimaError`` is a mistake the user can fix (bad config, missing file, wrong tokenizer). Its
message is one line that names the bad value and says how to fix it. The command line prints it as
``error: <message>`` and exits with code 2, without a traceback; the Python API raises it as is.
``assert`` is kept for our own invariants, never for user input.
"""


class NimaError(Exception):
    """A user mistake: one line that says what is wrong and how to fix it (CLI exit code 2)."""


class ConfigError(NimaError, ValueError):
    """An invalid configuration value, key or combination."""


class DataError(NimaError, ValueError):
    """Unreadable, missing or unsuitable input data or tokenizer."""


class CheckpointError(NimaError, ValueError):
    """A checkpoint that cannot be read or does not match the model, tokenizer or config."""


class TrainingDivergedError(NimaError, RuntimeError):
    """The training loss became nan or inf: the run stopped before saving the broken weights."""
