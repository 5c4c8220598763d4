"""Write the example notebooks from the cells below: `python notebooks/build_notebooks.py`.

The notebooks are generated so that they stay small, reviewable in diffs, and in step with the
API; tests/test_notebooks.py checks that the committed files equal what this script writes and
executes each one. Every notebook uses tiny sizes: it runs on a CPU in well under a minute, and
writes only under the checkout's ``experiments/notebooks/``: the first cell moves to the checkout's
root, so that a notebook started in ``notebooks/`` (as Jupyter does) finds the data that
``./run.sh demo`` prepared in ``experiments/data``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

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
print("working in", REPO)'''


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


TRAINING_BASICS = [
    md("""
# Training basics

The whole workflow on tiny Shakespeare with a small character-level model: prepare the data, build
a model, train it with the `Trainer`, evaluate it and generate text — then load the saved checkpoint
the way `nima generate` does. Tiny sizes: well under a minute on a laptop CPU. For real results, train
longer (`max_steps`) and wider (`d_model`, `n_layers`): see `docs/training.md`.
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
    md("## 3. Train\n\nA few dozen steps; checkpoints and `logs/metrics.jsonl` go to `output_dir`."),
    code('''
from data import DataCollator, create_dataloader
from training import Trainer, TrainingConfig

collator = DataCollator(tokenizer)
train_loader = create_dataloader(train_dataset, batch_size=16, collate_fn=collator)
val_loader = create_dataloader(val_dataset, batch_size=16, collate_fn=collator)

config = TrainingConfig(
    max_steps=80, batch_size=16, learning_rate=3e-3, warmup_steps=10, eval_every=40, eval_batches=10,
    output_dir=str(OUT / "basics"), progress_bar=False, log_every=20,
)
results = Trainer(model, config, train_loader, val_loader, tokenizer=tokenizer).train()
print({k: results[k] for k in ("final_val_loss", "best_val_loss", "steps", "tokens_per_s") if k in results})
'''),
    md("## 4. What was logged"),
    code('''
import json

for line in (OUT / "basics" / "logs" / "metrics.jsonl").read_text().splitlines():
    entry = json.loads(line)
    shown = {k: v for k, v in entry.items() if k in ("step", "loss", "val_loss", "lr")}
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()})
'''),
    md("""
## 5. Evaluate

`evaluate_model` gives the loss, perplexity (`exp(loss)`) and bits per character/byte. An untrained
model scores about `ln(65) = 4.17` nats per character.
"""),
    code('''
import math

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
print("step", loaded.info["step"], "tokenizer from", loaded.tokenizer_path)
print("ROMEO:" + generate_text(loaded.model, loaded.tokenizer, "ROMEO:", settings))
'''),
]

ADVANCED_TRAINING = [
    md("""
# Advanced training

Gradient accumulation, learning-rate schedules, precision choice, early stopping, callbacks,
exact resume from a checkpoint, and the `llama` architecture — each at tiny size (well under a minute
on a CPU in all).
"""),
    code(SETUP),
    code('''
import torch

from data import DataCollator, create_dataloader, prepare_dataset
from models import create_gpt_tiny
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
print("largest gradient difference:", max((a - b).abs().max().item() for a, b in zip(big, accumulated)))
'''),
    md("""
In a config: `TrainingConfig(batch_size=4, gradient_accumulation_steps=4)` trains like a batch of 16.
"""),
    md("""
## Learning-rate schedules

Warmup, then `cosine`, `linear`, `constant` or `cosine_restarts`, ending at `min_lr`:
"""),
    code('''
from training import get_optimizer, get_scheduler

for kind in ("cosine", "linear", "constant", "cosine_restarts"):
    optimizer = get_optimizer(fresh_model(), optimizer_type="adamw", learning_rate=1e-3)
    scheduler = get_scheduler(
        optimizer, scheduler_type=kind, num_training_steps=100, num_warmup_steps=10, min_lr=1e-4
    )
    lrs = []
    for step in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    print(f"{kind:16s}", " ".join(f"{lrs[s]:.1e}" for s in (0, 5, 10, 25, 50, 75, 99)))
'''),
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
every logged step, evaluation and save; here one records the validation losses. Trained on only 64
windows, the model soon learns them by heart: the training loss keeps falling while the validation
loss falls for a while, then rises (overfitting), and early stopping ends the run. `best_model.pt`
keeps the weights of the best evaluation.
"""),
    code('''
from torch.utils.data import Subset

from training import Callback

class ValLossRecorder(Callback):
    def __init__(self):
        self.val_losses = []

    def on_evaluate(self, run, metrics):
        self.val_losses.append(round(metrics["val_loss"], 3))

recorder = ValLossRecorder()
few_windows = Subset(train_dataset, range(64))
train_loader = create_dataloader(few_windows, batch_size=8, collate_fn=collator)
val_loader = create_dataloader(val_dataset, batch_size=16, collate_fn=collator, shuffle=False)
config = TrainingConfig(max_steps=300, batch_size=8, learning_rate=3e-3, warmup_steps=5, eval_every=10,
                        eval_batches=2, early_stopping_patience=2, save_every=0, save_epoch_checkpoints=False,
                        output_dir=str(OUT / "early"), progress_bar=False)
results = Trainer(fresh_model(d_model=128), config, train_loader, val_loader, callbacks=[recorder]).train()
print("stopped after", results["steps"], "of 300 steps; validation losses:", recorder.val_losses)
print("best validation loss:", round(results["best_val_loss"], 3))
'''),
    md("""
## Exact resume

Plan 20 steps; run them straight. Then run the same plan again but interrupt it after 10 steps (a
callback asks for a stop with `run.request_stop()`, as a crash would), and resume from its `step_10.pt` in a new
Trainer. Model, optimizer, schedule, data position and random state are all restored, so the
weights come out identical. The runs are pinned to `precision="fp32"`, so that all three compute
alike on any CPU: under `auto`, a CPU with bf16 instructions picks bf16 or fp32 after a quick
benchmark, and two runs that train in different precisions cannot match bit for bit.
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
same = all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
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
]

