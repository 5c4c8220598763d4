"""Build a tiny trained checkpoint for the evaluation and inference tests, without the Trainer.

The tests' tiny GPT (tiny.TEST_MODEL) learns a short text for a few dozen steps (about a second
on a CPU) and is saved in the ``nima-checkpoint-v1`` format through nima.checkpoint, with its char
tokenizer written beside it, the way training records them. The Trainer's own checkpoints are
tested end to end in test_inference_trainer.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import model_config

from nima.checkpoint import atomic_save, make_checkpoint
from nima.data.tokenizer import CharTokenizer
from nima.models import create_model

TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n"
) * 8


def train_tiny_model(
    text: str = TEXT, steps: int = 80, seed: int = 0, tokenizer: CharTokenizer | None = None
):
    """The tests' tiny GPT fitted to ``text`` (fp32, plain AdamW); returns ``(model, tokenizer)``.

    ``tokenizer`` (default: the characters of ``text``) may hold more characters, or end-of-text."""
    torch.manual_seed(seed)
    tok = tokenizer or CharTokenizer(text)
    model = create_model(model_config(tok.vocab_size))
    ids = torch.tensor(tok.encode(text))
    T = model.config.max_seq_len
    windows = ids[: (len(ids) - 1) // T * T + 1]
    x = torch.stack([windows[i : i + T] for i in range(0, len(windows) - 1, T)])
    y = torch.stack([windows[i + 1 : i + T + 1] for i in range(0, len(windows) - 1, T)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def save_checkpoint(
    model, tok, folder: Path, *, record_path: bool = True, prepared: Path | None = None
) -> Path:
    """Write ``folder/checkpoints/step_150.pt`` and ``folder/tokenizer.json`` as training would."""
    folder.mkdir(parents=True, exist_ok=True)
    tok_path = tok.save(folder / "tokenizer.json")
    identity = {**tok.identity(), "path": str(tok_path) if record_path else None}
    ckpt = make_checkpoint(
        model.state_dict(), model.config.to_dict(), identity, prepared_path=prepared, step=150, epoch=0
    )
    return atomic_save(ckpt, folder / "checkpoints" / "step_150.pt")


def generate_args(checkpoint: Path, max_new_tokens: int, *more: str) -> list[str]:
    """``nima generate`` on ``checkpoint`` as the tests sample: ``ROMEO:`` continued by
    ``max_new_tokens`` tokens at temperature 0.8, top-k 50, top-p 0.95, seed 0, then ``more``."""
    return [
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "ROMEO:",
        "--max_new_tokens",
        str(max_new_tokens),
        "--temperature",
        "0.8",
        "--top_k",
        "50",
        "--top_p",
        "0.95",
        "--seed",
        "0",
        *more,
    ]
