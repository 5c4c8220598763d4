"""The ``serve`` extra: which of its web packages are missing, as one line that says how to get them.

Nima imports without them; the modules that need them (the routes, the request schemas, the
server) call :func:`require_serve_extra` when their import fails, so that ``nima serve`` ends in
one ``error:`` line rather than an ImportError.
"""

from __future__ import annotations

import importlib.util

from nima.errors import ConfigError

SERVE_PACKAGES = ("starlette", "uvicorn", "pydantic")


def missing_serve_packages() -> list[str]:
    """The packages of the ``serve`` extra that cannot be imported here."""
    missing = []
    for name in SERVE_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_serve_extra() -> None:
    """ConfigError (one line) when a package of the ``serve`` extra is missing."""
    missing = missing_serve_packages()
    if missing:
        raise ConfigError(
            f"nima serve needs {', '.join(missing)}, which are not installed: pip install 'nima[serve]'"
        )
