"""The example notebooks: written from the cells below, committed executed, with their outputs.

The one command, from the checkout's root (offline, about a minute on a laptop CPU; it needs the
``dev`` extras that ``./run.sh`` installs: nbclient, ipykernel, matplotlib, optuna)::

    python notebooks/build_notebooks.py --execute

writes the three notebooks, then runs each top to bottom with nbclient the way a reader's Jupyter
does (started in ``notebooks/``), each in a fresh copy of the checkout in a temporary folder (links
to this checkout's code, tiny Shakespeare linked into its ``experiments/data``), and saves them with
their outputs, less what changes from run to run besides the results (no execution timings, no
kernel version). Tiny Shakespeare comes from ``$NIMA_DATA_MIRROR``, else the ``../shared/data``
beside the checkout (as ``run.sh`` uses it), else this checkout's ``experiments/data`` (after
``./run.sh demo``): nothing is downloaded. Names (``training_basics.ipynb``) select notebooks;
without ``--execute`` the cells are written without outputs (a draft: the committed files are
executed).

The notebooks are generated so that they stay reviewable in diffs and in step with the API;
tests/test_notebooks.py checks that the committed files have exactly these cells, that their
outputs show the pictures its FIGURES table lists (one cell per ``figure(...)`` below) and no
error, warning or progress-bar noise, and executes each one. Every notebook uses tiny sizes (it
runs on a CPU in well under a minute) and writes only under the checkout's
``experiments/notebooks/``: the first cell moves to the checkout's root, so that a notebook started
in ``notebooks/`` (as Jupyter does) finds the data that ``./run.sh demo`` prepared in
``experiments/data``. Pictures are matplotlib figures of a fixed small size (inline PNGs of about
500 x 320 pixels, 30-50 KB; the sweep's are the PNGs Optuna's plots were saved as, 880 x 550).
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SETUP = '''\
# Work from the checkout's root (the folder with pyproject.toml and nima/), wherever Jupyter started
# (it starts in notebooks/): data and runs then go to the checkout's experiments/ folder, the one
# `./run.sh demo` and the nima commands use.
import os
import sys
import warnings
from pathlib import Path

import nima

here = Path.cwd()
roots = [p for p in (here, *here.parents) if (p / "pyproject.toml").is_file() and (p / "nima").is_dir()]
REPO = roots[0] if roots else Path(nima.__file__).resolve().parents[1]  # else where nima comes from
os.chdir(REPO)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the checkout's `models`, `data`, `training` entry points
OUT = Path("experiments/notebooks")  # everything this notebook writes goes here
# Without ipywidgets, tqdm's progress bars are plain text; tqdm would warn about that.
warnings.filterwarnings("ignore", message="IProgress not found")
print(f"working in {REPO.name}/, the checkout's root: data in experiments/data, runs in {OUT}/")'''


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


def figure(name: str, text: str):
    """A code cell that must show a picture (an inline PNG): its id ends in ``figure-<name>``."""
    cell = code(text)
    cell["id"] = f"figure-{name}"
    return cell


TRAINING_BASICS = [
    md("""
# Training basics

The whole workflow on tiny Shakespeare with a small character-level model: prepare the data, build
a model, train it with the `Trainer` and look at its loss curves, evaluate it and generate text —
then load the saved checkpoint the way `nima generate` does. Tiny sizes: well under a minute on a
laptop CPU; the last section says how to scale up. The picture needs matplotlib
(`pip install 'nima[plots]'`).
"""),
    code(SETUP),
    md("""
## 1. Data

`prepare_dataset` prepares tiny Shakespeare once in `experiments/data` (download, tokenize, write
`train.bin`/`val.bin`; after `./run.sh demo` all of it is there already) and returns the two splits
as datasets of windows of `max_length + 1` tokens, plus the tokenizer.
"""),
    code('''
from data import prepare_dataset

train_dataset, val_dataset, tokenizer = prepare_dataset(
    dataset_name="tiny_shakespeare", tokenizer_type="char", max_length=64
)
print(f"{tokenizer.kind} tokenizer, vocabulary {tokenizer.vocab_size}")
print(f"{len(train_dataset)} training windows, {len(val_dataset)} validation windows")
print(repr(tokenizer.decode(tokenizer.encode("ROMEO: But soft!"))))
'''),
    md("## 2. Model\n\n`create_gpt_tiny` is the smallest preset; any `ModelConfig` field can be overridden."),
    code('''
from models import create_gpt_tiny

model = create_gpt_tiny(vocab_size=tokenizer.vocab_size, n_layers=2, d_model=64, n_heads=4, max_seq_len=64)
print(f"{model.num_parameters() / 1e6:.2f}M parameters")
print(model.config)
'''),
    md("""
