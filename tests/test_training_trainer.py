"""The Trainer on tiny models: accumulation, learning, logging, checkpoints, exact resume, early stopping."""

from __future__ import annotations

import json
import math
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import torch
from training_helpers import StepLosses, grads_of, resume_run, small_loader, tiny_model, training_config

from nima.checkpoint import atomic_save, load_model_from_checkpoint
from nima.errors import CheckpointError, ConfigError, TrainingDivergedError
from nima.training import Callback, EarlyStopping, Trainer

# fp32 whatever the CPU: these tests compare losses, gradients and weights exactly (bf16 has
# its own tests in test_training_bf16.py).
config = partial(training_config, precision="fp32")
_resume_run = partial(resume_run, precision="fp32")


# ---------------------------------------------------------------- gradient accumulation


def test_accumulation_16x4_equals_64(prepared, tmp_path: Path) -> None:
    big = small_loader(prepared, batch_size=64, tokens=70 * 33, shuffle=False, split="val")
    small = small_loader(prepared, batch_size=16, tokens=70 * 33, shuffle=False, split="val")
    model_a, model_b = tiny_model(prepared), tiny_model(prepared)
    a = Trainer(model_a, config(tmp_path, batch_size=64), big)
    b = Trainer(model_b, config(tmp_path, batch_size=16, gradient_accumulation_steps=4), small)
    loss_a = a.forward_backward([next(iter(big))])
    it = iter(small)
    loss_b = b.forward_backward([next(it) for _ in range(4)])
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    grads_a, grads_b = grads_of(model_a), grads_of(model_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_weights_micro_batches_by_labelled_tokens(prepared, tmp_path: Path) -> None:
    # Micro-batches with different numbers of ignored labels: the window's loss is the mean over
    # all labelled tokens, exactly as if they were one batch.
    torch.manual_seed(0)
    ids = torch.randint(0, prepared.tokenizer.vocab_size, (4, 16))
    labels = torch.randint(0, prepared.tokenizer.vocab_size, (4, 16))
    labels[0, 3:] = -100
    labels[1, 10:] = -100
    model_a, model_b = tiny_model(prepared), tiny_model(prepared)
    loader = [{"input_ids": ids, "labels": labels}]
    a = Trainer(model_a, config(tmp_path, batch_size=4), loader)
    b = Trainer(model_b, config(tmp_path, batch_size=4, gradient_accumulation_steps=2), loader)
    loss_a = a.forward_backward([{"input_ids": ids, "labels": labels}])
    loss_b = b.forward_backward(
        [{"input_ids": ids[:2], "labels": labels[:2]}, {"input_ids": ids[2:], "labels": labels[2:]}]
    )
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for name, grad in grads_of(model_a).items():
        torch.testing.assert_close(grad, grads_of(model_b)[name], rtol=1e-4, atol=1e-6)


def test_accumulated_training_matches_big_batches_end_to_end(prepared, tmp_path: Path) -> None:
    # SGD is linear in the gradient, so 3 steps of 8x2 and of 16x1 end at the same weights.
    big = small_loader(prepared, batch_size=16, tokens=60 * 33, shuffle=False, split="val")
    small = small_loader(prepared, batch_size=8, tokens=60 * 33, shuffle=False, split="val")
    model_a, model_b = tiny_model(prepared), tiny_model(prepared)
    common = {
        "max_steps": 3,
        "optimizer_type": "sgd",
        "momentum": 0.0,
        "learning_rate": 0.5,
        "lr_scheduler_type": "constant",
        "gradient_clip": None,
    }
    Trainer(model_a, config(tmp_path / "a", batch_size=16, **common), big).train()
    Trainer(
        model_b, config(tmp_path / "b", batch_size=8, gradient_accumulation_steps=2, **common), small
    ).train()
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- learning, logging, checkpoints


@pytest.mark.slow
def test_loss_decreases_on_tiny_shakespeare(prepared, tmp_path: Path) -> None:
    train = small_loader(prepared, batch_size=16, tokens=200_000)
    val = small_loader(prepared, batch_size=16, tokens=20_000, shuffle=False, split="val")
    model = tiny_model(prepared, d_model=64, d_ff=256)
    cfg = config(
        tmp_path,
        max_steps=150,
        batch_size=16,
        eval_every=50,
        log_every=10,
        learning_rate=2e-3,
        warmup_steps=10,
    )
    results = Trainer(model, cfg, train, val).train()
    history = [
        json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    assert vals[0] > vals[-1]
    assert results["final_val_loss"] < 2.9 < math.log(prepared.tokenizer.vocab_size)
    assert history[0]["loss"] > history[-1]["loss"]


def test_results_metrics_and_checkpoints(prepared, tmp_path: Path) -> None:
    train = small_loader(prepared, batch_size=8, tokens=3000)  # 11 batches per epoch
    val = small_loader(prepared, batch_size=8, tokens=1000, shuffle=False, split="val")
    cfg = config(
        tmp_path,
        max_steps=12,
        eval_every=4,
        save_every=4,
        log_every=2,
        keep_last_checkpoints=2,
        gradient_accumulation_steps=2,
    )
    trainer = Trainer(tiny_model(prepared), cfg, train, val, tokenizer=prepared.tokenizer)
    results = trainer.train()
    assert results["steps"] == 12
    # 11 batches per epoch in windows of 2: 2+2+2+2+2+1, so 12 steps are 2 epochs = 22 batches.
    assert results["tokens"] == 22 * 8 * 32
    assert results["tokens_per_s"] > 0 and results["wall_time_s"] > 0
    assert results["best_val_loss"] <= results["final_val_loss"]
    ckdir = tmp_path / "out" / "checkpoints"
    names = sorted(p.name for p in ckdir.iterdir())
    assert names == ["best_model.pt", "epoch_1.pt", "epoch_2.pt", "step_12.pt", "step_8.pt"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4, 6, 8, 10, 12]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= lines[0].keys()
    assert [x["step"] for x in lines if "val_loss" in x] == [4, 8, 12]

    ckpt = torch.load(ckdir / "step_12.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == "nima-checkpoint-v1"
    assert ckpt["step"] == 12 and ckpt["epoch"] == 2 and ckpt["batch_in_epoch"] == 0
    step8 = torch.load(ckdir / "step_8.pt", map_location="cpu", weights_only=True)
    assert (step8["epoch"], step8["batch_in_epoch"]) == (1, 4)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["model_config"]["d_model"] == 32
    assert ckpt["tokenizer"]["kind"] == "char" and ckpt["tokenizer"]["sha256"]
    assert Path(ckpt["tokenizer"]["path"]).is_file()
    assert ckpt["data"]["prepared_path"] == str(prepared.path)
    assert ckpt["training_config"]["max_steps"] == 12
    assert {"optimizer", "scheduler", "scaler", "best_val_loss", "rng"} <= ckpt.keys()
    assert ckpt["best_val_loss"] == pytest.approx(results["best_val_loss"])

    model, loaded = load_model_from_checkpoint(ckdir / "best_model.pt")
    assert not model.training and loaded["step"] in (4, 8, 12)


@pytest.mark.slow
def test_resume_is_bit_exact(prepared, tmp_path: Path) -> None:
    _, straight = _resume_run(prepared, tmp_path / "straight", stop_at=None)
    first, losses_a = _resume_run(prepared, tmp_path / "split", stop_at=20)
    path = first.save_checkpoint("interrupted")
    assert first.step == 20 and first.epoch == 2 and 0 < first.batch_in_epoch < 15
    del first
    # A fresh model (different init) and trainer, as in a new process.
    _, losses_b = _resume_run(prepared, tmp_path / "split", stop_at=None, resume_from=path, model_seed=123)
    assert sorted(straight) == list(range(1, 41))
    assert {**losses_a, **losses_b} == straight  # bit-identical float losses at every step


def test_a_resume_with_a_longer_schedule_says_so_and_follows_it(prepared, tmp_path: Path, capsys) -> None:
    train = small_loader(prepared, tokens=1000)
    settings = {"max_steps": 4, "warmup_steps": 1, "min_lr": 3e-4}
    first = Trainer(tiny_model(prepared), training_config(tmp_path, "fp32", **settings), train)
    first.train()
    path = first.save_checkpoint("planned_for_4")
    assert first.scheduler.get_last_lr()[0] == pytest.approx(3e-4)  # the cosine's end: min_lr
    same = Trainer(tiny_model(prepared), training_config(tmp_path, "fp32", **settings), train)
    capsys.readouterr()
    same.load_checkpoint(path)
    assert "note:" not in capsys.readouterr().out  # the same plan: an exact resume, nothing to say
    longer = Trainer(
        tiny_model(prepared), training_config(tmp_path, "fp32", **{**settings, "max_steps": 8}), train
    )
    longer.load_checkpoint(path)
    note = capsys.readouterr().out
    expected = 3e-4 + (3e-3 - 3e-4) * 0.5 * (1 + math.cos(math.pi * 3 / 7))  # step 4 of 1 + 7
    assert f"at step 4 its run was at 3.00e-04, the new schedule is at {expected:.2e}" in note
    assert [g["lr"] for g in longer.optimizer.param_groups] == pytest.approx([expected] * 2)


def test_resume_with_mismatched_model_or_tokenizer_fails(prepared, tmp_path: Path) -> None:
    train = small_loader(prepared, tokens=1000)
    trainer = Trainer(tiny_model(prepared), config(tmp_path, max_steps=1), train)
    trainer.train()
    path = trainer.save_checkpoint("a")
    other = Trainer(tiny_model(prepared, n_layers=3), config(tmp_path, max_steps=1), train)
    with pytest.raises(CheckpointError, match=r"model\.n_layers: checkpoint 2, model 3"):
        other.load_checkpoint(path)

    class OtherTokenizer:
        def identity(self):
            return {"kind": "byte", "vocab_size": 257, "sha256": "0" * 64}

    odd = Trainer(tiny_model(prepared), config(tmp_path, max_steps=1), train, tokenizer=OtherTokenizer())
    with pytest.raises(CheckpointError, match=r"tokenizer\.kind: checkpoint 'char', data 'byte'"):
        odd.load_checkpoint(path)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_a_step_boundary_and_resumes_exactly(prepared, tmp_path: Path, signum) -> None:
    """SIGTERM (a scheduler) or Ctrl-C (SIGINT): finish the step, save, return; resume is exact."""

    class SignalAt(StepLosses):
        def on_log(self, run, metrics):
            super().on_log(run, metrics)
            if run.step == 7 and "loss" in metrics:
                os.kill(os.getpid(), signum)  # noted, not fatal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _, straight = _resume_run(prepared, tmp_path / "straight", stop_at=None)
    recorder = SignalAt(stop_at=None)
    first, _ = _resume_run(prepared, tmp_path / "split", stop_at=None, recorder=recorder)
    assert {s: signal.getsignal(s) for s in before} == before  # the Trainer's handlers are gone
    assert first.step == 7 and first.stop_signal == signum
    assert f"stopped by {signal.Signals(signum).name} at step 7" in first.stop_reason
    path = first.checkpoint_dir / "step_7.pt"
    assert path.is_file()
    _, rest = _resume_run(prepared, tmp_path / "split", stop_at=None, resume_from=path, model_seed=123)
    assert {**recorder.losses, **rest} == straight


def test_a_second_ctrl_c_stops_at_once_without_saving(prepared, tmp_path: Path, capsys) -> None:
    class TwoCtrlC(Callback):
        def on_log(self, run, metrics):
            if run.step == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    cfg = config(tmp_path, max_steps=5, save_every=1)
    trainer = Trainer(tiny_model(prepared), cfg, small_loader(prepared, tokens=1000), callbacks=[TwoCtrlC()])
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN when the suite runs as a background job)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in trainer.checkpoint_dir.glob("step_*.pt")) == ["step_1.pt"]
    assert "interrupted after step 2 without saving; resume from" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # the Trainer put the previous handler back


def test_resume_from_another_world_size_warns_that_randomness_restarts(prepared, tmp_path: Path) -> None:
    train = small_loader(prepared, tokens=1000)
    trainer = Trainer(tiny_model(prepared), config(tmp_path, max_steps=1), train)
    trainer.train()
    state = trainer.checkpoint_state()
    state["world_size"] = 2  # as if saved by a 2-process torchrun job
    path = atomic_save(state, tmp_path / "two_ranks.pt")
    other = Trainer(tiny_model(prepared), config(tmp_path, max_steps=2), train)
    with pytest.warns(UserWarning, match="saved by 2 processes and this run has 1"):
        other.load_checkpoint(path)
    assert other.step == 1  # everything else is restored


def test_early_stopping_in_the_trainer(prepared, tmp_path: Path) -> None:
    train = small_loader(prepared, tokens=3000)
    val = small_loader(prepared, tokens=600, shuffle=False, split="val")
    # A learning rate this tiny cannot improve the validation loss by min_delta.
    cfg = config(
        tmp_path,
        max_steps=50,
        eval_every=2,
        learning_rate=1e-9,
        early_stopping_patience=2,
        early_stopping_min_delta=0.5,
    )
    results = Trainer(tiny_model(prepared), cfg, train, val).train()
    assert results["stopped_early"] and results["steps"] == 6
    stopper = EarlyStopping(patience=1, min_delta=0.5)
    trainer = Trainer(
        tiny_model(prepared),
        config(tmp_path, max_steps=50, eval_every=2, learning_rate=1e-9),
        train,
        val,
        callbacks=[stopper],
    )
    assert trainer.train()["steps"] == 4


def test_num_epochs_and_batch_size_warning(prepared, tmp_path: Path) -> None:
    train = small_loader(prepared, batch_size=8, tokens=2000)  # 7 batches per epoch
    with pytest.warns(UserWarning, match="batch_size=32 but the train loader yields batches of 8"):
        trainer = Trainer(
            tiny_model(prepared), config(tmp_path, max_steps=None, num_epochs=2, batch_size=32), train
        )
    results = trainer.train()
    assert results["steps"] == 14 and trainer.epoch == 2


def test_a_diverged_run_stops_before_saving_broken_weights(prepared, tmp_path: Path) -> None:
    model = tiny_model(prepared)
    forwards = []

    def break_at_step_6(module, args):  # the 6th training forward: its loss is nan
        forwards.append(1)
        if len(forwards) == 6:
            with torch.no_grad():
                module.blocks[0].attn.qkv.weight.fill_(float("nan"))

    model.register_forward_pre_hook(break_at_step_6)
    cfg = config(tmp_path, max_steps=20, log_every=3, save_every=4, keep_last_checkpoints=1)
    trainer = Trainer(model, cfg, small_loader(prepared))
    with pytest.raises(TrainingDivergedError) as stop:
        trainer.train()
    message = str(stop.value)
    assert "\n" not in message and "between steps 4 and 6" in message  # step 4's save checked it
    assert "resume from" in message and message.count("step_4.pt") == 1
    # The check came before the step-8 save, so keep_last_checkpoints=1 could not prune step_4.pt.
    saved = torch.load(tmp_path / "out" / "checkpoints" / "step_4.pt", map_location="cpu", weights_only=True)
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("*.pt")) == ["step_4.pt"]
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_empty_loader_and_bad_config(prepared, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TrainingConfig"):
        Trainer(tiny_model(prepared), {"max_steps": 3}, [])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no batches"):
        Trainer(tiny_model(prepared), config(tmp_path, max_steps=3), []).train()
    with pytest.raises(ConfigError, match="no batches"):
        Trainer(tiny_model(prepared), config(tmp_path, max_steps=3), iter([])).train()


def test_gradient_checkpointing_flag(prepared, tmp_path: Path, monkeypatch) -> None:
    """model.gradient_checkpointing is the one switch: the model trains with every block recomputed
    in the backward pass; the old training key says where the setting moved."""
    model = tiny_model(prepared, gradient_checkpointing=True)
    block = type(model.blocks[0])
    forward, calls = block.forward, []
    monkeypatch.setattr(block, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    Trainer(model, config(tmp_path, max_steps=2), small_loader(prepared, tokens=1000)).train()
    assert model.config.gradient_checkpointing is True
    assert len(calls) == 2 * 2 * model.config.n_layers  # 2 steps: each block in forward and backward
    with pytest.raises(ConfigError, match="training.gradient_checkpointing moved to model.gradient_ch"):
        config(tmp_path, gradient_checkpointing=True)


def test_compiled_training_matches_eager(prepared, tmp_path: Path, capsys) -> None:
    """training.compile (Inductor): the same losses and checkpoint keys as eager."""
    runs = {}
    for compiled in (False, True):
        recorder = StepLosses()
        trainer = Trainer(
            tiny_model(prepared, n_layers=1),
            config(tmp_path / str(compiled), max_steps=3, compile=compiled),
            small_loader(prepared, tokens=2000),
            callbacks=[recorder],
        )
        results = trainer.train()
        saved = torch.load(results["last_checkpoint"], map_location="cpu", weights_only=True)
        runs[compiled] = (list(recorder.losses.values()), sorted(saved["model"]))
    assert runs[True][0] == pytest.approx(runs[False][0], abs=1e-4)
    assert runs[True][1] == runs[False][1]  # no torch.compile prefix in the saved weights
    assert capsys.readouterr().out.count("torch.compile: the first step compiles the model") == 1


def test_compile_without_a_cpp_compiler_says_how_to_fix(prepared, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler.*training.compile: false"):
        Trainer(tiny_model(prepared), config(tmp_path, compile=True), small_loader(prepared, tokens=1000))


def test_background_saver_writes_the_state_as_it_was_and_reports_errors() -> None:
    import threading

    from nima.training.background_save import BackgroundSaver

    saver = BackgroundSaver()
    weight = torch.zeros(3)
    release, written = threading.Event(), {}

    def slow_write(snapshot):
        release.wait(timeout=10)
        written.update(snapshot)

    saver.submit({"w": weight, "step": 1, "nested": [weight]}, slow_write)
    weight += 1  # training goes on while the write is in flight
    assert saver.busy
    release.set()
    saver.wait()
    assert written["w"].tolist() == [0, 0, 0] and written["nested"][0].tolist() == [0, 0, 0]

    def failing_write(snapshot):
        raise OSError("No space left on device")

    saver.submit({"w": weight}, failing_write)
    with pytest.raises(CheckpointError, match="in the background failed: No space left"):
        saver.close()


def test_async_checkpoints_hold_what_synchronous_ones_do(prepared, tmp_path: Path) -> None:
    saved = {}
    for background in (False, True):
        cfg = config(tmp_path / str(background), max_steps=6, save_every=2, async_checkpoint=background)
        trainer = Trainer(tiny_model(prepared), cfg, small_loader(prepared, tokens=2000))
        trainer.train()
        assert not trainer.checkpointer.saver.busy
        saved[background] = {
            p.name: torch.load(p, map_location="cpu", weights_only=True)
            for p in sorted(trainer.checkpoint_dir.glob("step_*.pt"))
        }
    assert list(saved[True]) == ["step_2.pt", "step_4.pt", "step_6.pt"] == list(saved[False])
    for name, sync in saved[False].items():
        background = saved[True][name]
        assert background["step"] == sync["step"]
        for key, tensor in sync["model"].items():
            assert torch.equal(background["model"][key], tensor), (name, key)
        for index, state in sync["optimizer"]["state"].items():
            assert torch.equal(background["optimizer"]["state"][index]["exp_avg"], state["exp_avg"])
        # Tied embedding and output weights stay one tensor in the file, as torch.save keeps them.
        tied = background["model"]["tok_emb.weight"], background["model"]["lm_head.weight"]
        assert tied[0].data_ptr() == tied[1].data_ptr()


def test_a_failed_background_write_stops_the_run_with_an_error(prepared, tmp_path: Path, monkeypatch) -> None:
    import nima.training.checkpointer as trainer_module

    def full_disk(state, path):
        raise OSError("No space left on device")

    monkeypatch.setattr(trainer_module, "atomic_save", full_disk)
    cfg = config(tmp_path, max_steps=4, save_every=2, async_checkpoint=True)
    trainer = Trainer(tiny_model(prepared), cfg, small_loader(prepared, tokens=1000))
    with pytest.raises(CheckpointError, match="in the background failed: No space left on device"):
        trainer.train()
