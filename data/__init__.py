"""The training guide's ``from data import ...``: a thin entry point to :mod:`nima.data`.

Works from a checkout's root (the guide's snippets run there); installed code imports ``nima.data``.
"""

from nima.data import *  # noqa: F403
from nima.data import __all__  # noqa: F401
