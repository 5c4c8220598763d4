"""Memory at real sizes: linear attention, the plan against a measured step, batch_size: auto, the
one-line refusal, and progress lines that do not wait for slow steps."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_helpers import small_loader, tiny_model, training_config

from nima.checkpoint import load_model_from_checkpoint
from nima.config import RunConfig
from nima.distributed import DistributedContext
from nima.errors import ConfigError
from nima.memory import HEADROOM, MemoryWatch, available_memory, estimate_training_memory, measure_peak
from nima.memory import plan as memory_plan
from nima.memory.system import _cgroup_room
from nima.models import LOSS_CHUNK_ROWS, ModelConfig, create_model
from nima.runtime import PrecisionChoice, Runtime
from nima.training import (
    ProgressPrinter,
    Trainer,
    TrainingConfig,
    find_max_batch_size,
    get_optimizer,
    get_scheduler,
)
from nima.training.recipe import build_run
from nima.training.step import TrainStep

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def _step_peak(config: ModelConfig, batch: int, context: int) -> int:
    """Peak bytes of one forward+backward (gradients already allocated), measured."""
    torch.manual_seed(0)
    model = create_model(config).train()
    ids = torch.randint(0, config.vocab_size, (batch, context))

    def step() -> None:
        model(ids, labels=ids, return_logits=False).loss.backward()

    step()
    peak = measure_peak(step)
    assert peak is not None, "this test needs Linux's /proc/self/clear_refs"
    return peak


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_attention_memory_grows_linearly_with_the_context(dropout: float) -> None:
    config = ModelConfig(vocab_size=65, d_model=64, n_heads=4, n_layers=2, max_seq_len=2048, dropout=dropout)
    short, long = _step_peak(config, 4, 512), _step_peak(config, 4, 1024)
    # Twice the context: about twice the memory (the quadratic path would keep 4x the scores).
    assert long / short < 2.5, (short / MiB, long / MiB)


def test_attention_dropout_on_cpu_is_the_quadratic_path_the_plan_counts() -> None:
    # The control for the test above: attention dropout has no fused CPU kernel, keeps (T x T)
    # scores, and its memory grows much faster than the context; the plan knows it.
    config = ModelConfig(vocab_size=65, d_model=64, n_heads=4, n_layers=2, max_seq_len=2048, attn_dropout=0.1)
    short, long = _step_peak(config, 1, 512), _step_peak(config, 1, 2048)
    assert long / short > 6.0, (short / MiB, long / MiB)  # 4x the context; linear would be about 4x
    linear = estimate_training_memory(config, 2, 1024)
    quadratic = estimate_training_memory(config, 2, 1024, quadratic_attention=True)
    assert quadratic.activations > 3 * linear.activations


def test_the_plans_memory_per_sequence_is_within_a_quarter_of_measured_steps() -> None:
    # What grows with the batch (activations, logits) is what decides whether a run fits; the
    # fixed part (weights, optimizer, workspace) is checked at real sizes by benchmarks/memory.py.
    # At this size the activations live in glibc's heap, whose slack the plan counts.
    config = ModelConfig(vocab_size=65, d_model=256, n_heads=4, n_layers=4, max_seq_len=512)

    def measured(batch: int) -> int:
        ids = torch.randint(0, 65, (batch, 512))

        def two_steps() -> None:  # through the Trainer's own step (its allocator settings included)
            torch.manual_seed(0)
            model = create_model(config).train()
            optimizer = get_optimizer(model, "adamw", learning_rate=1e-4)
            scheduler = get_scheduler(optimizer, "constant", num_training_steps=2)
            runtime = Runtime(
                DistributedContext(), torch.device("cpu"), PrecisionChoice("fp32", "cpu", "test")
            )
            step = TrainStep(model, optimizer, scheduler, runtime, 1.0, list(model.parameters()))
            for _ in range(2):
                step([{"input_ids": ids, "labels": ids}])

        return measure_peak(two_steps)

    def planned(batch: int) -> int:
        return estimate_training_memory(config, batch, 512, loss_chunk_rows=LOSS_CHUNK_ROWS).total

    measured(2)  # the process's first step also pays one-time costs (thread pools, kernel caches)
    measured_per_sequence = (measured(8) - measured(2)) / 6
    planned_per_sequence = (planned(8) - planned(2)) / 6
    assert 0.75 < planned_per_sequence / measured_per_sequence < 1.25, (
        planned_per_sequence / MiB,
        measured_per_sequence / MiB,
    )


def test_find_max_batch_size_follows_the_memory_there_is(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model(ModelConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=2, max_seq_len=512))
    roomy = find_max_batch_size(model, max_batch_size=64)
    monkeypatch.setenv("NIMA_MEMORY_LIMIT", "300MiB")
    tight = find_max_batch_size(model, max_batch_size=64)
    assert 1 <= tight < roomy <= 64
    assert all(p.grad is None for p in model.parameters())  # the trial steps leave nothing behind


def _tiny_run(tmp_path: Path, **training) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {"d_model": 128, "n_heads": 4, "n_layers": 2, "max_seq_len": 512},
            "training": {
                "max_steps": 2,
                "output_dir": str(tmp_path / "out"),
                "eval_every": 0,
                "progress_bar": False,
                "precision": "fp32",
                **training,
            },
            "data": {"dataset": "tiny_shakespeare", "tokenizer": "char"},
        }  # fmt: skip
    )


def test_batch_size_auto_picks_a_smaller_micro_batch_and_keeps_the_effective_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIMA_MEMORY_LIMIT", "300MiB")
    said: list[str] = []
    run = build_run(_tiny_run(tmp_path, batch_size="auto", gradient_accumulation_steps=2), say=said.append)
    training = run.config.training
    assert training.batch_size < 32
    assert training.batch_size * training.gradient_accumulation_steps == 64  # 32 x the 2 asked for
    assert run.trainer.batch_size == training.batch_size
    assert any(line.startswith("batch_size auto: micro-batch") for line in said)
    assert run.train().steps == 2


def test_batch_size_auto_with_a_loader_of_your_own_is_a_config_error(tmp_path: Path) -> None:
    model = create_model(ModelConfig(vocab_size=65, d_model=32, n_heads=4, n_layers=1, max_seq_len=16))
    loader = [
        {"input_ids": torch.zeros(2, 16, dtype=torch.long), "labels": torch.zeros(2, 16, dtype=torch.long)}
    ]
    with pytest.raises(ConfigError, match="find_max_batch_size"):
        Trainer(model, TrainingConfig(batch_size="auto", output_dir=str(tmp_path)), loader)


def test_a_run_that_would_not_fit_is_refused_in_one_line(
    tmp_path: Path, monkeypatch, session_data_dir
) -> None:
    # The guide's base config (batch 32 x 1024: about 8 GiB in fp32) on a machine with 3 GiB.
    monkeypatch.setenv("NIMA_MEMORY_LIMIT", "3GiB")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "configs/base_model.yaml", "--training.max_steps=1",
         f"--training.output_dir={out}", "--training.precision=fp32"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this run will not fit in memory"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "training.gradient_accumulation_steps" in lines[0] and "GiB" in lines[0]
    assert not list(out.rglob("*.pt"))  # refused before anything was trained or saved


def test_the_plan_is_said_at_start(tmp_path: Path, capsys) -> None:
    run = build_run(_tiny_run(tmp_path, batch_size=4))
    run.train()
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("memory plan:"))
    assert "batch 4 x 512, fp32" in line and "available (RAM)" in line
    assert available_memory("cpu") is not None


class SlowModel(torch.nn.Module):
    """A tiny model whose every forward pass takes a while: a stand-in for a big one on a CPU."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.weight = torch.nn.Parameter(torch.zeros(65))

    def forward(self, input_ids, labels=None):
        time.sleep(self.seconds)
        logits = self.weight.expand(*input_ids.shape, 65)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 65), labels.reshape(-1))


