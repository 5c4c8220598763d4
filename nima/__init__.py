"""Nima: train your own GPT-style language models with PyTorch.

Data flows one way through the sub-packages:
``nima.data`` (text -> tokens on disk -> batches) -> ``nima.models`` (the GPT) ->
``nima.training`` (trainer, optimizers, checkpoints) -> ``nima.evaluation`` / ``nima.inference``.
"""

__version__ = "0.1.0"
