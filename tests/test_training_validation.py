"""The Trainer's validation loss covers the whole split, or a fixed sample spread over all of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from nima.data import DataCollator, TokenWindowDataset, create_dataloader
from nima.evaluation import evaluate_model
from nima.models import ModelConfig, create_model
from nima.models.gpt import LOSS_CHUNK_ROWS
from nima.training import Trainer, TrainingConfig
from nima.training.validator import spread_sample


def _val_loader(tokens: int, batch_size: int = 4, context: int = 16):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 50, tokens).astype(np.int64)
    dataset = TokenWindowDataset(stream, context, random_offset=False)
    return create_dataloader(dataset, batch_size, collate_fn=DataCollator(), shuffle=False)


def _trainer(tmp_path: Path, loader, eval_batches: int) -> Trainer:
    torch.manual_seed(0)
    model = create_model(ModelConfig(vocab_size=50, d_model=32, n_heads=4, n_layers=1, max_seq_len=16))
    config = TrainingConfig(
        batch_size=4, eval_batches=eval_batches, output_dir=str(tmp_path), precision="fp32",
        progress_bar=False,
    )  # fmt: skip
    return Trainer(model, config, loader, loader)


def test_a_small_split_is_evaluated_whole(tmp_path: Path) -> None:
    loader = _val_loader(16 * 4 * 5 + 1)  # 5 batches
    trainer = _trainer(tmp_path, loader, eval_batches=10)
    metrics = trainer.evaluate()
    assert metrics["val_tokens"] == 5 * 4 * 16
    whole = evaluate_model(trainer.raw_model, loader)
    assert abs(metrics["val_loss"] - whole.loss) < 1e-5
    assert "whole validation split (5 batches)" in trainer.validator.coverage


def test_a_large_split_is_sampled_evenly_over_all_of_it(tmp_path: Path) -> None:
    loader = _val_loader(16 * 4 * 100 + 1)  # 100 batches, 400 windows
    sample, coverage = spread_sample(loader, 5)
    picks = sample.dataset.indices
    assert len(picks) == 5 * 4 and picks[0] == 0 and picks[-1] >= 380  # from the start to the end
    assert len(set(picks)) == len(picks)
    assert coverage.startswith("5 of the validation split's 100 batches")
    trainer = _trainer(tmp_path, loader, eval_batches=5)
    first, again = trainer.evaluate(), trainer.evaluate()
    assert first["val_tokens"] == 5 * 4 * 16
    assert first == again  # the same sample at every evaluation: figures comparable over the run
    head_only = evaluate_model(trainer.raw_model, loader, max_batches=5)  # the old, biased figure
    assert abs(first["val_loss"] - head_only.loss) > 1e-6


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation produces while active."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.numel = max(self.numel, value.numel())
        return out


def test_evaluation_never_holds_a_batchs_full_logits(tmp_path: Path) -> None:
    # With a large vocabulary, a batch's (B, T, vocab) logits can outgrow the whole training
    # step (GPT-2's vocabulary at 8 x 1024 tokens: 3.2 GB against the step's 1.3 GB), so the
    # first evaluation of a run that fits would run out of memory. The loss is computed in chunks.
    vocab, context, batch = 512, 256, 8  # 2,048 positions a batch: more than LOSS_CHUNK_ROWS
    assert batch * context > LOSS_CHUNK_ROWS
    torch.manual_seed(0)
    model = create_model(
        ModelConfig(vocab_size=vocab, d_model=16, n_heads=2, n_layers=1, max_seq_len=context)
    )
    tokens = np.random.default_rng(0).integers(0, vocab, context * batch * 2 + 1)
    dataset = TokenWindowDataset(tokens, context, random_offset=False)
    loader = create_dataloader(dataset, batch, collate_fn=DataCollator(), shuffle=False)
    config = TrainingConfig(batch_size=batch, output_dir=str(tmp_path), precision="fp32", progress_bar=False)
    trainer = Trainer(model, config, loader, loader)

    with LargestTensor() as largest:
        metrics = trainer.evaluate()
    assert largest.numel <= LOSS_CHUNK_ROWS * vocab < batch * context * vocab
    with torch.no_grad():  # the same loss as the full logits give
        full = [model(b["input_ids"], labels=b["labels"]).loss for b in loader]
    assert abs(metrics["val_loss"] - float(torch.stack(full).mean())) < 1e-5