def test_slow_steps_print_progress_before_log_every(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(ProgressPrinter, "first_line_s", 0.3)
    monkeypatch.setattr(ProgressPrinter, "heartbeat_s", 10.0)
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "labels": torch.zeros(2, 8, dtype=torch.long)}
    config = TrainingConfig(
        max_steps=4, log_every=100, progress_bar=False, output_dir=str(tmp_path), eval_every=0
    )
    Trainer(SlowModel(0.2), config, [batch] * 4).train()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    first = re.fullmatch(r"step ([123])/4 \| ([\d.]+) s/step \| eta \dm\d\ds", lines[0])
    assert first, lines  # a line with seconds per step and the ETA, long before step 100
    assert float(first.group(2)) >= 0.2
    assert lines[-1].startswith("step 4/4 | loss")


# ------------------------------------------------------------------- the GPU paths, simulated on a CPU
# A GPU that runs out of memory raises torch.OutOfMemoryError (a CPU's process is killed instead);
# raising it on purpose exercises the same code here.


def test_the_gpu_batch_search_finds_the_largest_batch_that_does_not_raise() -> None:
    from nima.memory.batch import _try_on_gpu

    tried: list[int] = []

    def step(batch: int) -> None:
        tried.append(batch)
        if batch > 37:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    assert _try_on_gpu(step, 1024, 0, torch.device("cpu")) == 37
    assert tried[:7] == [1, 2, 4, 8, 16, 32, 64] and len(tried) <= 13  # doubling, then bisection
    assert _try_on_gpu(step, 20, 0, torch.device("cpu")) == 20  # capped by the effective batch


