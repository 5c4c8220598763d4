"""Optimizers, schedules, precision choice, callbacks and checkpoint helpers, each on its own."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nima.checkpoint import (
    atomic_save,
    capture_rng_state,
    clean_state_dict,
    load_checkpoint_file,
    prune_checkpoints,
    remove_partial_checkpoints,
    restore_rng_state,
)
from nima.errors import CheckpointError, ConfigError
from nima.runtime.precision import cpu_has_bf16
from nima.training import (
    AdamWScale,
    EarlyStopping,
    MetricsTracker,
    ProgressPrinter,
    choose_precision,
    get_optimizer,
    get_scheduler,
    lr_multiplier,
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.norm(self.emb(x))))


# ---------------------------------------------------------------- schedules


def _lrs(
    kind: str, total: int = 100, warmup: int = 10, lr: float = 1.0, min_lr: float = 0.1, **kw
) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_scheduler(opt, kind, num_training_steps=total, num_warmup_steps=warmup, min_lr=min_lr, **kw)
    out = []
    for _ in range(total + 5):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "cosine_restarts"])
def test_warmup_is_linear_to_the_peak(kind: str) -> None:
    lrs = _lrs(kind)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.5)
    assert lrs[9] == pytest.approx(1.0)
    assert isinstance(
        get_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)),
        torch.optim.lr_scheduler.LRScheduler,
    )


def test_cosine_values() -> None:
    lrs = _lrs("cosine")
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lrs[100] == pytest.approx(0.1)
    assert lrs[104] == pytest.approx(0.1)  # stays at min_lr past the end
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_linear_values() -> None:
    lrs = _lrs("linear")
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[32] == pytest.approx(0.1 + 0.9 * (1 - 22 / 90))
    assert lrs[100] == pytest.approx(0.1)


def test_constant_values() -> None:
    lrs = _lrs("constant")
    assert lrs[10:] == pytest.approx([1.0] * len(lrs[10:]))


def test_cosine_restarts_values() -> None:
    lrs = _lrs("cosine_restarts", total=90, warmup=10, num_cycles=4)  # cycles of 20 steps
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[30] == pytest.approx(1.0)  # restart
    assert lrs[29] < 0.12
    assert lrs[90] == pytest.approx(0.1)


def test_min_lr_is_absolute_per_group() -> None:
    assert lr_multiplier("cosine", 1000, 100, 0, min_ratio=0.25) == pytest.approx(0.25)
    opt = torch.optim.SGD(
        [
            {"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0},
            {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.5},
        ],
        lr=1.0,
    )
    sched = get_scheduler(opt, "linear", num_training_steps=10, min_lr=0.1)
    for _ in range(10):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1])


def test_bad_schedule_name() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="did you mean cosine"):
        get_scheduler(opt, "cosin")


# ---------------------------------------------------------------- optimizers


def test_adamw_has_no_decay_on_biases_norms_embeddings() -> None:
    model = Toy()
    opt = get_optimizer(model, "adamw", learning_rate=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay == {id(model.fc.weight)}
    assert plain == {id(model.emb.weight), id(model.norm.weight), id(model.norm.bias), id(model.fc.bias)}
    total = sum(len(g["params"]) for g in opt.param_groups)
    assert total == len(list(model.parameters()))  # the tied weight appears once
    assert opt.defaults.get("fused") is True  # fused kernels on CPU (torch >= 2.4)


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("adamw_scale", AdamWScale),
    ],
)
def test_every_optimizer_trains(kind: str, cls: type) -> None:
    torch.manual_seed(0)
    model = Toy()
    x = torch.randint(0, 10, (32,))
    lr = {"sgd": 0.05, "adamw_scale": 0.05}.get(kind, 0.02)
    opt = get_optimizer(model, kind, learning_rate=lr, momentum=0.9)
    assert isinstance(opt, cls)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def test_sgd_momentum_is_passed() -> None:
    opt = get_optimizer(Toy(), "sgd", momentum=0.8)
    assert opt.defaults["momentum"] == 0.8


def test_adamw_scale_rule() -> None:
    # One step from zero moments: m_hat/(sqrt(v_hat)+eps) = sign(g), so the step is lr * max(eps2, RMS(p)).
    p = nn.Parameter(torch.tensor([3.0, -4.0]))  # RMS = sqrt(12.5)
    small = nn.Parameter(torch.tensor([1e-5, -1e-5]))
    opt = AdamWScale([p, small], lr=0.1, eps=1e-12, eps2=1e-3)
    p.grad = torch.tensor([2.0, -0.5])
    small.grad = torch.tensor([1.0, 1.0])
    opt.step()
    rms = math.sqrt(12.5)
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 0.1 * rms, -4.0 + 0.1 * rms]))
    torch.testing.assert_close(small.detach(), torch.tensor([1e-5 - 1e-4, -1e-5 - 1e-4]))


def test_unknown_optimizer() -> None:
    with pytest.raises(ConfigError, match="did you mean adamw"):
        get_optimizer(Toy(), "adamww")


# ---------------------------------------------------------------- precision


def test_precision_on_cpu_without_bf16_is_fp32_and_never_benchmarks() -> None:
    def boom() -> bool:
        raise AssertionError("no benchmark without bf16 instructions")

    choice = choose_precision("auto", True, "cpu", cpu_bf16_instructions=False, bf16_benchmark=boom)
    assert choice.name == "fp32" and "no bf16 instructions" in choice.reason
    assert not choice.uses_autocast


@pytest.mark.parametrize("faster, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_on_cpu_with_bf16_follows_the_benchmark(faster: bool, expected: str) -> None:
    choice = choose_precision("auto", True, "cpu", cpu_bf16_instructions=True, bf16_benchmark=lambda: faster)
    assert choice.name == expected


def test_precision_on_gpus_and_forced_choices() -> None:
    assert choose_precision("auto", True, "cuda", cuda_bf16_supported=True).name == "bf16"
    fp16 = choose_precision("auto", True, "cuda", cuda_bf16_supported=False)
    assert fp16.name == "fp16" and fp16.needs_grad_scaler
    assert choose_precision("auto", False, "cuda", cuda_bf16_supported=True).name == "fp32"
    assert choose_precision("fp32", True, "cuda", cuda_bf16_supported=True).name == "fp32"
    forced = choose_precision("bf16", True, "cpu", cpu_bf16_instructions=False)
    assert forced.name == "bf16" and "slow" in forced.reason
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", True, "cpu")
    assert choose_precision("auto", True, "mps").name == "fp32"


def test_tf32_only_for_mixed_precision_on_gpus() -> None:
    bf16 = choose_precision("auto", True, "cuda", cuda_bf16_supported=True)
    assert bf16.float32_matmul_precision == "high"
    fp32 = choose_precision("fp32", True, "cuda", cuda_bf16_supported=True)
    assert fp32.float32_matmul_precision == "highest"  # asked for fp32: true fp32
    cpu = choose_precision("auto", True, "cpu", cpu_bf16_instructions=True, bf16_benchmark=lambda: True)
    assert cpu.name == "bf16" and cpu.float32_matmul_precision == "highest"


def test_cpu_bf16_detection_from_flags() -> None:
    assert cpu_has_bf16({"avx2", "avx512_bf16"}, capability="AVX512")
    assert cpu_has_bf16({"amx_bf16"}, capability="AVX2")
    assert not cpu_has_bf16({"avx2", "fma"}, capability="AVX2")


def test_this_machine_defaults_to_a_fast_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIMA_CPU_BF16", raising=False)  # this machine's own choice, not a forced one
    choice = choose_precision("auto", True, "cpu")
    if not cpu_has_bf16():
        assert choice.name == "fp32"
    assert choice.describe().startswith("precision: ")


# ---------------------------------------------------------------- callbacks


def test_early_stopping() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert [stopper(v) for v in [1.0, 0.9, 0.895, 0.899, 0.85, 0.86, 0.86]] == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    assert stopper.best == 0.85
    again = EarlyStopping(patience=2)
    again.load_state_dict(stopper.state_dict())
    assert again.bad_checks == 2
    with pytest.raises(ConfigError):
        EarlyStopping(patience=0)


def test_metrics_tracker(tmp_path: Path) -> None:
    tracker = MetricsTracker(log_dir=tmp_path / "logs")
    for step, loss in enumerate([3.0, 2.0, 1.0], start=1):
        tracker.log({"loss": torch.tensor(loss), "lr": np.float32(0.5)}, step=step)
    summary = tracker.get_summary()
    assert summary["loss"] == {"mean": 2.0, "min": 1.0, "max": 3.0, "last": 1.0, "count": 3}
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    saved = tracker.save("training_metrics.json")
    assert saved == tmp_path / "logs" / "training_metrics.json"
    assert json.loads(saved.read_text())["summary"]["lr"]["mean"] == 0.5
    tracker.close()


def test_progress_printer_plain_lines() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(
        total_steps=30, metrics_to_track=["loss", "lr", "perplexity"], print_frequency=10, stream=out
    )
    for step in range(1, 31):
        printer.print_step(step, {"loss": 2.0, "lr": 3e-4})
    printer.print_epoch_end(0, {"train_loss": 2.0, "val_loss": 2.1})
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("step 10/30 | loss 2.0000 | lr 3.00e-04 | perplexity 7.3891 | eta")
    assert lines[-1] == "epoch 0 | train_loss 2.0000 | val_loss 2.1000"


@pytest.mark.parametrize(
    ("steps_per_epoch", "total_steps", "expected"),
    [(50, 200, True), (10, 200, True), (8, 300, False), (200, 200, False), (None, 200, False)],
)
def test_epoch_lines_only_where_an_epoch_holds_a_logging_step(steps_per_epoch, total_steps, expected) -> None:
    from nima.config import TrainingConfig
    from nima.training.console import make_progress

    config = TrainingConfig(log_every=10, progress_bar=False)
    assert make_progress(config, total_steps, 0, steps_per_epoch).epoch_lines is expected


def test_progress_printer_live_bar() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(total_steps=20, print_frequency=5, stream=out, use_bar=True)
    for step in range(1, 21):
        printer.print_step(step, {"loss": 1.5, "lr": 1e-3, "tokens_per_s": 12345.0})
    printer.close()
    text = out.getvalue()
    assert "20/20" in text and "loss 1.5000" in text and "tok/s 12.3k" in text


# ---------------------------------------------------------------- checkpoint helpers


def test_atomic_save_and_safe_load(tmp_path: Path) -> None:
    path = tmp_path / "ck" / "a.pt"
    atomic_save({"format": "nima-checkpoint-v1", "model": {"w": torch.ones(2)}}, path)
    assert load_checkpoint_file(path)["model"]["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]  # no temporary files left


def test_partial_checkpoints_of_killed_writers_are_removed(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    host = socket.gethostname()
    names = {
        "killed_here": f".step_5.pt.{host}-{dead}.k1ll3d_x.tmp",
        "writing_here": f".step_6.pt.{host}-{os.getpid()}.l1v3_xyz.tmp",
        "other_node_fresh": ".step_6.pt.node-7.cluster-123.abcd1234.tmp",
        "other_node_old": ".step_4.pt.node-7.cluster-122.abcd1234.tmp",
        "checkpoint": "step_4.pt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / names["other_node_old"], (two_days_ago, two_days_ago))
    removed = remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["killed_here"], names["other_node_old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["writing_here"], names["other_node_fresh"], names["checkpoint"]]
    )
    assert remove_partial_checkpoints(tmp_path / "missing") == []


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_file(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable Nima checkpoint"):
        load_checkpoint_file(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a Nima checkpoint"):
        load_checkpoint_file(foreign)


def test_rng_state_round_trip_under_weights_only(tmp_path: Path) -> None:
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_prune_and_clean_names(tmp_path: Path) -> None:
    for n in (5, 10, 15, 20):
        (tmp_path / f"step_{n}.pt").write_bytes(b"x")
    (tmp_path / "best_model.pt").write_bytes(b"x")
    prune_checkpoints(tmp_path, "step", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt", "step_15.pt", "step_20.pt"]
    cleaned = clean_state_dict({"module._orig_mod.a.weight": 1, "_orig_mod.b": 2, "c": 3})
    assert cleaned == {"a.weight": 1, "b": 2, "c": 3}


def test_tensorboard_logger_without_the_package_is_a_clear_error() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from nima.training import TensorBoardLogger

        with pytest.raises(ConfigError, match="pip install"):
            TensorBoardLogger("unused")
    else:
        pytest.skip("tensorboard is installed here")


def test_stop_signal_notes_sigterm_and_ctrl_c_only_while_installed() -> None:
    import os
    import signal
    import threading

    from nima.training.preemption import StopSignal

    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignal()
    stop.install()
    os.kill(os.getpid(), signal.SIGTERM)  # noted, not fatal
    assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
    assert stop.agreed(step=1, every=10, device=torch.device("cpu"))  # single process: at once
    stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before

    # Ctrl-C: the first is noted like SIGTERM, the second interrupts at once.
    before_int = signal.getsignal(signal.SIGINT)
    stop.install()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is before_int

    # Outside the main thread Python cannot install handlers: installing is then a no-op.
    elsewhere = StopSignal()
    worker = threading.Thread(target=elsewhere.install)
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGTERM) is before and elsewhere.signum is None
    elsewhere.uninstall()
