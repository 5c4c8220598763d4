"""Serve a model over HTTP: an OpenAI-compatible API, continuous batching, a playground page.

``nima serve --checkpoint PATH`` (:mod:`nima.serving.cli`) answers ``/v1/completions``,
``/v1/chat/completions`` and ``/v1/models`` as the OpenAI API defines them, streams with
server-sent events, and shows a playground at ``/``. The parts, each in its own module:

- :mod:`~nima.serving.engine`: the continuous-batching engine, on a thread of its own;
- :mod:`~nima.serving.schemas`: request bodies, checked, and the OpenAI error shape;
- :mod:`~nima.serving.chat_template`: chat messages -> one prompt;
- :mod:`~nima.serving.app`: the routes (Starlette);
- :mod:`~nima.serving.server`: uvicorn in the foreground or on a background thread
  (``start_server(checkpoint, port=8000)`` for notebooks and tests).

The web packages are an extra (``pip install 'nima[serve]'``, see :mod:`~nima.serving.extra`);
Nima imports without them, and so does this package: the engine needs only torch.
"""

from __future__ import annotations

from nima.serving.engine import Engine, EngineBusy, Failed, Finished, Job

__all__ = ["Engine", "EngineBusy", "Failed", "Finished", "Job"]