def test_running_out_of_gpu_memory_during_training_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    model = create_model(ModelConfig(vocab_size=65, d_model=32, n_heads=4, n_layers=2, max_seq_len=32))
    forwards = []

    def out_of_memory_at_step_3(module, args):
        forwards.append(1)
        if len(forwards) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    model.register_forward_pre_hook(out_of_memory_at_step_3)
    samples = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 65, (20, 32))]
    loader = torch.utils.data.DataLoader(samples, batch_size=4)  # its batch size gives the plan
    config = TrainingConfig(max_steps=5, batch_size=4, output_dir=str(tmp_path / "out"), precision="fp32")
    trainer = Trainer(model, config, loader)
    with pytest.raises(ConfigError) as refused:
        trainer.train()
    message = str(refused.value)
    assert "\n" not in message and message.startswith("the GPU ran out of memory at step 3 (the plan: ")
    assert "training.batch_size: auto" in message and "model.gradient_checkpointing: true" in message


def test_a_background_checkpoints_copy_is_planned_and_named_as_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    # async_checkpoint copies the weights and optimizer state while training goes on: on a CPU
    # that copy shares the memory with the steps, so the plan counts it.
    config = ModelConfig(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024)
    cpu = Runtime(DistributedContext(), torch.device("cpu"), PrecisionChoice("fp32", "cpu", "test"))
    plain = memory_plan.estimate_for(config, 4, 1024, cpu, TrainingConfig())
    background = memory_plan.estimate_for(config, 4, 1024, cpu, TrainingConfig(async_checkpoint=True))
    assert plain.checkpoint_copy == 0
    assert background.checkpoint_copy == plain.weights + plain.optimizer  # fp32 weights, two AdamW moments
    assert background.total == plain.total + background.checkpoint_copy
    assert "checkpoint copy 1.4 GiB" in background.describe()
    on_gpu = estimate_training_memory(config, 4, 1024, device="cuda", background_checkpoint=True)
    assert on_gpu.checkpoint_copy == 0  # the copy goes to host memory, not the GPU's

    # Room for the step but not for the copy: refused, with turning the background off as a fix.
    room = (plain.total + background.total) // 2 / 0.85  # HEADROOM: 85% of what is available is usable
    monkeypatch.setenv("NIMA_MEMORY_LIMIT", str(int(room)))
    model = create_model(dataclasses.replace(config, n_layers=1))  # the plan uses its config only
    model.config = config
    with pytest.raises(ConfigError, match=r"training\.async_checkpoint: false"):
        memory_plan.plan_memory(model, TrainingConfig(precision="fp32", async_checkpoint=True), 4, 1024, cpu)
    assert memory_plan.plan_memory(model, TrainingConfig(precision="fp32"), 4, 1024, cpu) is not None