HYPERPARAMETER_TUNING = [
    md("""
# Hyperparameter tuning

A small, honest sweep: train the same tiny model with several learning rates and widths for the
same number of steps, score every run on the same validation tokens with `evaluate_model`, and
pick the best. At tiny sizes this takes well under a minute on a CPU; the method is the same for real
runs (longer, and with more than one seed per setting).
"""),
    code(SETUP),
    code('''
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

def train_and_score(learning_rate, d_model, steps=60, seed=0):
    torch.manual_seed(seed)
    model = create_gpt_tiny(
        vocab_size=tokenizer.vocab_size, n_layers=1, d_model=d_model, n_heads=2, max_seq_len=32
    )
    loader = create_dataloader(train_dataset, batch_size=16, collate_fn=collator, seed=seed)
    config = TrainingConfig(max_steps=steps, batch_size=16, learning_rate=learning_rate, warmup_steps=5,
                            eval_every=0, eval_batches=1, save_every=0, save_epoch_checkpoints=False,
                            output_dir=str(OUT / "sweep"), progress_bar=False, seed=seed)
    start = time.perf_counter()
    Trainer(model, config, loader).train()
    return evaluate_model(model, val_batches).loss, time.perf_counter() - start
'''),
    md("## Learning rate\n\nThe most important knob. Too small learns slowly; too large diverges."),
    code('''
lr_results = {}
for lr in (3e-4, 3e-3, 3e-2):
    loss, seconds = train_and_score(lr, d_model=32)
    lr_results[lr] = loss
    print(f"lr {lr:.0e}: validation loss {loss:.3f}  ({seconds:.1f} s)")
best_lr = min(lr_results, key=lr_results.get)
print("best learning rate:", best_lr)
'''),
    md("## Width at the best learning rate\n\nWider models learn more per step (and cost more per step)."),
    code('''
for d_model in (16, 32, 64):
    loss, seconds = train_and_score(best_lr, d_model=d_model)
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
    code('''
from IPython.display import Image, display

for name in ("intermediate_values", "optimization_history", "param_importances"):
    if name in result.plots:
        display(Image(filename=str(result.plots[name])))
for note in result.notes:
    print("note:", note)
'''),
    md("""
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
"""),
]

NOTEBOOKS = {
    "training_basics.ipynb": TRAINING_BASICS,
    "advanced_training.ipynb": ADVANCED_TRAINING,
    "hyperparameter_tuning.ipynb": HYPERPARAMETER_TUNING,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (no outputs), with a Python 3 kernel."""
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem.replace('_', '-')}-{i}"  # stable ids: stable diffs
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else HERE
    for name in NOTEBOOKS:
        (out / name).write_text(render(name), encoding="utf-8")
        print("wrote", out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