## 3. Train

Eighty steps of 16 windows: a line every 5 steps, the validation loss every 20. Checkpoints and
`logs/metrics.jsonl` go to `output_dir`.
"""),
    code('''
from data import DataCollator, create_dataloader
from training import Trainer, TrainingConfig

collator = DataCollator(tokenizer)
train_loader = create_dataloader(train_dataset, batch_size=16, collate_fn=collator)
val_loader = create_dataloader(val_dataset, batch_size=16, collate_fn=collator)

config = TrainingConfig(
    max_steps=80, batch_size=16, learning_rate=3e-3, warmup_steps=10, eval_every=20, eval_batches=10,
    output_dir=str(OUT / "basics"), progress_bar=False, log_every=5,
)
results = Trainer(model, config, train_loader, val_loader, tokenizer=tokenizer).train()
print({k: results[k] for k in ("final_val_loss", "best_val_loss", "steps", "tokens_per_s") if k in results})
'''),
    md("""
## 4. The loss curves

Each logged step is one record of `logs/metrics.jsonl`. `load_run` reads a run folder back (as
`nima plot` and `nima report` do) and `series` gives one metric against the step:
"""),
    figure("loss-curves", '''
import math

import matplotlib.pyplot as plt

from nima.reporting.runs import load_run, series

records = load_run(OUT / "basics", checkpoint=False).records
print(len(records), "records of", ", ".join(records[0]))

fig, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
ax.plot(*series(records, "loss"), label="training loss")
ax.plot(*series(records, "val_loss"), "s--", label="validation loss")
ax.axhline(math.log(tokenizer.vocab_size), color="gray", linestyle=":",
           label=f"guessing uniformly: ln {tokenizer.vocab_size}")
ax.set(xlabel="optimizer step", ylabel="loss (nats per character)", title="80 steps on tiny Shakespeare")
ax.legend()
plt.show()
'''),
    md("""
What to notice: the loss falls fast from about ln 65 = 4.17, the loss of guessing uniformly among
the 65 characters (dotted), while the model learns which characters are common and then which
follow which; it flattens as the cosine schedule takes the learning rate to zero at step 80. The
validation loss (squares: text the model never trains on) stays with the training loss: 80 steps
of 16 windows are about 82,000 characters, under a tenth of the training text, so there is
nothing to overfit yet. A validation loss that turns up while the training loss keeps falling is
memorising: see early stopping in `advanced_training.ipynb`.

The run also drew `experiments/notebooks/basics/loss.png` (loss, learning rate, throughput and
gradient norm); `nima plot experiments/notebooks/basics` draws the same for any runs, overlaid.
"""),
    md("""
## 5. Evaluate

`evaluate_model` gives the loss, perplexity (`exp(loss)`) and bits per character/byte. An untrained
model scores about `ln(65) = 4.17` nats per character.
"""),
    code('''
from nima.evaluation import evaluate_model

result = evaluate_model(model, val_loader, max_batches=20, tokenizer=tokenizer)
print(result.format())
print(f"uniform guessing: loss {math.log(tokenizer.vocab_size):.3f}")
'''),
    md("## 6. Generate"),
    code('''
from nima.inference import SamplingSettings, generate_text

settings = SamplingSettings(max_new_tokens=120, temperature=0.8, top_k=20, seed=0)
print("ROMEO:" + generate_text(model, tokenizer, "ROMEO:", settings))
'''),
    md("""
## 7. Load the checkpoint, as `nima generate` does

The tokenizer is found from the identity the checkpoint recorded.
"""),
    code('''
from nima.inference import load_for_inference

loaded = load_for_inference(OUT / "basics" / "checkpoints" / "best_model.pt", device="cpu")
print("step", loaded.info["step"], "tokenizer from", os.path.relpath(loaded.tokenizer_path))
print("ROMEO:" + generate_text(loaded.model, loaded.tokenizer, "ROMEO:", settings))
'''),
    md("""
## Scaling up

This model has 0.11M parameters and trained for 80 steps: it has learnt which characters are
common and roughly how long words are, not yet the words. The same code scales by its numbers
(`max_steps`, `d_model`, `n_layers`, `max_length`); the shipped configs do it from the command line:

- `nima train --config configs/tiny_shakespeare_char.yaml`: the classic small char model (4 layers,
  width 128, context 64), about 2000 steps to a validation loss near 1.9; minutes on a CPU.