class MemoryLeft:
    """Stands in for the machine's free memory: plenty, until ``low_after`` steps have run."""

    def __init__(self, low_after: int) -> None:
        self.low_after = low_after
        self.steps = 0

    def on_step(self, trainer: Trainer) -> None:
        self.steps = trainer.step

    def __call__(self) -> int:
        return 100 * MiB if self.steps >= self.low_after else 20 * 1024 * MiB


@pytest.mark.parametrize("async_checkpoint", [False, True])
def test_a_cpu_run_running_out_of_memory_saves_and_stops_in_one_line(
    tmp_path: Path, prepared, monkeypatch: pytest.MonkeyPatch, async_checkpoint: bool
) -> None:
    # A CPU that runs out of memory is killed silently: when the machine's free memory falls under
    # the floor between steps (here after step 3), the run saves that step and stops with one line.
    left = MemoryLeft(low_after=3)
    monkeypatch.setattr("nima.memory.watch.system_memory_left", left)
    config = training_config(tmp_path, "fp32", async_checkpoint=async_checkpoint, log_every=5)
    trainer = Trainer(tiny_model(prepared), config, small_loader(prepared), callbacks=[left])
    trainer.memory_watch.every_s = 0  # read at every step (a real run reads at most once a second)
    assert trainer.memory_watch.floor == 512 * MiB  # 5% of 20 GiB is more: the floor is 512 MiB
    with pytest.raises(ConfigError) as stopped:
        trainer.train()
    message = str(stopped.value)
    saved = tmp_path / "out" / "checkpoints" / "step_3.pt"
    assert "\n" not in message and message.startswith("memory is running out: 100 MiB left on this machine")
    assert f"after step 3 (the floor is 512 MiB); saved {saved}" in message and "--resume" in message
    assert saved.is_file() and not list(saved.parent.glob("*.tmp*"))

    monkeypatch.setattr("nima.memory.watch.system_memory_left", lambda: 20 * 1024 * MiB)
    resumed = Trainer(tiny_model(prepared, seed=1), config, small_loader(prepared))
    resumed.load_checkpoint(saved)
    assert resumed.step == 3 and resumed.train()["steps"] == 10


def test_the_memory_watch_stays_out_of_a_run_within_its_plan() -> None:
    # The floor is at most 5% of what the machine had at start: under the 15% the plan leaves.
    small = MemoryWatch(torch.device("cpu"), available_at_start=2 * 1024 * MiB)
    assert small.floor == int(0.05 * 2 * 1024 * MiB) < (1 - HEADROOM) * 2 * 1024 * MiB
    assert not MemoryWatch(torch.device("cuda"), available_at_start=2 * 1024 * MiB).enabled  # CUDA raises
    watch = MemoryWatch(torch.device("cpu"))
    assert watch.enabled and not watch.running_out(1, 10, torch.device("cpu"))  # this machine: plenty


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_containers_room_counts_its_reclaimable_page_cache(tmp_path: Path, version: str) -> None:
    # A container's usage includes the page cache of the files it read and wrote (the memory-mapped
    # data, checkpoints); its inactive part is reclaimed before anything is killed, so it is room:
    # without it the memory watch would stop a healthy run whose data filled the cache.
    files = {
        "v2": {"memory.max": "1073741824", "memory.current": str(900 * MiB),
               "memory.stat": f"anon {300 * MiB}\ninactive_file {500 * MiB}\nactive_file {100 * MiB}\n"},
        "v1": {"memory/memory.limit_in_bytes": "1073741824", "memory/memory.usage_in_bytes": str(900 * MiB),
               "memory/memory.stat": f"cache {600 * MiB}\ntotal_inactive_file {500 * MiB}\n"},
    }[version]  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_room(tmp_path) == (1024 - 900 + 500) * MiB
    (tmp_path / next(name for name in files if name.endswith("max") or "limit" in name)).write_text("max\n")
    assert _cgroup_room(tmp_path) is None  # no limit: the machine's MemAvailable decides


