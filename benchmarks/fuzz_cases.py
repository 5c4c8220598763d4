"""The fuzz test's cases: one ``nima`` command line each, with one thing wrong (sometimes two).

A case is generated from a seed and its index alone (:func:`make_case`), so that any case can be
run again. Its command is drawn by weight; then one fault of that command's list: a damaged input
file (from :mod:`fuzz_inputs`), an option of a random or extreme value, an output path that cannot
be written, or nothing at all (the good command must still work). Everything else stays good, so
that a case reaches the code behind its fault instead of stopping at the first check.

Extreme values are chosen to be refused or quick: a huge model shape is refused before it is
built, but a huge ``max_steps`` is a legitimate (endless) run, so training always ends with
``--training.max_steps`` of 1 to 3.
"""

from __future__ import annotations

import dataclasses
import gzip
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fuzz_inputs import World, damage, mutate_bytes, mutate_checkpoint_file

INVALID_INT = ["0", "-1", "-99999999999", "abc", "", "1.5", "nan", "1e400", "0x10", "٣", " "]
HUGE_INT = ["99999999999999999999999", "1000000000000000"]
FLOATS = ["nan", "inf", "-inf", "-1", "0", "-0.0", "1e-320", "1e308", "1e400", "abc", "", "0.5", "2", "1e-9"]
STRANGE_TEXT = ["", " ", "💥", "\x00", "a\nb", "--x", "-1", "é" * 50, "\u202e", "x" * 3000, "ROMEO:", "Ωmega"]
ENCODINGS = [
    "rot13", "hex", "base64", "zlib", "bz2", "uu", "utf-16", "utf-32", "utf-16-le", "punycode", "idna",
    "latin-1", "ascii", "cp1252", "mbcs", "klingon", "", "utf-8-sig", "unicode_escape", "quopri",
]  # fmt: skip
DEVICES = ["cuda", "cuda:7", "mps", "meta", "", "cpu:1", "tpu", "cuda:-1", "auto"]


@dataclasses.dataclass
class Case:
    """One generated command: its argument list, what is wrong, and what it may write."""

    index: int
    command: str
    argv: list[str]
    notes: list[str]
    """What was damaged or set strangely (for the failure report)."""
    outputs: list[str]
    """Paths under the case folder that a successful run writes by design (may change)."""
    stdin: str = ""
    bookkeeping: list[str] = dataclasses.field(default_factory=list)
    """Paths that may change even when the command fails: a resumed run's ``config.yaml`` and
    ``logs/``, which every start writes (its checkpoints must not change)."""