- `nima train --config configs/base_model.yaml`: the guide's model (6 layers, width 512, context
  1024), a GPU job. `device: auto` (the default) takes the GPU, with mixed precision.
- Several GPUs: `torchrun --nproc_per_node=4 scripts/train.py --config configs/base_model.yaml`.

`nima plot <output_dir>` draws any run's curves as above. `docs/training.md` has the rest: configs,
resume, plots and reports.
"""),
]

ADVANCED_TRAINING = [
    md("""
# Advanced training

Gradient accumulation, learning-rate schedules, precision choice, early stopping, callbacks,
exact resume from a checkpoint, and the `llama` architecture — each at tiny size (well under a minute
on a CPU in all), with a picture of what accumulation, the schedules and early stopping do
(matplotlib: `pip install 'nima[plots]'`). The last section says how to use them at full size.
"""),
    code(SETUP),
    code('''
import contextlib
import io

import matplotlib.pyplot as plt
import torch

from data import DataCollator, create_dataloader, prepare_dataset
from models import create_gpt_tiny
from nima.reporting.runs import load_run, series
from training import Trainer, TrainingConfig

train_dataset, val_dataset, tokenizer = prepare_dataset(
    "tiny_shakespeare", tokenizer_type="char", max_length=32
)
collator = DataCollator(tokenizer)
TINY = dict(n_layers=1, d_model=32, n_heads=2, max_seq_len=32)

def loaders(batch_size, seed=0):
    train = create_dataloader(train_dataset, batch_size=batch_size, collate_fn=collator, seed=seed)
    val = create_dataloader(val_dataset, batch_size=16, collate_fn=collator, shuffle=False)
    return train, val

def fresh_model(**overrides):
    torch.manual_seed(0)
    return create_gpt_tiny(vocab_size=tokenizer.vocab_size, **{**TINY, **overrides})
'''),
    md("""
## Gradient accumulation

Micro-batches of 4 accumulated 4 times give the gradient of one batch of 16: the loss of each
micro-batch is scaled by 1/4. Here, one step on the same 16 windows both ways:
"""),
    code('''
batch = collator([train_dataset[i] for i in range(16)])
model = fresh_model()
loss = model(batch["input_ids"], labels=batch["labels"]).loss
big = torch.autograd.grad(loss, model.parameters())

model.zero_grad()
for i in range(0, 16, 4):
    micro = model(batch["input_ids"][i:i + 4], labels=batch["labels"][i:i + 4]).loss / 4
    micro.backward()
accumulated = [p.grad for p in model.parameters()]
difference = max((a - b).abs().max().item() for a, b in zip(big, accumulated, strict=True))
print("largest gradient difference:", difference)
'''),
    md("""
In a config: `TrainingConfig(batch_size=4, gradient_accumulation_steps=4)` trains like a batch of 16.
Three runs of 40 steps show it: batch 16, batch 4 accumulated 4 times, and batch 4 alone. They are
pinned to `precision="fp32"`, so that they compute alike on any CPU, and log every step; their
progress lines are kept out of the notebook, and the losses read back from each run's
`logs/metrics.jsonl`:
"""),
    code('''
def logged_losses(batch_size, accumulation, steps=40):
    train_loader, _ = loaders(batch_size)
    config = TrainingConfig(max_steps=steps, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                            learning_rate=3e-3, warmup_steps=5, eval_every=0, eval_batches=1, log_every=1,
                            save_every=0, save_epoch_checkpoints=False, precision="fp32", progress_bar=False,
                            output_dir=str(OUT / f"accumulation_{batch_size}x{accumulation}"))
    with contextlib.redirect_stdout(io.StringIO()):  # the runs' own lines: not needed here
        Trainer(fresh_model(), config, train_loader).train()
    return series(load_run(config.output_dir, checkpoint=False).records, "loss")

runs = {(16, 1): logged_losses(16, 1), (4, 4): logged_losses(4, 4), (4, 1): logged_losses(4, 1)}
gap = max(abs(a - b) for a, b in zip(runs[16, 1][1], runs[4, 4][1], strict=True))
print(f"largest difference between the losses of batch 16 and batch 4 x 4, over 40 steps: {gap:.1e}")
'''),
    figure("accumulation", '''
fig, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
ax.plot(*runs[4, 1], color="silver", label="batch 4")
ax.plot(*runs[16, 1], linewidth=5, alpha=0.4, label="batch 16")
ax.plot(*runs[4, 4], "k--", linewidth=1, label="batch 4, accumulated 4 times")
ax.set(xlabel="optimizer step", ylabel="training loss", title="Gradient accumulation: 4 x 4 trains like 16")
ax.legend()
plt.show()
'''),
    md("""