def test_loading_a_model_for_inference_does_not_read_the_optimizer_state(tmp_path: Path, prepared) -> None:
    # A training checkpoint holds the AdamW moments, twice the weights: `nima generate`, `nima eval`
    # and `nima export` map the file and read only the weights (a 1B-parameter checkpoint is 12 GB).
    config = training_config(tmp_path, "fp32", max_steps=1, batch_size=1)
    model = tiny_model(prepared, d_model=256, n_layers=12, n_heads=4)
    checkpoint = Trainer(model, config, small_loader(prepared, batch_size=1)).train()["last_checkpoint"]
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert Path(checkpoint).stat().st_size > 2.5 * weights  # the optimizer state is in the file
    peak = measure_peak(lambda: load_model_from_checkpoint(checkpoint))
    # About 2x the weights: the model, and the file's pages of them (page cache the system can
    # reclaim); reading the whole file took 4x.
    assert peak is not None and peak < 3 * weights


_WARM_STEP_FAULTS = """
import os, resource, sys, torch
sys.path.insert(0, TESTS)
from training_helpers import small_loader, training_config
from nima.data import prepare
from nima.models import ModelConfig, create_model
from nima.memory import HEADROOM
from nima.training import Callback, Trainer

class Faults(Callback):  # page faults per step over steps 4-6, once the heap has settled
    def on_step(self, trainer):
        if trainer.step in (3, 6):
            self.at = getattr(self, "at", []) + [resource.getrusage(resource.RUSAGE_SELF).ru_minflt]

prepared = prepare("tiny_shakespeare", "char")
torch.manual_seed(0)
config = ModelConfig(vocab_size=65, d_model=64, n_heads=2, n_layers=2, d_ff=512, max_seq_len=256)
loader = small_loader(prepared, batch_size=96, tokens=100_000, max_length=256)
training = training_config(Path(OUT), "fp32", max_steps=6, batch_size=96, log_every=3)
if TIGHT:  # the plan fits, but not twice over
    probe = Trainer(create_model(config), training, loader).memory_plan
    os.environ["NIMA_MEMORY_LIMIT"] = str(int(probe.total * 1.5 / HEADROOM))
faults = Faults()
trainer = Trainer(create_model(config), training, loader, callbacks=[faults])
trainer.train()
print(trainer.memory_plan.keeps_every_block, (faults.at[1] - faults.at[0]) // 3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
@pytest.mark.parametrize("tight", [False, True])
def test_warm_cpu_steps_reuse_their_memory_where_the_plan_has_room(tmp_path: Path, tight: bool) -> None:
    # Blocks of 48 MiB (the MLP's activations at 96 x 256 tokens), above the 32 MiB that glibc
    # always maps alone: mapped afresh, every step faults them in again (the guide's base config
    # spent a third of each step there). Where the plan fits twice over, the steps keep them.
    tests = str(Path(__file__).parent)
    header = f"from pathlib import Path\nTESTS, OUT, TIGHT = {tests!r}, {str(tmp_path)!r}, {tight}\n"
    proc = subprocess.run(
        [sys.executable, "-c", header + _WARM_STEP_FAULTS], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept, faults_per_step = proc.stdout.split()[-2:]
    # Mapped alone, the blocks cost about 100,000 faults a step; a kept heap 0, or a few thousand
    # on a step where it still grows to fit a new mix of block sizes.
    if tight:
        assert kept == "False" and int(faults_per_step) > 50_000, proc.stdout
    else:
        assert kept == "True" and int(faults_per_step) < 15_000, proc.stdout


def test_every_block_is_kept_only_where_the_plan_fits_twice_over() -> None:
    config = ModelConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=2, max_seq_len=256)

    def room(available: int | None, gc: bool = False, device: str = "cpu") -> bool:
        plan = estimate_training_memory(
            config, 8, 256, gradient_checkpointing=gc, device=device, available=available
        )
        return plan.room_to_keep_every_block

    total = estimate_training_memory(config, 8, 256, device="cpu").total
    roomy, tight = int(total * 2.1 / HEADROOM), int(total * 1.9 / HEADROOM)
    assert room(roomy) and not room(tight)
    assert not room(roomy, gc=True)  # checkpointing was chosen to save memory
    assert not room(None) and not room(roomy, device="cuda")  # memory unknown; not a CPU
