"""The Trainer's validation loss covers the whole split, or a fixed sample spread over all of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nima.data import DataCollator, TokenWindowDataset, create_dataloader
from nima.evaluation import evaluate_model
from nima.models import ModelConfig, create_model
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
