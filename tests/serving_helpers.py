"""A small model to serve in the serving tests, and a server for it on a free loopback port.

The model is the tests' tiny GPT (tests/tiny.py) with a context of 128 and the byte tokenizer
(any text, multi-byte characters split across tokens, an end-of-text token), at random weights:
the tests check the server's behaviour, not the prose. A larger init spreads the logits so that
greedy answers are not ties.
"""

from __future__ import annotations

from pathlib import Path

import torch
from inference_helpers import save_checkpoint
from tiny import model_config

from nima.data.tokenizer import ByteTokenizer
from nima.inference import load_for_inference
from nima.models import create_model
from nima.serving.server import BackgroundServer, ServeSettings

CONTEXT = 128


def write_checkpoint(folder: Path) -> Path:
    """A served-size checkpoint (byte tokenizer, context 128) in ``folder``; returns its path."""
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = create_model(model_config(tok.vocab_size, max_seq_len=CONTEXT, init_std=0.3))
    return save_checkpoint(model.eval(), tok, folder)


def start(checkpoint: Path, **settings) -> BackgroundServer:
    """A started server for ``checkpoint`` on 127.0.0.1 and a free port."""
    loaded = load_for_inference(checkpoint, device="cpu")
    return BackgroundServer(loaded, ServeSettings(port=0, **settings)).start()