What to notice: the dashed curve (4 x 4) lies on the wide one (16) step for step: the same 16
windows per step give the same gradient and the same weights. Only the memory differs: activations
for 4 windows at a time, so a batch too big for the device still fits. Batch 4 alone takes each
step on a quarter of the data: its curve wanders off and is noisier. Accumulation buys the large
batch's steps for the large batch's compute, not its memory.
"""),
    md("""
## Learning-rate schedules

Warmup, then `cosine`, `linear`, `constant` or `cosine_restarts`, ending at `min_lr`. Here 100
steps, 10 of warmup to a peak of 1e-3, `min_lr` 1e-4, each schedule as the Trainer steps it:
"""),
    code('''
from training import get_optimizer, get_scheduler

schedules = {}
for kind in ("cosine", "linear", "constant", "cosine_restarts"):
    optimizer = get_optimizer(fresh_model(), optimizer_type="adamw", learning_rate=1e-3)
    scheduler = get_scheduler(
        optimizer, scheduler_type=kind, num_training_steps=100, num_warmup_steps=10, min_lr=1e-4
    )
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    schedules[kind] = lrs
    print(f"{kind:16s}", " ".join(f"{lrs[s]:.1e}" for s in (0, 5, 10, 25, 50, 75, 99)))
'''),
    figure("lr-schedules", '''
fig, axes = plt.subplots(2, 2, figsize=(7, 4.2), dpi=90, sharex=True, sharey=True)
for ax, (kind, lrs) in zip(axes.flat, schedules.items(), strict=True):
    ax.axvspan(0, 10, color="C1", alpha=0.15, label="warmup")
    ax.axhline(1e-4, color="gray", linestyle=":", label="min_lr")
    ax.plot(lrs, label="learning rate")
    ax.set_title(kind, fontsize=10)
for ax in axes[1]:
    ax.set_xlabel("optimizer step")
for ax in axes[:, 0]:
    ax.set_ylabel("learning rate")
axes[0, 0].legend(fontsize=8, loc="center right")
fig.tight_layout()
plt.show()
'''),
    md("""
What to notice: all four share the warmup (shaded), a linear climb that keeps the first updates
small while the optimizer's running averages settle. `cosine` (the Trainer's default) stays near the
peak, falls fastest mid-run and flattens onto `min_lr`; `linear` falls at one rate; `constant` never
decays, so the loss plateaus higher; `cosine_restarts` climbs back to the peak at the start of each
of its `lr_num_cycles` cycles (4 here).
"""),
    md("""
## Precision

The Trainer picks the precision for the hardware and says why (fp32 on CPUs without bf16
instructions). `NIMA_CPU_BF16=on` or `off` in the environment forces the CPU's choice;
`TrainingConfig(precision="fp32")` forces fp32 anywhere:
"""),
    code('''
from training import choose_precision

print(choose_precision("auto", use_mixed_precision=True, device="cpu"))
'''),
    md("""
## Early stopping and callbacks

`early_stopping_patience` stops after that many evaluations without improvement. A callback sees
every logged step, evaluation and save; here one records the training and validation losses.
Trained on only 64 windows, the model soon learns them by heart, and early stopping ends the run.
`best_model.pt` keeps the weights of the best evaluation.
"""),
    code('''
from torch.utils.data import Subset

from training import Callback


class LossRecorder(Callback):
    def __init__(self):
        self.train, self.val = {}, {}  # the losses by step

    def on_log(self, run, metrics):
        if "loss" in metrics:
            self.train[run.step] = metrics["loss"]

    def on_evaluate(self, run, metrics):
        self.val[run.step] = metrics["val_loss"]

recorder = LossRecorder()
few_windows = Subset(train_dataset, range(64))
train_loader = create_dataloader(few_windows, batch_size=8, collate_fn=collator)
val_loader = create_dataloader(val_dataset, batch_size=16, collate_fn=collator, shuffle=False)
config = TrainingConfig(max_steps=300, batch_size=8, learning_rate=3e-3, warmup_steps=5, eval_every=10,
                        eval_batches=2, early_stopping_patience=2, save_every=0, save_epoch_checkpoints=False,
                        output_dir=str(OUT / "early"), progress_bar=False, log_every=5)
results = Trainer(fresh_model(d_model=128), config, train_loader, val_loader, callbacks=[recorder]).train()
val_losses = [round(loss, 3) for loss in recorder.val.values()]
print("stopped after", results["steps"], "of 300 steps; validation losses:", val_losses)
print("best validation loss:", round(results["best_val_loss"], 3))
'''),
    figure("early-stopping", '''
best = min(recorder.val, key=recorder.val.get)
fig, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
ax.plot(list(recorder.train), list(recorder.train.values()), label="training loss (64 windows)")
ax.plot(list(recorder.val), list(recorder.val.values()), "s--", label="validation loss")
ax.plot(best, recorder.val[best], "*", color="C2", markersize=15, label="best: kept in best_model.pt")
ax.axvline(results["steps"], color="C3", linestyle=":", label="early stop (patience 2)")
ax.set(xlabel="optimizer step", ylabel="loss", title="Early stopping a run that overfits")
ax.legend()
plt.show()
'''),
    md("""
