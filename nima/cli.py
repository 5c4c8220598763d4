"""The ``nima`` command: ``nima prepare | train | eval | generate ...``.

Each sub-command lives next to the code it drives and exposes ``main(argv) -> int``; this module
only dispatches and turns user errors into one line and exit code 2. The ``scripts/*.py`` files
call :func:`main` too, so the scripts, ``nima`` and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nima.errors import ConfigError, NimaError
from nima.files import one_line


class CommandParser(argparse.ArgumentParser):
    """argparse for a sub-command that raises a one-line ``error_type`` (a NimaError) instead of
    printing its usage and exiting, so that bad options end like every other user mistake."""

    def __init__(self, *args, error_type: type[NimaError] = ConfigError, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.error_type = error_type

    def error(self, message: str) -> None:  # type: ignore[override]
        raise self.error_type(f"{message} (see `{self.prog} --help`)")


# command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("nima.data.cli", "prepare a corpus: text -> tokenizer + token shards, on every core"),
    "train": ("nima.training.cli", "train a model from a YAML config (with --section.key=value overrides)"),
    "eval": ("nima.evaluation.cli", "evaluate a checkpoint: loss, perplexity, bits per byte; task accuracy"),
    "generate": ("nima.inference.cli", "generate text from a checkpoint"),
    "serve": ("nima.serving.cli", "serve a checkpoint over HTTP: the OpenAI API, streaming, a playground"),
    "export": ("nima.interop.export_cli", "write a checkpoint as a Hugging Face transformers model folder"),
    "import": ("nima.interop.import_cli", "turn a Hugging Face model folder into a Nima checkpoint"),
    "sweep": ("nima.tuning.cli", "search hyperparameters with Optuna: short pruned trials, the best config"),
    "plot": ("nima.reporting.plot_cli", "draw runs' loss, learning rate and throughput curves into a PNG"),
    "report": ("nima.reporting.report_cli", "write a run's report.md: config, speed, losses, plot, sample"),
}

EXIT_USER_ERROR = 2


def _usage() -> str:
    lines = ["usage: nima <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'nima <command> --help' for a command's options."]
    return "\n".join(lines)


class _LineTracker:
    """``sys.stderr`` as seen by a command, remembering whether its last line is unfinished: a
    progress bar ends its lines with a carriage return, and an ``error:`` printed after one would
    be glued behind it in a log (``grep '^error:'`` would miss it)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.open_line = False

    def write(self, text: str) -> int:
        if text:
            self.open_line = not text.endswith("\n")
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _error_line(message: str, stderr: _LineTracker) -> None:
    """``error: <message>`` on a line of its own: one line, whatever the message held."""
    start = "\n" if stderr.open_line else ""
    print(f"{start}error: {one_line(message, limit=2000)}", file=stderr.stream, flush=True)


def _os_error(err: OSError) -> str:
    """``<file>: <reason>``, as far as the error names them."""
    files = " -> ".join(str(name) for name in (err.filename, err.filename2) if name is not None)
    reason = err.strerror or str(err) or type(err).__name__
    return f"{files}: {reason}" if files else reason


def main(argv: list[str] | None = None) -> int:
    """Run a ``nima`` sub-command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else EXIT_USER_ERROR
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    stderr = _LineTracker(sys.stderr)
    sys.stderr = stderr
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(rest) or 0)
    except NimaError as err:
        _error_line(str(err), stderr)
        return EXIT_USER_ERROR
    except OSError as err:  # the system's answer about a file (a full disk, a folder in its place ...)
        _error_line(_os_error(err), stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted" if stderr.open_line else "interrupted", file=stderr.stream)
        return 130
    finally:
        if sys.stderr is stderr:
            sys.stderr = stderr.stream


def run_as_script(command: str) -> None:
    """Entry point for ``scripts/<command>.py``: ``nima <command>`` with the script's arguments."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