class Builder:
    """What a case generator works with: the seeded random stream, the world, the case folder."""

    def __init__(self, rng: random.Random, world: World, folder: Path) -> None:
        self.rng = rng
        self.world = world
        self.folder = folder
        self.notes: list[str] = []
        self.outputs: list[str] = []
        self.bookkeeping: list[str] = []
        self.count = 0

    # -- choices

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def fault(self, *faults: str) -> str:
        """One of ``faults`` (``none`` included by the caller), noted."""
        chosen = self.pick(list(faults))
        self.notes.append(f"fault: {chosen}")
        return chosen

    def value(self, option: str, pool: list[str]) -> list[str]:
        chosen = self.pick(pool)
        self.notes.append(f"{option} {chosen!r}"[:80])
        return [option, chosen]

    # -- files

    def name(self, stem: str) -> Path:
        self.count += 1
        return self.folder / f"{stem}_{self.count}"

    def damaged(self, source: Path) -> Path:
        """A damaged copy of file ``source`` in the case folder."""
        data, what = damage(self.rng, source)
        target = self.name(source.stem).with_suffix(source.suffix)
        target.write_bytes(data)
        self.notes.append(f"{source.name}: {what}")
        return target

    def copy(self, source: Path) -> Path:
        target = self.name(source.name)
        shutil.copytree(source, target)
        return target

    def damaged_folder(self, source: Path, files: list[str] | None = None) -> Path:
        """A copy of folder ``source`` with one of ``files`` (default: any) damaged, removed, or
        replaced by a folder."""
        target = self.copy(source)
        candidates = (
            [target / f for f in files] if files else sorted(p for p in target.rglob("*") if p.is_file())
        )
        victim = self.pick([p for p in candidates if p.exists()])
        where = f"{source.name}/{victim.relative_to(target)}"
        roll = self.rng.random()
        if roll < 0.1:
            victim.unlink()
            self.notes.append(f"{where} removed")
        elif roll < 0.15:
            victim.unlink()
            victim.mkdir()
            self.notes.append(f"{where} is a folder")
        else:
            data, what = damage(self.rng, victim)
            victim.write_bytes(data)
            self.notes.append(f"{where}: {what}")
        return target

    def output_folder(self, stem: str, bad: bool) -> Path:
        """A folder to write: fresh (and allowed to be written), or with ``bad`` one that cannot be."""
        if bad:
            where = self.pick(["under", "at"])
            self.notes.append(f"output folder {where} a regular file")
            return self.world.blocker / stem if where == "under" else self.world.blocker
        path = self.name(stem)
        self.outputs.append(path.name)
        return path

    def output_file(self, stem: str, bad: bool) -> Path:
        if bad:
            where = self.pick(["under a regular file", "a folder"])
            self.notes.append(f"output file {where}")
            return self.world.blocker / f"{stem}.png" if where != "a folder" else self.world.root
        path = self.name(stem).with_suffix(".png")
        self.outputs.append(path.name)
        return path

    def bad_checkpoint(self) -> Path:
        if self.chance(0.85):
            return self.damaged(self.world.checkpoint)
        what = self.pick([self.world.corpus, self.world.root, self.folder / "missing.pt", self.world.config])
        self.notes.append(f"checkpoint is {what.name}")
        return what

    def bad_tokenizer(self) -> Path:
        roll = self.rng.random()
        if roll < 0.75:
            return self.damaged(self.world.prepared / "tokenizer.json")
        if roll < 0.85:
            return self.damaged_folder(self.world.prepared, ["tokenizer.json"])
        what = self.pick([self.world.corpus, self.world.root, self.world.hf, self.world.checkpoint])
        self.notes.append(f"tokenizer is {what.name}")
        return what

    def bad_corpus(self) -> Path:
        roll = self.rng.random()
        if roll < 0.55:
            return self.damaged(self.world.corpus)
        if roll < 0.8:
            return self.damaged(self.world.jsonl)
        if roll < 0.85:  # a compressed or columnar file, damaged
            data = self.world.jsonl.read_bytes()
            suffix = self.pick([".jsonl.gz", ".jsonl.zst", ".parquet"])
            target = self.name("records").with_name(self.name("records").name + suffix)
            packed = gzip.compress(data) if suffix == ".jsonl.gz" else data
            target.write_bytes(mutate_bytes(self.rng, packed)[0])
            self.notes.append(f"a damaged {suffix}")
            return target
        if roll < 0.9:
            folder = self.name("texts")
            folder.mkdir()
            for i in range(self.rng.randint(0, 3)):
                (folder / f"{i}.txt").write_bytes(mutate_bytes(self.rng, self.world.corpus.read_bytes())[0])
            self.notes.append("a folder of damaged texts")
            return folder
        what = self.pick([self.world.checkpoint, self.folder / "nope.txt", self.world.root / "data"])
        self.notes.append(f"corpus is {what.name}")
        return what

    def run_folder(self, damaged: bool) -> Path:
        """A copy of the world's run, with one of its files damaged."""
        if not damaged:
            return self.copy(self.world.run)
        files = ["config.yaml", "logs/metrics.jsonl", "logs/run_info.json", "results.json"]
        files += ["checkpoints/step_2.pt", "checkpoints/best_model.pt"]
        return self.damaged_folder(self.world.run, files)

    def case(self, index: int, command: str, argv: list[str], stdin: str = "") -> Case:
        return Case(index, command, [command, *argv], self.notes, self.outputs, stdin, self.bookkeeping)


# ---------------------------------------------------------------------------------- the commands