What to notice: the training loss keeps falling, since the model learns its 64 windows by heart,
while the validation loss bottoms out (the star) and turns up: from there each step makes the model
worse on text it has not seen (overfitting). After 2 evaluations without improvement (the patience)
the run stops instead of spending its remaining steps getting worse, and `best_model.pt` holds the
weights of the star. With more data, `dropout` or `weight_decay`, the turn comes later.
"""),
    md("""
## Exact resume

Plan 20 steps; run them straight. Then run the same plan again but interrupt it after 10 steps (a
callback asks for a stop with `run.request_stop()`, as a crash would), and resume from its
`step_10.pt` in a new Trainer. Model, optimizer, schedule, data position and random state are all
restored, so the weights come out identical. The runs are pinned to `precision="fp32"`, so that
all three compute alike on any CPU: under `auto`, a CPU with bf16 instructions picks bf16 or fp32
after a quick benchmark, and two runs that train in different precisions cannot match bit for bit.
"""),
    code('''
class StopAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, run):  # every callback hook receives a view of the run
        if run.step >= self.step:
            run.request_stop(f"stopped at step {run.step} on purpose")

def run(out, resume=None, callbacks=()):
    train_loader, val_loader = loaders(8)
    config = TrainingConfig(max_steps=20, batch_size=8, learning_rate=1e-3, eval_every=0, eval_batches=2,
                            output_dir=str(OUT / out), progress_bar=False, save_every=10, log_every=5,
                            precision="fp32")
    trainer = Trainer(fresh_model(), config, train_loader, val_loader, callbacks=list(callbacks))
    if resume:
        trainer.load_checkpoint(resume)
    trainer.train()
    return trainer.model

straight = run("straight")
run("interrupted", callbacks=[StopAfter(10)])
resumed = run("resumed", resume=OUT / "interrupted" / "checkpoints" / "step_10.pt")
pairs = zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True)
same = all(torch.equal(a, b) for a, b in pairs)
print("identical weights after resume:", same)
'''),
    md("""
## The llama family

RoPE, RMSNorm, SwiGLU and grouped-query attention, from the same config fields:
"""),
    code('''
llama = fresh_model(arch="llama", n_heads=4, n_kv_heads=2)
print(llama.config.arch, f"{llama.num_parameters():,} parameters")
train_loader, val_loader = loaders(8)
config = TrainingConfig(max_steps=30, batch_size=8, learning_rate=3e-3, eval_every=30, eval_batches=4,
                        output_dir=str(OUT / "llama"), progress_bar=False, save_every=0)
print(Trainer(llama, config, train_loader, val_loader).train()["best_val_loss"])
'''),
    md("""
## At full size

Each feature above is a config key, so at full size it is a command line; for instance the guide's
model (`configs/base_model.yaml`: 6 layers, width 512, context 1024), a GPU job:

```
nima train --config configs/base_model.yaml --model.arch=llama \\
    --training.gradient_accumulation_steps=4 --training.early_stopping_patience=5
```

On a GPU, `precision: auto` turns mixed precision on (bf16 where the GPU has it, else fp16 with
loss scaling). With several GPUs, `torchrun --nproc_per_node=4 scripts/train.py --config ...` runs
one process per GPU: each step then sees `batch_size x gradient_accumulation_steps x 4` windows.
Resume any run with `--checkpoint <output_dir>/checkpoints/step_N.pt`; see `docs/training.md`.
"""),
]

HYPERPARAMETER_TUNING = [
    md("""
# Hyperparameter tuning

