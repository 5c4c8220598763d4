"""The training guide's ``from training import ...``: a thin entry point to :mod:`nima.training`.

Works from a checkout's root (the guide's snippets run there); installed code imports ``nima.training``.
"""

from nima.training import *  # noqa: F403
from nima.training import __all__  # noqa: F401
