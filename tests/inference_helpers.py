"""Build a tiny trained checkpoint for the evaluation and inference tests, without the Trainer.

A one-layer GPT learns a short text for a few dozen steps (about a second on a CPU) and is saved
in the ``nima-checkpoint-v1`` format, with its char tokenizer written beside it, the way training
records them. The Trainer's own checkpoints are tested end to end in test_inference_trainer.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nima.data.tokenizer import CharTokenizer
from nima.models import create_model

TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n"
) * 8
TINY = {"n_layers": 1, "d_model": 32, "n_heads": 2, "max_seq_len": 32, "dropout": 0.0}


def train_tiny_model(text: str = TEXT, steps: int = 80, seed: int = 0):
    """A one-layer GPT fitted to ``text``; returns ``(model, tokenizer)``."""
    torch.manual_seed(seed)
    tok = CharTokenizer(text)
    model = create_model({**TINY, "vocab_size": tok.vocab_size})
    ids = torch.tensor(tok.encode(text))
    T = TINY["max_seq_len"]
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
    ckpt = {
        "format": "nima-checkpoint-v1",
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "tokenizer": identity,
        "data": {"prepared_path": str(prepared) if prepared else None},
        "training_config": {},
        "step": 150,
        "epoch": 0,
    }
    path = folder / "checkpoints" / "step_150.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(ckpt, path)
    return path
