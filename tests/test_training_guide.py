"""The training guide's Python snippets, as written, with tiny sizes (run in a temporary folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import model_dict


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The guide's relative paths (experiments/...) land in a temporary folder, not the checkout.
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_custom_training_loop(in_tmp: Path) -> None:
    from data import DataCollator, create_dataloader, prepare_dataset
    from models import create_gpt_small
    from training import Trainer, TrainingConfig

    # Prepare data
    train_dataset, val_dataset, tokenizer = prepare_dataset(
        dataset_name='tiny_shakespeare',
        tokenizer_type='char',
        max_length=32,  # guide: 512
    )

    # Create model (guide: the full small preset; here the tests' tiny shape)
    model = create_gpt_small(vocab_size=tokenizer.vocab_size, **model_dict())

    # Setup data loaders
    collator = DataCollator(tokenizer)
    train_loader = create_dataloader(train_dataset, batch_size=32, collate_fn=collator)
    val_loader = create_dataloader(val_dataset, batch_size=32, collate_fn=collator)

    # Configure training
    config = TrainingConfig(
        num_epochs=10,
        max_steps=6,  # added: a few steps instead of 10 epochs
        learning_rate=3e-4,
        warmup_steps=1000,
        save_steps=1000,
        eval_steps=500,
        eval_batches=2,  # added: keep evaluation tiny
    )

    # Train
    trainer = Trainer(
        model=model,
        config=config,
        train_dataloader=train_loader,
        eval_dataloader=val_loader
    )

    results = trainer.train()
    assert results["steps"] == 6 and results["final_val_loss"] is not None
    assert (in_tmp / "experiments" / "checkpoints" / "step_6.pt").is_file()
    assert (in_tmp / "experiments" / "logs" / "metrics.jsonl").is_file()

    # Manual checkpointing
    trainer.save_checkpoint('my_checkpoint')
    trainer.load_checkpoint('experiments/checkpoints/my_checkpoint.pt')
    assert trainer.step == 6

    # Batch size tuning
    batch_sizes = [16, 32, 64, 128]
    for batch_size in batch_sizes:
        try:
            config = TrainingConfig(batch_size=batch_size)
            with pytest.warns(UserWarning, match="batch_size"):
                trainer = Trainer(model, config, train_loader)
            # Test one batch
            break
        except RuntimeError:  # Out of memory
            continue
    assert batch_size == 16


def test_feature_configs() -> None:
    from training import TrainingConfig

    config = TrainingConfig(
        use_mixed_precision=True  # Uses automatic mixed precision (AMP)
    )
    assert config.use_mixed_precision and config.precision == "auto"

    config = TrainingConfig(
        batch_size=16,
        gradient_accumulation_steps=4  # Effective batch size: 16 * 4 = 64
    )
    assert config.effective_batch_size == 64

    config = TrainingConfig(
        lr_scheduler_type='cosine',  # 'cosine', 'linear', 'constant'
        warmup_steps=1000,
        min_lr=0.0
    )
    assert config.lr_scheduler_type == "cosine"

    config = TrainingConfig(
        device='cuda',  # Use GPU
        use_mixed_precision=True  # Faster training
    )
    assert config.device == "cuda"

    config = TrainingConfig(
        batch_size=8,
        gradient_accumulation_steps=8  # Effective batch size: 64
    )
    assert config.effective_batch_size == 64


def test_early_stopping_loop() -> None:
    from training import EarlyStopping

    early_stopping = EarlyStopping(
        patience=10,      # Stop after 10 epochs without improvement
        min_delta=0.001   # Minimum improvement threshold
    )
    val_losses = iter([2.0, 1.5] + [1.4995] * 20)
    num_epochs = 100

    def train_epoch() -> float:
        return 0.0

    def evaluate() -> float:
        return next(val_losses)

    # In training loop
    for epoch in range(num_epochs):  # noqa: B007 (the guide's loop, verbatim)
        train_loss = train_epoch()
        val_loss = evaluate()

        if early_stopping(val_loss):
            print("Early stopping triggered!")
            break
    assert epoch == 11 and train_loss == 0.0


def test_metrics_tracking(in_tmp: Path) -> None:
    from training import MetricsTracker

    tracker = MetricsTracker(log_dir='experiments/logs')

    # Log metrics during training
    for global_step, (loss, learning_rate) in enumerate([(2.0, 1e-3), (1.0, 5e-4)]):
        tracker.log({'loss': loss, 'lr': learning_rate}, step=global_step)

    # Get summary
    summary = tracker.get_summary()
    print(f"Average loss: {summary['loss']['mean']}")
    assert summary["loss"]["mean"] == 1.5

    # Save metrics
    tracker.save('training_metrics.json')
    assert (in_tmp / "experiments" / "logs" / "training_metrics.json").is_file()
    assert (in_tmp / "experiments" / "logs" / "metrics.jsonl").is_file()


def test_progress_display(capsys: pytest.CaptureFixture[str]) -> None:
    from training import ProgressPrinter

    printer = ProgressPrinter(
        total_steps=10000,
        metrics_to_track=['loss', 'lr', 'perplexity'],
        print_frequency=10
    )

    step, loss, lr = 10, 2.5, 3e-4
    # Print step progress
    printer.print_step(step, {'loss': loss, 'lr': lr})

    epoch, train_loss, val_loss = 1, 2.5, 2.6
    # Print epoch summary
    printer.print_epoch_end(epoch, {'train_loss': train_loss, 'val_loss': val_loss})
    out = capsys.readouterr().out
    assert "step 10/10000" in out and "perplexity 12.18" in out and "epoch 1" in out


def test_optimizers_and_schedulers() -> None:
    from models import create_gpt_tiny
    from training import get_optimizer, get_scheduler

    model = create_gpt_tiny(vocab_size=65, **model_dict())

    # AdamW (recommended)
    optimizer = get_optimizer(
        model,
        optimizer_type='adamw',
        learning_rate=3e-4,
        weight_decay=0.01,
        betas=(0.9, 0.999)
    )
    assert isinstance(optimizer, torch.optim.AdamW)

    # Adam
    optimizer = get_optimizer(model, optimizer_type='adam')

    # SGD with momentum
    optimizer = get_optimizer(model, optimizer_type='sgd', momentum=0.9)

    # AdamWScale (for large models)
    optimizer = get_optimizer(model, optimizer_type='adamw_scale')

    # Cosine annealing with warmup
    scheduler = get_scheduler(
        optimizer,
        scheduler_type='cosine',
        num_training_steps=10000,
        num_warmup_steps=1000,
        min_lr=0.0
    )

    # Cosine with restarts
    scheduler = get_scheduler(
        optimizer,
        scheduler_type='cosine_restarts',
        num_training_steps=10000,
        num_warmup_steps=1000
    )
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
