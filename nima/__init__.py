"""Nima: train your own GPT-style language models with PyTorch.

Data flows one way through the sub-packages:
``nima.data`` (text -> tokens on disk -> batches) -> ``nima.models`` (the GPT) ->
``nima.training`` (trainer, optimizers, checkpoints) -> ``nima.evaluation`` / ``nima.inference``.

Importing ``nima`` checks the installed torch first (:func:`check_torch_version`): an older one
is refused with one line that says how to upgrade.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata

from nima.errors import NimaError

__version__ = "0.1.0"

MIN_TORCH = (2, 10)
"""The oldest torch Nima runs on: it uses torch 2.10's APIs, and ``torch.load(weights_only=True)``
before 2.10 has a known memory-corruption flaw (CVE-2026-24747) that a crafted checkpoint can reach."""


class TorchVersionError(NimaError, ImportError):
    """The installed torch is older than :data:`MIN_TORCH`."""


def check_torch_version(version: str | None = None) -> None:
    """Raise :class:`TorchVersionError` unless ``version`` (default: the installed torch's) is at
    least :data:`MIN_TORCH`. Local and pre-release tags (``2.10.0+cu126``, ``2.11.0a0``) count as
    their release."""
    if version is None and "torch" in sys.modules:
        version = str(sys.modules["torch"].__version__)
    elif version is None:  # the installed distribution's version, without importing torch (light
        try:  # commands such as nima prepare never load it)
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return  # importing torch will say it is missing
    found = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if found and (int(found.group(1)), int(found.group(2))) >= MIN_TORCH:
        return
    need = ".".join(map(str, MIN_TORCH))
    raise TorchVersionError(
        f"Nima needs torch >= {need} (found {version}): older versions lack APIs Nima uses, and their "
        "safe checkpoint loading (weights_only) has a known memory-corruption flaw (CVE-2026-24747); "
        "upgrade it: pip install --upgrade torch (for a GPU, the build for your CUDA version)"
    )


def _one_line_for_torch_version(previous):  # type: ignore[no-untyped-def]
    """A ``sys.excepthook`` that ends the process with ``error: <message>`` and exit code 2 when a
    TorchVersionError reaches the top (``nima`` and ``scripts/*.py`` import this package before
    nima.cli can catch anything); any other exception goes to ``previous``."""

    def hook(kind, value, traceback):  # type: ignore[no-untyped-def]
        if not isinstance(value, TorchVersionError):
            return previous(kind, value, traceback)
        sys.stdout.flush()
        print(f"error: {value}", file=sys.stderr, flush=True)
        os._exit(2)  # the status of every other user mistake (an excepthook cannot choose it otherwise)

    return hook


try:
    check_torch_version()
except TorchVersionError:
    sys.excepthook = _one_line_for_torch_version(sys.excepthook)
    raise