A small, honest sweep: train the same tiny model with several learning rates and widths for the
same number of steps, score every run on the same validation tokens with `evaluate_model`, and
pick the best; then let Optuna search, and look at its pictures of the search. At tiny sizes this
takes well under a minute on a CPU; the method is the same for real runs (longer, and with more
than one seed per setting): the last section says how.
"""),
    code(SETUP),
    code('''
import contextlib
import io
import time

import torch

from data import DataCollator, create_dataloader, prepare_dataset
from models import create_gpt_tiny
from nima.evaluation import evaluate_model
from training import Trainer, TrainingConfig

train_dataset, val_dataset, tokenizer = prepare_dataset(
    "tiny_shakespeare", tokenizer_type="char", max_length=32
)
collator = DataCollator(tokenizer)
# One fixed validation set for every run: the first 40 windows.
val_batches = [collator([val_dataset[i] for i in range(j, j + 8)]) for j in range(0, 40, 8)]

def train_and_score(name, learning_rate, d_model, steps=60, seed=0):
    torch.manual_seed(seed)
    model = create_gpt_tiny(
        vocab_size=tokenizer.vocab_size, n_layers=1, d_model=d_model, n_heads=2, max_seq_len=32
    )
    loader = create_dataloader(train_dataset, batch_size=16, collate_fn=collator, seed=seed)
    config = TrainingConfig(max_steps=steps, batch_size=16, learning_rate=learning_rate, warmup_steps=5,
                            eval_every=0, eval_batches=1, save_every=0, save_epoch_checkpoints=False,
                            output_dir=str(OUT / "sweep" / name), progress_bar=False, seed=seed)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # each run's own lines: training_basics shows them
        Trainer(model, config, loader).train()
    return evaluate_model(model, val_batches).loss, time.perf_counter() - start
'''),
    md("## Learning rate\n\nThe most important knob. Too small learns slowly; too large diverges."),
    code('''
lr_results = {}
for lr in (3e-4, 3e-3, 3e-2):
    loss, seconds = train_and_score(f"lr_{lr:g}", lr, d_model=32)
    lr_results[lr] = loss
    print(f"lr {lr:.0e}: validation loss {loss:.3f}  ({seconds:.1f} s)")
best_lr = min(lr_results, key=lr_results.get)
print("best learning rate:", best_lr)
'''),
    md("## Width at the best learning rate\n\nWider models learn more per step (and cost more per step)."),
    code('''
for d_model in (16, 32, 64):
    loss, seconds = train_and_score(f"d_model_{d_model}", best_lr, d_model=d_model)
    print(f"d_model {d_model:3d}: validation loss {loss:.3f}  ({seconds:.1f} s)")
'''),
    md("""
## Automatic search: `nima sweep` with Optuna

The loops above try values by hand. `run_sweep` (the Python side of `nima sweep`, see
`docs/training.md`, "Tuning") lets Optuna choose them: each trial is a short run built exactly as
`nima train` builds one, it reports its validation loss at every evaluation, and a trial that falls
behind the median of the completed ones at the same step is stopped early (pruned). The study is a
SQLite file: running the same cell again continues it instead of starting over.
"""),
    code('''
from nima.tuning import run_sweep

result = run_sweep(
    REPO / "configs" / "cpu_quick.yaml",
    trials=5,
    steps=30,
    space=["training.learning_rate=log:1e-4..1e-1", "model.d_model=choice:32,64"],
    overrides={
        "model.n_layers": 1, "model.n_heads": 2, "model.d_ff": 128, "model.max_seq_len": 32,
        "training.warmup_steps": 5, "training.min_lr": 0, "training.eval_every": 10,
        "training.eval_batches": 4, "training.output_dir": str(OUT / "optuna_best"),
    },
    study_dir=OUT / "optuna_sweep",
    sampler="random",
    seed=0,
)
print(f"{result.complete} complete, {result.pruned} pruned, {result.failed} failed")
print(f"best learning rate {result.best_params['training.learning_rate']:.2e}, "
      f"d_model {result.best_params['model.d_model']}: validation loss {result.best_value:.3f}")
'''),
    md("""
The sweep saved Optuna's plots as PNG files in the study folder: each trial's validation loss by
step (pruned trials dashed, ending in a cross), the optimization history, and how much each
searched value mattered (with this few trials, a rough guide only).
"""),
    figure("sweep-plots", '''
from IPython.display import Image, display

for name in ("intermediate_values", "optimization_history", "param_importances"):
    if name in result.plots:
        display(Image(filename=str(result.plots[name])))
for note in result.notes:
    print("note:", note)
'''),
    md("""
