"""The training guide's ``from models import ...``: a thin entry point to :mod:`nima.models`.

Works from a checkout's root (the guide's snippets run there); installed code imports ``nima.models``.
"""

from nima.models import *  # noqa: F403
from nima.models import __all__  # noqa: F401
