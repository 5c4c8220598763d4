"""Training: TrainingConfig, the Trainer, optimizers, schedules, precision, checkpoints, callbacks.

``Trainer(model, config, train_dataloader, eval_dataloader).train()`` runs a full training loop
(accumulation, mixed precision where it pays, evaluation, checkpoints, exact resume);
``get_optimizer`` and ``get_scheduler`` are usable on their own, as are the callbacks
``EarlyStopping``, ``MetricsTracker`` and ``ProgressPrinter``; ``TensorBoardLogger``, ``WandbLogger``
(``training.report_to``) and ``RunReport`` (``loss.png``, ``report.md``) send a run's figures on.
"""

from nima.checkpoint import load_checkpoint_file, load_model_from_checkpoint
from nima.config import TrainingConfig
from nima.memory import find_max_batch_size
from nima.runtime.precision import PrecisionChoice, choose_precision
from nima.training.callbacks import Callback, EarlyStopping, MetricsTracker, ProgressPrinter
from nima.training.loggers import RunReport, TensorBoardLogger, WandbLogger
from nima.training.optimizers import AdamWScale, get_optimizer, parameter_groups
from nima.training.schedulers import get_scheduler, lr_multiplier
from nima.training.trainer import Trainer
from nima.training.view import RunView

__all__ = [
    "AdamWScale",
    "Callback",
    "EarlyStopping",
    "MetricsTracker",
    "PrecisionChoice",
    "ProgressPrinter",
    "RunReport",
    "RunView",
    "TensorBoardLogger",
    "Trainer",
    "TrainingConfig",
    "WandbLogger",
    "choose_precision",
    "find_max_batch_size",
    "get_optimizer",
    "get_scheduler",
    "load_checkpoint_file",
    "load_model_from_checkpoint",
    "lr_multiplier",
    "parameter_groups",
]