What to notice: in the first picture, the pruned trials end early (the cross) — their loss at the
first check was behind the median of the finished trials, so the sweep spent its time on the
promising ones. The history shows each completed trial's loss and the best so far: with random
sampling, a good value is found by luck as much as design (`sampler="tpe"`, the default, learns
from the trials so far). The importances say which searched key moved the loss most; with a
handful of trials, treat them as a hint. The printed trial lines above say the same in numbers.

`best_config.yaml` is the whole config with the best values, ready for
`nima train --config experiments/notebooks/optuna_sweep/best_config.yaml`.

## Largest batch that fits

`find_max_batch_size` tries real steps: on a GPU until CUDA reports out of memory, on a CPU by
measuring the memory of two small steps (there, running out of memory kills the process instead
of raising an error). Keep the effective batch with `gradient_accumulation_steps`, or let
`nima train` do both with `--training.batch_size=auto`.
"""),
    code('''
from training import find_max_batch_size

model = create_gpt_tiny(vocab_size=tokenizer.vocab_size, n_layers=1, d_model=32, n_heads=2, max_seq_len=32)
print("largest batch that fits:", find_max_batch_size(model, max_batch_size=128))
'''),
    md("""
## Going further

- Sweep with more than one seed and compare means: differences smaller than the seed-to-seed
  spread mean nothing.
- Tune the learning rate first, then the schedule (`warmup_steps`, `min_lr`), then regularisation
  (`weight_decay`, `dropout`) once the model starts to overfit (validation loss rising while the
  training loss falls).
- From the command line, every field is an override:

  ```
  python scripts/train.py --config configs/cpu_quick.yaml \\
      --training.learning_rate=3e-3 --training.output_dir=experiments/lr_3e-3
  ```

- At full size, on a GPU: sweep the real config with longer trials, then train the winner for the
  config's full length (several processes can work on one study at once: `docs/training.md`,
  "Tuning"):

  ```
  nima sweep --config configs/base_model.yaml --trials 20 --steps 500 \\
      --space "training.learning_rate=log:3e-5..1e-3" --space "model.dropout=0..0.3"
  nima train --config experiments/sweep/best_config.yaml
  ```
"""),
]

NOTEBOOKS = {
    "training_basics.ipynb": TRAINING_BASICS,
    "advanced_training.ipynb": ADVANCED_TRAINING,
    "hyperparameter_tuning.ipynb": HYPERPARAMETER_TUNING,
}
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
}
# Pictures are small: a figure of 6 x 3.5 inches at 90 dpi is about 540 x 320 pixels and 30 KB.
MAX_IMAGE_WIDTH = 1000
MAX_IMAGE_BYTES = 150_000
# Progress bars: carriage returns (a bar redrawn in place) and tqdm's "45%|####  | 9/20".
PROGRESS_NOISE = re.compile(r"\r|\d+%\|")
CODE_FOLDERS = ("pyproject.toml", "nima", "models", "data", "training", "configs")


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (no outputs), with a Python 3 kernel."""
    nb = new_notebook(cells=copy.deepcopy(NOTEBOOKS[name]))
    nb.metadata.update(copy.deepcopy(METADATA))
    stem = Path(name).stem.replace("_", "-")
    for i, cell in enumerate(nb.cells):
        label = cell["id"] if cell["id"].startswith("figure-") else i
        cell["id"] = f"{stem}-{label}"  # stable ids: stable diffs
    return nb


def render(name: str) -> str:
    return write(build(name))