def prepare_case(b: Builder) -> list[str]:
    fault = b.fault(
        "corpus", "tokenizer", "encoding", "vocab_size", "val_fraction", "text_field", "data_dir",
        "workers", "shard_tokens", "part", "val_files", "sample", "none",
    )  # fmt: skip
    dataset = b.bad_corpus() if fault == "corpus" else b.pick([b.world.corpus, b.world.jsonl])
    argv = ["--quiet"] if b.chance(0.8) else []
    argv += ["--dataset", str(dataset), "--data_dir", str(b.output_folder("data", bad=fault == "data_dir"))]
    tokenizer = b.pick(["char", "byte", "bpe"])
    if fault == "tokenizer":
        tokenizer = str(b.bad_tokenizer()) if b.chance(0.8) else b.pick(["word", "", "BPE"])
    argv += ["--tokenizer", tokenizer]
    if tokenizer == "bpe" or fault == "vocab_size":
        pool = INVALID_INT + ["256", "1000000000"] if fault == "vocab_size" else ["300", "100000"]
        argv += b.value("--vocab_size", pool)
    if fault == "encoding":
        argv += b.value("--encoding", ENCODINGS)
    if fault == "val_fraction":
        argv += b.value("--val_fraction", FLOATS + ["0.999999", "1e-9"])
    if fault == "text_field":
        argv += b.value("--text_field", ["body", "", "💥", "text "])
    if fault == "workers":
        argv += b.value("--workers", INVALID_INT + HUGE_INT + ["2"])
    if fault == "shard_tokens":
        argv += b.value("--shard_tokens", INVALID_INT + HUGE_INT + ["1", "7"])
    if fault == "part":
        argv += b.value("--part", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3", "-1/2", "2/2", ""])
    if fault == "val_files":
        argv += b.value("--val_files", ["*.nothing", "", "*", "[", "💥", "*.txt"])
    if fault == "sample":
        argv += b.value("--tokenizer_sample_bytes", INVALID_INT + ["1"])
    if b.chance(0.1):
        argv += ["--force"]
    return argv


TRAIN_KEYS = {
    # key: values that are invalid, or valid and quick; huge values only where they are refused
    "model.n_layers": INVALID_INT + HUGE_INT + ["2"],
    "model.d_model": INVALID_INT + HUGE_INT + ["3", "8"],
    "model.n_heads": INVALID_INT + HUGE_INT + ["3"],
    "model.max_seq_len": INVALID_INT + HUGE_INT + ["1", "2"],
    "model.d_ff": INVALID_INT + HUGE_INT,
    "model.vocab_size": INVALID_INT + HUGE_INT + ["1"],
    "model.arch": ["llama", "bert", "", "1"],
    "model.n_kv_heads": INVALID_INT + ["1", "3"],
    "model.dropout": FLOATS,
    "model.attn_dropout": FLOATS,
    "model.rope_theta": FLOATS,
    "model.norm_eps": FLOATS,
    "model.init_std": FLOATS,
    "model.activation": ["relu", "silu", "gelu_tanh", ""],
    "model.qk_norm": ["maybe", "true"],
    "training.learning_rate": FLOATS,
    "training.batch_size": INVALID_INT + HUGE_INT + ["auto", "1"],
    "training.gradient_accumulation_steps": INVALID_INT + ["2"],
    "training.warmup_steps": INVALID_INT + HUGE_INT,
    "training.weight_decay": FLOATS,
    "training.gradient_clip": FLOATS,
    "training.min_lr": FLOATS,
    "training.betas": ["[0.9]", "[2, 3]", "abc", "[nan, 0.9]", "0.9", "[0.9, 0.999, 1]"],
    "training.eps": FLOATS,
    "training.momentum": FLOATS,
    "training.optimizer_type": ["adamw", "sgd", "lion", "", "adam", "adamw_scale"],
    "training.lr_scheduler_type": ["cosine", "linear", "constant", "bogus", ""],
    "training.lr_num_cycles": FLOATS,
    "training.precision": ["fp16", "bf16", "fp8", "auto", ""],
    "training.use_mixed_precision": ["maybe", "true"],
    "training.device": DEVICES,
    "training.compile": ["maybe", "true"],
    "training.distributed_strategy": ["fsdp", "ddp", "zero3", ""],
    "training.seed": INVALID_INT + HUGE_INT,
    "training.eval_every": INVALID_INT + ["1"],
    "training.log_every": INVALID_INT + HUGE_INT,
    "training.save_every": INVALID_INT + ["1"],
    "training.keep_last_checkpoints": INVALID_INT,
    "training.on_nonfinite": ["skip", "stop", "explode"],
    "training.max_consecutive_skips": INVALID_INT,
    "training.early_stopping_patience": INVALID_INT,
    "training.early_stopping_min_delta": FLOATS,
    "training.report_to": ["wandb", "tensorboard", "[x]", "mlflow"],
    "training.peak_flops": FLOATS,
    "training.num_epochs": INVALID_INT + HUGE_INT,
    "training.async_checkpoint": ["maybe", "true"],
    "data.tokenizer": ["byte", "bpe", "word", ""],
    "data.encoding": ENCODINGS,
    "data.val_fraction": FLOATS,
    "data.text_field": ["body", ""],
    "data.num_workers": INVALID_INT + HUGE_INT,
    "data.pin_memory": ["maybe"],
    "data.dataset": ["", "nope.txt", "tiny_shakespeare_x"],
    "training.learnig_rate": ["1"],
    "trainer.x": ["1"],
    "model": ["1"],
}


BOUNDS = ["--training.eval_batches=1", "--training.batch_size=2", "--model.max_seq_len=16"]
"""Set before a case's own overrides (which win): a config that lost its model: or training:
section is a legitimate run of every default, a minute per step on a CPU."""


def train_case(b: Builder) -> list[str]:
    fault = b.fault(
        "config", "override", "override", "override", "init_from", "checkpoint", "resume", "output_dir",
        "data_dir", "corpus", "tokenizer", "arguments", "none",
    )  # fmt: skip
    out = b.output_folder("run", bad=fault == "output_dir")
    data_dir = b.output_folder("data", bad=fault == "data_dir")
    config = b.world.config
    if fault == "config":
        config = b.damaged(b.world.config) if b.chance(0.85) else b.pick([b.world.root, b.folder / "no.yaml"])
    argv = ["--config", str(config), f"--training.output_dir={out}", f"--data.data_dir={data_dir}", *BOUNDS]
    max_steps = 1
    if fault == "init_from":
        argv += ["--init_from", str(b.bad_checkpoint())]
    elif fault == "checkpoint":
        argv += ["--checkpoint", str(b.bad_checkpoint())]
        max_steps = 3
    elif fault == "resume":
        shutil.copytree(b.world.run, out)
        newest = out / "checkpoints" / "step_2.pt"
        data, what = mutate_checkpoint_file(b.rng, newest.read_bytes())
        newest.write_bytes(data)
        b.notes.append(f"--resume from step_2.pt: {what}")
        b.bookkeeping += [f"{out.name}/config.yaml", f"{out.name}/logs/"]  # a start that then diverges
        argv += ["--resume"]
        max_steps = 3
    elif fault == "corpus":
        argv += [f"--data.dataset={b.bad_corpus()}"]
    elif fault == "tokenizer":
        argv += [f"--data.tokenizer={b.bad_tokenizer()}"]
    elif fault == "arguments":
        argv += b.pick(
            [
                ["--quick_test"],
                ["--bogus"],
                ["stray"],
                ["--training.max_steps"],
                ["--resume", "--checkpoint", "x"],
            ]
        )
    overrides = b.rng.randint(1, 2) if fault == "override" else 0
    for _ in range(overrides):
        key = b.pick(sorted(TRAIN_KEYS))
        value = b.pick(TRAIN_KEYS[key])
        argv += [f"--{key}={value}"] if b.chance(0.8) else [f"--{key}", value]
        b.notes.append(f"--{key}={value!r}")
    return [*argv, f"--training.max_steps={max_steps}"]


EVAL_OPTIONS = {
    "--max_tokens": INVALID_INT + HUGE_INT + ["5", "50"],
    "--context_length": INVALID_INT + HUGE_INT + ["4", "17"],
    "--stride": INVALID_INT + HUGE_INT + ["1", "3"],
    "--batch_size": INVALID_INT + HUGE_INT + ["1"],
    "--threads": INVALID_INT + HUGE_INT + ["1"],
    "--split": ["train", "val", "test"],
    "--precision": ["fp32", "bf16", "fp16", "fp8", "auto"],
    "--device": DEVICES,
}


def eval_case(b: Builder) -> list[str]:
    fault = b.fault("checkpoint", "tokenizer", "text", "data", "option", "option", "none")
    checkpoint = b.bad_checkpoint() if fault == "checkpoint" else b.world.checkpoint
    argv = ["--checkpoint", str(checkpoint)]
    if fault == "tokenizer":
        argv += ["--tokenizer", str(b.bad_tokenizer())]
    if fault == "text":
        argv += ["--text", str(b.bad_corpus())]
    elif fault == "data":
        argv += ["--data", str(b.damaged_folder(b.world.prepared))]
    elif b.chance(0.5):
        argv += ["--data", str(b.world.prepared)]
    if fault == "option":
        option = b.pick(sorted(EVAL_OPTIONS))
        argv += b.value(option, EVAL_OPTIONS[option])
    if "--device" not in argv:
        argv += ["--device", "cpu"]
    if b.chance(0.3):
        argv += ["--json"]
    return argv


GENERATE_OPTIONS = {
    "--temperature": FLOATS,
    "--top_k": INVALID_INT + HUGE_INT + ["1", "3"],
    "--top_p": FLOATS,
    "--repetition_penalty": FLOATS,
    "--seed": INVALID_INT + HUGE_INT + ["18446744073709551615", "-9223372036854775809", "3"],
    "--num_samples": INVALID_INT + ["2"],
    "--threads": INVALID_INT + HUGE_INT + ["1"],
    "--max_new_tokens": INVALID_INT + ["1000000000000", "10" * 20],
    "--device": DEVICES,
}


def generate_case(b: Builder) -> list[str]:
    fault = b.fault("checkpoint", "tokenizer", "prompt", "prompt_file", "option", "option", "none")
    checkpoint = b.bad_checkpoint() if fault == "checkpoint" else b.world.checkpoint
    argv = ["--checkpoint", str(checkpoint), "--max_new_tokens", b.pick(["0", "3", "8"])]
    if fault == "tokenizer":
        argv += ["--tokenizer", str(b.bad_tokenizer())]
    if fault == "prompt":
        argv += b.value("--prompt", STRANGE_TEXT) if b.chance(0.85) else ["--interactive"]
    elif fault == "prompt_file":
        argv += ["--prompt_file", str(b.bad_corpus())]
    elif b.chance(0.5):
        argv += ["--prompt", "ROMEO:"]
    if fault == "option":
        option = b.pick(sorted(GENERATE_OPTIONS))
        argv += b.value(option, GENERATE_OPTIONS[option])
    if "--device" not in argv:
        argv += ["--device", "cpu"]
    if b.chance(0.1):
        argv += ["--no_stop_at_eos"]
    return argv


def export_case(b: Builder) -> list[str]:
    fault = b.fault("checkpoint", "out", "out_exists", "tokenizer", "none")
    checkpoint = b.bad_checkpoint() if fault == "checkpoint" else b.world.checkpoint
    out = b.world.hf if fault == "out_exists" else b.output_folder("hf", bad=fault == "out")
    argv = ["--checkpoint", str(checkpoint), "--out", str(out)]
    if fault == "tokenizer":
        argv += ["--tokenizer", str(b.bad_tokenizer())]
    if b.chance(0.2) and fault != "out_exists":
        argv += ["--overwrite"]
    return argv


def import_case(b: Builder) -> list[str]:
    fault = b.fault("hf_model", "hf_model", "hf_model", "not_a_folder", "out", "out_exists", "none")
    if fault == "hf_model":
        hf = b.damaged_folder(b.world.hf)
    elif fault == "not_a_folder":
        hf = b.pick([b.world.root, b.world.corpus, b.folder / "nothing", b.world.run])
    else:
        hf = b.world.hf
    if fault == "out_exists":  # an earlier import there: refused without --overwrite
        out = b.name("imported")
        (out / "checkpoints").mkdir(parents=True)
        shutil.copyfile(b.world.checkpoint, out / "checkpoints" / "model.pt")
    else:
        out = b.output_folder("imported", bad=fault == "out")
    return ["--hf_model", str(hf), "--out", str(out)]


def plot_case(b: Builder) -> list[str]:
    fault = b.fault("run", "run", "output", "options", "not_a_run", "none")
    runs = [str(b.run_folder(damaged=fault == "run")) for _ in range(b.rng.randint(1, 2))]
    if fault == "not_a_run":
        runs.append(str(b.pick([b.world.corpus, b.folder / "nope", b.world.root])))
    argv = [*runs, "--output", str(b.output_file("plot", bad=fault == "output"))]
    if fault == "options":
        argv += b.value("--x", ["step", "tokens", "time", "epoch", ""])
        argv += b.value("--title", STRANGE_TEXT + ["$\\frac{", "%s %d", "$$"])
    return argv


def report_case(b: Builder) -> list[str]:
    fault = b.fault("run", "run", "run", "not_a_run", "none")
    if fault == "not_a_run":
        run = b.pick([b.world.corpus, b.folder / "nope", b.world.root])
    else:
        run = b.run_folder(damaged=fault == "run")
        b.outputs += [f"{run.name}/report.md", f"{run.name}/loss.png", f"{run.name}/logs/run_info.json"]
    argv = [str(run)]
    if b.chance(0.3):
        argv += ["--plot"]
    if b.chance(0.3):
        argv += ["--sample"]
    return argv


SWEEP_SPACES = [
    "training.learning_rate=log:1e-4..1e-2", "training.learning_rate=1..0", "model.d_model=choice:", "x", "=",
    "training.bogus=1..2", "model.n_layers=int:1..1e9", "training.learning_rate=log:0..1", "💥=1..2",
    "model.d_model=choice:16,abc", "training.warmup_steps=int:-5..-1", "training.learning_rate=nan..1",
]  # fmt: skip
SWEEP_OPTIONS = {
    "--trials": INVALID_INT + ["1"],
    "--steps": INVALID_INT + ["1"],
    "--pruner": ["median", "none", "percentile:200", "percentile:x", "hyperband", "bogus", ""],
    "--sampler": ["tpe", "random", "grid"],
    "--seed": INVALID_INT + HUGE_INT,
    "--prune_after": INVALID_INT,
    "--startup_trials": INVALID_INT,
    "--study_name": ["", "💥", "a/b"],
}


def sweep_case(b: Builder) -> list[str]:
    fault = b.fault("config", "space", "option", "option", "study_dir", "storage", "none")
    config = b.damaged(b.world.config) if fault == "config" else b.world.config
    out = b.name("out")
    b.outputs.append(out.name)
    argv = ["--config", str(config), "--study_dir", str(b.output_folder("study", bad=fault == "study_dir"))]
    data_dir = b.name("data")
    b.outputs.append(data_dir.name)
    argv += [
        f"--training.output_dir={out}",
        f"--data.data_dir={data_dir}",
        "--no_plots",
        "--steps",
        "1",
        *BOUNDS,
    ]
    if fault == "space":
        argv += b.value("--space", SWEEP_SPACES)
    elif b.chance(0.5):
        argv += ["--space", "training.learning_rate=log:1e-4..1e-2"]
    if fault == "storage":
        argv += b.value(
            "--storage", ["sqlite:///" + str(b.world.blocker / "x.db"), "bogus://x", "", "sqlite://"]
        )
    option = b.pick(sorted(SWEEP_OPTIONS)) if fault == "option" else None
    if option:
        argv += b.value(option, SWEEP_OPTIONS[option])
    if option != "--trials":
        argv += ["--trials", "1"]
    return argv


GENERATORS: dict[str, Callable[[Builder], list[str]]] = {
    "prepare": prepare_case,
    "train": train_case,
    "eval": eval_case,
    "generate": generate_case,
    "export": export_case,
    "import": import_case,
    "plot": plot_case,
    "report": report_case,
    "sweep": sweep_case,
}
WEIGHTS = {
    "prepare": 4,
    "train": 4,
    "eval": 3,
    "generate": 3,
    "export": 2,
    "import": 3,
    "plot": 2,
    "report": 2,
}
WEIGHTS["sweep"] = 1  # a good sweep runs a trial: slower than the rest
COMMANDS = tuple(GENERATORS)


def make_case(seed: int, index: int, world: World, folder: Path) -> Case:
    """Case ``index`` of ``seed``: its input files written into ``folder``, its command line."""
    rng = random.Random(f"{seed}-{index}")
    command = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    b = Builder(rng, world, folder)
    argv = GENERATORS[command](b)
    stdin = "ROMEO:\n💥\n\nquit\n" if "--interactive" in argv else ""
    return b.case(index, command, argv, stdin)
