"""Training in bf16 on a CPU: it learns, saves and resumes (bit-exactly), accumulates like a big
batch, and ``NIMA_CPU_BF16`` decides what ``precision: auto`` picks on a CPU.

bf16 autocast works on any CPU (emulated, and slower, where the CPU lacks bf16 instructions), so
these tests run on every machine; the rest of the suite pins fp32 where it compares numbers
exactly, so that it does not depend on the CPU it lands on.
"""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import model_yaml
from training_helpers import StepLosses, grads_of, resume_run, small_loader, tiny_model, training_config

from nima.cli import main as nima_main
from nima.errors import ConfigError
from nima.training import Trainer, choose_precision

config = partial(training_config, precision="bf16")
_resume_run = partial(resume_run, precision="bf16")


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- learning, checkpoints, resume


def test_bf16_training_learns_and_its_checkpoint_resumes(prepared, tmp_path: Path, capsys) -> None:
    train = small_loader(prepared, batch_size=16, tokens=20_000)
    recorder = StepLosses()
    cfg = config(tmp_path, max_steps=30, batch_size=16, save_every=30, warmup_steps=5)
    trainer = Trainer(tiny_model(prepared), cfg, train, tokenizer=prepared.tokenizer, callbacks=[recorder])
    results = trainer.train()
    assert trainer.precision.name == results["precision"] == "bf16"
    assert "precision: bf16 (forced by training.precision" in capsys.readouterr().out
    losses = list(recorder.losses.values())
    assert len(losses) == 30 and all(np.isfinite(losses))
    # From ln(65) = 4.17 (guessing) to well below it in 30 steps.
    assert statistics.mean(losses[-5:]) < statistics.mean(losses[:5]) - 0.5

    path = tmp_path / "out" / "checkpoints" / "step_30.pt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["step"] == 30 and saved["precision"] == "bf16"
    # Autocast computes in bf16; the weights and the optimizer's moments stay fp32.
    assert {t.dtype for t in saved["model"].values()} == {torch.float32}
    assert {s["exp_avg"].dtype for s in saved["optimizer"]["state"].values()} == {torch.float32}

    more = StepLosses()
    resumed = Trainer(
        tiny_model(prepared, seed=1),
        config(tmp_path, max_steps=36, batch_size=16),
        train,
        tokenizer=prepared.tokenizer,
        callbacks=[more],
    )
    resumed.load_checkpoint(path)
    for name, weight in resumed.raw_model.state_dict().items():
        assert torch.equal(weight, saved["model"][name]), name
    resumed.train()
    assert "resuming at step 30" in capsys.readouterr().out
    assert sorted(more.losses) == [31, 32, 33, 34, 35, 36]
    assert statistics.mean(more.losses.values()) < statistics.mean(losses[:5]) - 0.5