def write(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def figure_cells(nb: nbformat.NotebookNode) -> list[str]:
    """The ids of the cells that must show a picture: ``<notebook>-figure-<name>``."""
    return [cell["id"] for cell in nb.cells if "-figure-" in cell["id"]]


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` as :func:`build` makes it: no outputs, no execution counts."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def images(cell: nbformat.NotebookNode) -> list[bytes]:
    """The PNG images a cell's outputs show."""
    return [
        base64.b64decode(out["data"]["image/png"])
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What is wrong with an executed notebook's outputs: a cell not run, an error, anything on
    stderr (warnings, progress bars), progress-bar noise, a figure cell without its picture, a
    picture too big. Empty when the notebook is as ``--execute`` must leave it."""
    found = []
    figures = set(figure_cells(nb))
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        where = f"cell {cell['id']}"
        if cell.execution_count is None:
            found.append(f"{where} was not executed")
        for out in cell.outputs:
            if out.output_type == "error":
                found.append(f"{where} failed: {out.ename}: {out.evalue}")
            elif out.output_type == "stream" and out.name == "stderr":
                found.append(f"{where} wrote to stderr: {out.text[:300]!r}")
            elif out.output_type == "stream" and PROGRESS_NOISE.search(out.text):
                found.append(f"{where} shows a progress bar: {out.text[:300]!r}")
        pictures = images(cell)
        if cell["id"] in figures and not pictures:
            found.append(f"{where} shows no picture")
        for png in pictures:
            width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
            if width > MAX_IMAGE_WIDTH or len(png) > MAX_IMAGE_BYTES:
                found.append(f"{where} shows a picture of {width} x {height} pixels, {len(png):,} bytes")
    return found


def find_tiny_shakespeare() -> Path:
    """tiny Shakespeare's input.txt on this machine: $NIMA_DATA_MIRROR, ../shared/data, experiments/data."""
    places = [REPO.parent / "shared" / "data", REPO / "experiments" / "data"]
    if os.environ.get("NIMA_DATA_MIRROR"):
        places.insert(0, Path(os.environ["NIMA_DATA_MIRROR"]))
    for place in places:
        path = place / "tiny_shakespeare" / "input.txt"
        if path.is_file():
            return path.resolve()
    where = ", ".join(str(place / "tiny_shakespeare" / "input.txt") for place in places)
    raise SystemExit(
        f"error: tiny Shakespeare not found (looked for {where}): run ./run.sh demo once, or set "
        "NIMA_DATA_MIRROR to a folder holding tiny_shakespeare/input.txt"
    )


def user_checkout(root: Path, nb: nbformat.NotebookNode, name: str, data: Path | None) -> Path:
    """A checkout at ``root`` as a user has it: this checkout's code and configs (links), the
    notebook in ``notebooks/`` and, with ``data``, tiny Shakespeare in ``experiments/data`` (as
    ``./run.sh demo`` leaves it). Returns ``root``."""
    (root / "notebooks").mkdir(parents=True)
    for entry in CODE_FOLDERS:
        (root / entry).symlink_to(REPO / entry)
    (root / "notebooks" / name).write_text(write(nb), encoding="utf-8")
    if data is not None:
        folder = root / "experiments" / "data" / "tiny_shakespeare"
        folder.mkdir(parents=True)
        (folder / "input.txt").symlink_to(data)
    return root


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a Jupyter kernel (this Python's) started in ``cwd``, in place;
    then drop what changes between runs besides the results (timings, the kernel's version).
    Raises nbclient's CellExecutionError, naming the cell, when a cell fails."""
    from nbclient import NotebookClient  # only for executing: writing the cells needs nbformat only

    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    nb.metadata = nbformat.from_dict(copy.deepcopy(METADATA))
    return nb


def execute_in_fresh_checkout(name: str, data: Path) -> nbformat.NotebookNode:
    """``name`` built and executed as a reader runs it: from ``notebooks/`` of a new checkout."""
    nb = build(name)
    with tempfile.TemporaryDirectory(prefix="nima-notebooks-") as tmp:
        root = user_checkout(Path(tmp) / "nima", nb, name, data)
        return execute(nb, root / "notebooks")


def offline() -> None:
    """The environment the kernels inherit: data from experiments/data only, no network."""
    for var in ("NIMA_DATA_DIR", "NIMA_DATA_MIRROR"):
        os.environ.pop(var, None)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ[var] = "http://127.0.0.1:9"  # nothing listens there: a download fails at once


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Write the example notebooks; with --execute, run them offline and keep their outputs "
        "(the committed form)."
    )
    every = ", ".join(NOTEBOOKS)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"notebooks (default: all of {every})")
    parser.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: notebooks/)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebook {unknown[0]!r}: one of {', '.join(NOTEBOOKS)}")
    data = find_tiny_shakespeare() if args.execute else None
    if data is not None:
        offline()
    for name in args.names or NOTEBOOKS:
        if data is None:
            text = render(name)
        else:
            start = time.perf_counter()
            try:
                nb = execute_in_fresh_checkout(name, data)
            except Exception as err:  # nbclient's CellExecutionError names the cell, with its traceback
                print(f"error: {name} failed:\n{err}", file=sys.stderr)
                return 1
            wrong = problems(nb)
            if wrong:
                print(f"error: {name} executed, but:", *wrong, sep="\n  ", file=sys.stderr)
                return 1
            text = write(nb)
            print(f"executed {name} in {time.perf_counter() - start:.0f} s")
        (args.out / name).write_text(text, encoding="utf-8")
        print("wrote", args.out / name, *([] if data else ["(no outputs: --execute runs it)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