@pytest.mark.slow
def test_bf16_resume_is_bit_exact(prepared, tmp_path: Path) -> None:
    # bf16 autocast on a CPU is deterministic: an interrupted and resumed run computes exactly
    # what an uninterrupted one does, as in fp32.
    straight_trainer, straight = _resume_run(prepared, tmp_path / "straight", stop_at=None)
    first, losses_a = _resume_run(prepared, tmp_path / "split", stop_at=20)
    assert first.precision.name == "bf16"
    path = first.save_checkpoint("interrupted")
    del first
    last, losses_b = _resume_run(prepared, tmp_path / "split", stop_at=None, resume_from=path, model_seed=123)
    assert sorted(straight) == list(range(1, 41))
    assert {**losses_a, **losses_b} == straight  # bit-identical float losses at every step
    for (name, a), b in zip(
        straight_trainer.raw_model.state_dict().items(), last.raw_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- gradient accumulation


def test_bf16_accumulation_4x16_agrees_with_64(prepared, tmp_path: Path) -> None:
    """The same gradient up to bf16 rounding: a wrongly scaled micro-batch would be off by 4x."""
    big = small_loader(prepared, batch_size=64, tokens=70 * 33, shuffle=False, split="val")
    small = small_loader(prepared, batch_size=16, tokens=70 * 33, shuffle=False, split="val")
    batch = next(iter(big))
    it = iter(small)
    micro = [next(it) for _ in range(4)]
    grads, losses = {}, {}
    for name, precision, accumulation, batches in [
        ("fp32 64", "fp32", 1, [batch]),
        ("bf16 64", "bf16", 1, [batch]),
        ("bf16 4x16", "bf16", 4, micro),
    ]:
        model = tiny_model(prepared)
        cfg = config(
            tmp_path,
            precision=precision,
            batch_size=64 // accumulation,
            gradient_accumulation_steps=accumulation,
        )
        trainer = Trainer(model, cfg, big if accumulation == 1 else small)
        assert trainer.precision.name == precision
        losses[name] = trainer.forward_backward(batches)
        grads[name] = grads_of(model)
    torch.testing.assert_close(losses["bf16 4x16"], losses["bf16 64"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(losses["bf16 64"], losses["fp32 64"], rtol=1e-2, atol=1e-2)
    assert grads["bf16 4x16"].keys() == grads["bf16 64"].keys() == grads["fp32 64"].keys()
    for name, reference in grads["fp32 64"].items():
        # bf16 keeps 8 bits of mantissa: each gradient lands within about 2**-8 of the exact one.
        assert _relative_error(grads["bf16 4x16"][name], grads["bf16 64"][name]) < 1e-2, name
        assert _relative_error(grads["bf16 64"][name], reference) < 2e-2, name
    # ... and bf16 really ran: its gradients are not the fp32 ones.
    assert any(not torch.equal(grads["bf16 64"][n], g) for n, g in grads["fp32 64"].items())


# ---------------------------------------------------------------- NIMA_CPU_BF16 and precision: auto


def _no_benchmark() -> bool:
    raise AssertionError("NIMA_CPU_BF16 decides: no micro-benchmark")


@pytest.mark.parametrize("value, expected", [("on", "bf16"), ("off", "fp32"), ("1", "bf16"), ("no", "fp32")])
def test_nima_cpu_bf16_forces_what_auto_picks_on_a_cpu(
    value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIMA_CPU_BF16", value)
    choice = choose_precision("auto", True, "cpu", bf16_benchmark=_no_benchmark)
    assert choice.name == expected
    assert choice.describe() == f"precision: {expected} (NIMA_CPU_BF16={value} in the environment)"
    # What the configuration says explicitly still wins.
    assert choose_precision("fp32", True, "cpu").name == "fp32"
    assert choose_precision("bf16", True, "cpu").name == "bf16"
    assert choose_precision("auto", False, "cpu").name == "fp32"  # use_mixed_precision: false
    # Only the CPU's choice is forced.
    assert choose_precision("auto", True, "cuda", cuda_bf16_supported=False).name == "fp16"


@pytest.mark.parametrize("value, expected", [("on", "bf16"), ("off", "fp32")])
def test_the_trainer_says_why_nima_cpu_bf16_chose(
    value: str, expected: str, prepared, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIMA_CPU_BF16", value)
    train = small_loader(prepared, batch_size=8, tokens=1000)
    trainer = Trainer(tiny_model(prepared), config(tmp_path, precision="auto", max_steps=2), train)
    assert trainer.train()["precision"] == expected
    assert f"precision: {expected} (NIMA_CPU_BF16={value} in the environment)" in capsys.readouterr().out
    pinned = Trainer(tiny_model(prepared), config(tmp_path, precision="fp32"), train)
    assert pinned.precision.name == "fp32"  # an explicit precision beats the environment


def test_a_bad_nima_cpu_bf16_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMA_CPU_BF16", "sometimes")
    with pytest.raises(ConfigError, match="NIMA_CPU_BF16='sometimes' must be on or off"):
        choose_precision("auto", True, "cpu")


@pytest.mark.slow
def test_bf16_from_a_config_file(tmp_path: Path, capsys) -> None:
    """`nima train --config` with ``precision: bf16`` in the YAML: the start-up line says so and
    the checkpoint records it (with fp32 weights)."""
    config_file = tmp_path / "bf16.yaml"
    config_file.write_text(
        model_yaml()
        + "training:\n"
        + "  precision: bf16\n  max_steps: 4\n  batch_size: 4\n  warmup_steps: 1\n  eval_every: 4\n"
        + f"  eval_batches: 2\n  progress_bar: false\n  output_dir: {tmp_path / 'out'}\n"
        + "data:\n  dataset: tiny_shakespeare\n  tokenizer: char\n",
        encoding="utf-8",
    )
    assert nima_main(["train", "--config", str(config_file)]) == 0
    assert "precision: bf16 (forced by training.precision" in capsys.readouterr().out
    saved = torch.load(tmp_path / "out" / "checkpoints" / "step_4.pt", map_location="cpu", weights_only=True)
    assert saved["precision"] == "bf16" and saved["model_config"]["d_model"] == 32
    assert {t.dtype for t in saved["model"].values()} == {torch.float32}
