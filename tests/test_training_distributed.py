"""Data-parallel training under torchrun on CPU (Gloo): identical parameters on both ranks, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny import model_dict

from nima.data import prepare
from nima.distributed import DistributedContext, all_reduce_mean, init_distributed, no_sync

ROOT = Path(__file__).resolve().parents[1]

# The start of every worker: the tests' tiny model shape (the workers run as scripts, outside the
# tests folder), and how a worker ends. Every worker trains in fp32 unless it says otherwise: the
# tests compare weights exactly.
WORKER_START = f"TINY = {model_dict()!r}\n" + textwrap.dedent(
    """
    def leave():
        # Leave the process group once the worker has deleted its trainers (their DDP/FSDP state
        # holds it): a worker that still holds them at interpreter exit now and then aborts there
        # after printing its result ("terminate called without an active exception", SIGABRT).
        # Even then, gloo's threads were seen to abort the interpreter's teardown about once in 50
        # workers, after the result was printed: the worker ends without that teardown.
        import gc, os, sys
        from nima.distributed import cleanup
        gc.collect()
        cleanup()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    """
)

# The start of the workers below: the process group, and this rank's shard of tiny Shakespeare.
SHARDED_LOADER = WORKER_START + textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader, load_prepared
    from nima.distributed import cleanup, init_distributed
    from nima.models import ModelConfig, create_model
    from nima.training import Trainer, TrainingConfig

    prepared_path, out = sys.argv[1], sys.argv[2]
    ctx = init_distributed("cpu")
    data = load_prepared(prepared_path)
    ds = TokenWindowDataset(np.asarray(data.tokens("train")[:4000]), 32, seed=0,
                            tokenizer_identity=data.tokenizer.identity(), prepared_path=data.path)
    loader = create_dataloader(ds, 4, collate_fn=DataCollator(data.tokenizer), shuffle=True, seed=0,
                               rank=ctx.rank, world_size=ctx.world_size)
    """
)

WORKER = SHARDED_LOADER + textwrap.dedent(
    """
    compiled = sys.argv[3:] == ["compile"]
    first = next(iter(loader))["input_ids"]
    torch.manual_seed(100 + ctx.rank)  # different initial weights: DDP must start from rank 0's
    model = create_model(ModelConfig(vocab_size=data.tokenizer.vocab_size, **TINY, dropout=0.1))
    cfg = TrainingConfig(max_steps=4, batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-2,
                         output_dir=out, eval_every=2, eval_batches=2, log_every=1, progress_bar=False,
                         compile=compiled, precision="fp32")
    trainer = Trainer(model, cfg, loader, loader)
    results = trainer.train()
    flat = torch.cat([p.detach().flatten() for p in trainer.raw_model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, flat)
    firsts = [torch.zeros_like(first) for _ in range(ctx.world_size)]
    dist.all_gather(firsts, first)
    if ctx.rank == 0:
        print("RESULT " + json.dumps({
            "world_size": ctx.world_size,
            "max_param_diff": max(float((g - gathered[0]).abs().max()) for g in gathered),
            "same_first_batch": bool(torch.equal(firsts[0], firsts[1])),
            "steps": results["steps"], "tokens": results["tokens"],
            "val_loss": results["final_val_loss"],
        }))
    del trainer, model
    leave()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "torch.compile"])
def test_two_process_ddp_on_cpu(tmp_path: Path, session_data_dir: Path, compiled: bool) -> None:
    extra = ["compile"] if compiled else []
    report, stdout = _run_worker(WORKER, "worker", tmp_path, session_data_dir, *extra)
    assert report["world_size"] == 2
    assert report["max_param_diff"] == 0.0  # same weights on both ranks after training
    assert not report["same_first_batch"]  # each rank reads its own shard
    assert report["steps"] == 4 and report["tokens"] == 4 * 2 * 4 * 32 * 2
    assert report["val_loss"] is not None
    assert (tmp_path / "out" / "checkpoints" / "step_4.pt").is_file()
    assert stdout.count("training ") == 1  # only rank 0 talks
    assert " parameters on cpu x 2 processes (DDP);" in stdout


# The end of the workers in which every rank should stop with STOP_ERROR (which they import):
# train, and report each rank's step and whether it raised.
STOPPED_EVERY_RANK = textwrap.dedent(
    """
    trainer = Trainer(model, cfg, loader)
    message = None
    try:
        trainer.train()
    except STOP_ERROR as err:
        message = str(err)
    stopped = torch.tensor([trainer.step, int(message is not None)])
    both = [torch.zeros_like(stopped) for _ in range(ctx.world_size)]
    dist.all_gather(both, stopped)
    if ctx.rank == 0:
        print("RESULT " + json.dumps({"stopped_at": [int(t[0]) for t in both],
                                      "raised": [bool(t[1]) for t in both], "message": message}))
    del trainer, model
    leave()
    """
)

DIVERGE_WORKER = (
    SHARDED_LOADER
    + textwrap.dedent(
        """
    from nima.errors import TrainingDivergedError as STOP_ERROR

    model = create_model(ModelConfig(vocab_size=data.tokenizer.vocab_size, **TINY))
    forwards = []

    def break_rank_1_at_step_6(module, args):  # rank 0's own loss stays finite at step 6
        forwards.append(1)
        if ctx.rank == 1 and len(forwards) == 6:
            with torch.no_grad():
                module.blocks[0].attn.qkv.weight.fill_(float("nan"))

    model.register_forward_pre_hook(break_rank_1_at_step_6)
    cfg = TrainingConfig(max_steps=12, batch_size=4, learning_rate=1e-2, output_dir=out, eval_every=0,
                         log_every=3, save_every=4, progress_bar=False, precision="fp32")
    """
    )
    + STOPPED_EVERY_RANK
)


@pytest.mark.slow
def test_divergence_on_one_rank_stops_every_rank_before_saving(
    tmp_path: Path, session_data_dir: Path
) -> None:
    report, _ = _run_worker(DIVERGE_WORKER, "diverge_worker", tmp_path, session_data_dir)
    assert report["stopped_at"] == [6, 6] and report["raised"] == [True, True]
    assert "between steps 4 and 6" in report["message"]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step_4.pt"]


SKIP_WORKER = SHARDED_LOADER + textwrap.dedent(
    """
    model = create_model(ModelConfig(vocab_size=data.tokenizer.vocab_size, **TINY))
    forwards = []

    def nan_loss_on_rank_1_at_step_3(module, args, output):
        forwards.append(1)
        if ctx.rank == 1 and len(forwards) == 3:
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(nan_loss_on_rank_1_at_step_3)
    cfg = TrainingConfig(max_steps=8, batch_size=4, learning_rate=1e-2, output_dir=out, eval_every=0,
                         log_every=5, save_every=0, progress_bar=False, precision="fp32",
                         on_nonfinite="skip")
    results = Trainer(model, cfg, loader).train()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    finite = float(torch.isfinite(weights).all())
    mine = torch.tensor([float(results.skipped_steps), finite, float(weights.sum())], dtype=torch.float64)
    both = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(both, mine)
    if ctx.rank == 0:
        print("RESULT " + json.dumps({"ranks": [t.tolist() for t in both], "steps": results.steps}))
    del model
    leave()
    """
)


@pytest.mark.slow
def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path: Path, session_data_dir: Path) -> None:
    # The gradients are reduced before the check: every rank sees the same nan norm, skips the
    # same step, and the replicas stay identical.
    report, _ = _run_worker(SKIP_WORKER, "skip_worker", tmp_path, session_data_dir)
    (skipped_0, finite_0, sum_0), (skipped_1, finite_1, sum_1) = report["ranks"]
    assert report["steps"] == 8 and skipped_0 == skipped_1 == 1 and finite_0 == finite_1 == 1
    assert sum_0 == sum_1


LOW_MEMORY_WORKER = (
    SHARDED_LOADER
    + textwrap.dedent(
        """
    import nima.memory.watch as memory_watch
    from nima.errors import ConfigError as STOP_ERROR

    reads = []

    def memory_left():  # rank 1 alone runs short from its 4th reading: at start, steps 3, 6, 9
        reads.append(1)
        return 100 * 2**20 if ctx.rank == 1 and len(reads) > 3 else 20 * 2**30

    memory_watch.system_memory_left = memory_left
    model = create_model(ModelConfig(vocab_size=data.tokenizer.vocab_size, **TINY))
    cfg = TrainingConfig(max_steps=12, batch_size=4, output_dir=out, eval_every=0, log_every=3,
                         save_every=0, progress_bar=False, precision="fp32")
    """
    )
    + STOPPED_EVERY_RANK
)


@pytest.mark.slow
def test_memory_running_out_on_one_rank_saves_and_stops_every_rank(
    tmp_path: Path, session_data_dir: Path
) -> None:
    # The processes read their memory at logging steps (every 3rd) and decide together: rank 1's
    # reading at step 9 is short, so both ranks save step 9 and stop there.
    report, _ = _run_worker(LOW_MEMORY_WORKER, "low_memory_worker", tmp_path, session_data_dir)
    assert report["stopped_at"] == [9, 9] and report["raised"] == [True, True]
    assert report["message"].startswith("memory is running out") and "after step 9" in report["message"]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step_9.pt"]


RESUME_WORKER = WORKER_START + textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader, load_prepared
    from nima.distributed import cleanup, init_distributed
    from nima.models import ModelConfig, create_model
    from nima.training import Trainer, TrainingConfig

    prepared_path, out, strategy = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = init_distributed("cpu")
    data = load_prepared(prepared_path)

    class StopAt:
        def __init__(self, step):
            self.step = step

        def on_log(self, run, metrics):
            run.should_stop = run.step >= self.step

    def trainer(max_steps, folder, callbacks=()):
        ds = TokenWindowDataset(np.asarray(data.tokens("train")[:4000]), 32, seed=0,
                                tokenizer_identity=data.tokenizer.identity(), prepared_path=data.path)
        loader = create_dataloader(ds, 4, collate_fn=DataCollator(data.tokenizer), shuffle=True,
                                   seed=0, rank=ctx.rank, world_size=ctx.world_size)
        torch.manual_seed(0)
        model = create_model(ModelConfig(vocab_size=data.tokenizer.vocab_size, **TINY, dropout=0.3))
        cfg = TrainingConfig(max_steps=max_steps, batch_size=4, learning_rate=1e-2, output_dir=folder,
                             eval_every=0, save_every=2, log_every=1, progress_bar=False,
                             distributed_strategy=strategy, precision="fp32")
        return Trainer(model, cfg, loader, None, callbacks=callbacks)

    def params(t):
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in t.raw_model.parameters()]
        return torch.cat([p.detach().flatten() for p in full])

    class SigtermOnRank1:
        def on_log(self, run, metrics):
            if ctx.rank == 1 and run.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # only one rank hears it: both must stop

    def max_diff(a, b):
        diff = (params(a) - params(b)).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    straight = trainer(6, out + "/straight")
    straight.train()
    trainer(6, out + "/first", [StopAt(3)]).train()  # saves step_2 (and step_3), then stops
    resumed = trainer(6, out + "/resumed")
    resumed.load_checkpoint(out + "/first/checkpoints/step_2.pt")
    resumed.train()
    preempted = trainer(6, out + "/preempted", [SigtermOnRank1()])
    preempted.train()
    stopped = [preempted.step, int(preempted.stop_signal or 0)]
    after = trainer(6, out + "/after")
    after.load_checkpoint(out + "/preempted/checkpoints/step_3.pt")
    after.train()
    report = {"max_diff": max_diff(straight, resumed), "steps": resumed.step,
              "preempted_at": stopped, "after_preemption_diff": max_diff(straight, after)}
    if ctx.rank == 0:
        print("RESULT " + json.dumps(report))
    del straight, resumed, preempted, after
    leave()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_resume_and_preemption_are_bit_exact(
    strategy: str, tmp_path: Path, session_data_dir: Path
) -> None:
    # With dropout on, each rank draws its own random stream; the checkpoint must hold every
    # rank's, or the resumed run drifts from the uninterrupted one.
    report, stdout = _run_worker(RESUME_WORKER, "resume_worker", tmp_path, session_data_dir, strategy)
    assert report["max_diff"] == 0.0 and report["steps"] == 6
    wrapped = {"ddp": "DDP", "fsdp": "FSDP2"}[strategy]
    assert f" parameters on cpu x 2 processes ({wrapped});" in stdout
    # A SIGTERM seen by one rank stops both at the same step, with one checkpoint that resumes exactly.
    assert report["preempted_at"] == [3, 15]
    assert report["after_preemption_diff"] == 0.0


FSDP_WORKER = WORKER_START + textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader, load_prepared
    from nima.distributed import cleanup, init_distributed
    from nima.models import ModelConfig, create_model
    from nima.training import Trainer, TrainingConfig

    prepared_path, out = sys.argv[1], sys.argv[2]
    ctx = init_distributed("cpu")
    data = load_prepared(prepared_path)

    class StopAt:
        def on_log(self, run, metrics):
            run.should_stop = run.step >= 2

    def run(strategy, folder, stop=False, resume=None, precision="fp32"):
        ds = TokenWindowDataset(np.asarray(data.tokens("train")[:4000]), 32, seed=0,
                                tokenizer_identity=data.tokenizer.identity(), prepared_path=data.path)
        loader = create_dataloader(ds, 4, collate_fn=DataCollator(data.tokenizer), shuffle=True,
                                   seed=0, rank=ctx.rank, world_size=ctx.world_size)
        torch.manual_seed(100 + ctx.rank)  # different weights per rank: both strategies start from rank 0's
        model = create_model(ModelConfig(vocab_size=data.tokenizer.vocab_size, **TINY, dropout=0.1))
        cfg = TrainingConfig(max_steps=4, batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-2,
                             output_dir=f"{out}/{folder}", eval_every=2, eval_batches=2, save_every=2,
                             log_every=1, progress_bar=False, distributed_strategy=strategy,
                             precision=precision)
        trainer = Trainer(model, cfg, loader, loader, callbacks=[StopAt()] if stop else [])
        seen = []  # the dtype of a block's weight while the block runs
        model.blocks[0].attn.qkv.register_forward_pre_hook(lambda m, args: seen.append(str(m.weight.dtype)))
        if resume:
            trainer.load_checkpoint(f"{out}/{resume}/checkpoints/step_2.pt")
        results = {**trainer.train(), "weight_dtypes_in_forward": sorted(set(seen))}
        return trainer, results

    fsdp, results = run("fsdp", "fsdp")
    run("ddp", "ddp")
    run("fsdp", "first", stop=True)
    run("fsdp", "resumed", resume="first")
    run("ddp", "ddp_from_fsdp", resume="first")
    _, fsdp_bf16 = run("fsdp", "fsdp_bf16", precision="bf16")
    _, ddp_bf16 = run("ddp", "ddp_bf16", precision="bf16")
    if ctx.rank == 0:
        def final(folder):
            return torch.load(f"{out}/{folder}/checkpoints/step_4.pt", weights_only=True)

        def diff(a, b):
            weights = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
            moments = max(float((x["exp_avg_sq"] - b["optimizer"]["state"][i]["exp_avg_sq"]).abs().max())
                          for i, x in a["optimizer"]["state"].items())
            return max(weights, moments)

        print("RESULT " + json.dumps({
            "sharded": fsdp.sharded,
            "val_loss": results["final_val_loss"],
            "fsdp_vs_ddp": diff(final("fsdp"), final("ddp")),
            "fsdp_resumed_vs_straight": diff(final("fsdp"), final("resumed")),
            "ddp_resumed_from_fsdp_vs_ddp": diff(final("ddp"), final("ddp_from_fsdp")),
            "fp32_weights_in_forward": results["weight_dtypes_in_forward"],
            "bf16_weights_in_forward": {"fsdp": fsdp_bf16["weight_dtypes_in_forward"],
                                        "ddp": ddp_bf16["weight_dtypes_in_forward"]},
            "bf16_val_loss": {"fsdp": fsdp_bf16["final_val_loss"], "ddp": ddp_bf16["final_val_loss"]},
            "bf16_checkpoint_dtypes": sorted({str(t.dtype) for t in final("fsdp_bf16")["model"].values()}),
        }))
    del fsdp, _
    leave()
    """
)


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_exactly(tmp_path: Path, session_data_dir: Path) -> None:
    report, stdout = _run_worker(FSDP_WORKER, "fsdp_worker", tmp_path, session_data_dir)
    assert report["sharded"] is True and report["val_loss"] is not None
    # Same data, same initial weights, same dropout streams: sharding changes only summation order.
    assert report["fsdp_vs_ddp"] < 1e-5
    assert report["fsdp_resumed_vs_straight"] == 0.0
    # A checkpoint written by the sharded run resumes under DDP (one on-disk layout for both).
    assert report["ddp_resumed_from_fsdp_vs_ddp"] < 1e-5
    # bf16: FSDP gathers the weights in bf16 (DDP's stay fp32 under autocast), checkpoints stay fp32,
    # and training goes the same way (bf16 rounding of the weights is the only difference).
    assert report["fp32_weights_in_forward"] == ["torch.float32"]
    assert report["bf16_weights_in_forward"] == {"fsdp": ["torch.bfloat16"], "ddp": ["torch.float32"]}
    assert report["bf16_checkpoint_dtypes"] == ["torch.float32"]
    losses = report["bf16_val_loss"]
    assert abs(losses["fsdp"] - losses["ddp"]) < 0.01, losses


def _run_worker(source: str, name: str, tmp_path: Path, data_dir: Path, *extra: str) -> tuple[dict, str]:
    """Write ``source`` to ``<tmp_path>/<name>.py`` and run it under torchrun on the prepared tiny
    Shakespeare, with ``<tmp_path>/out`` as its output folder."""
    prepared = prepare("tiny_shakespeare", "char", data_dir=data_dir)
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    return _torchrun(script, prepared.path, tmp_path / "out", *extra)


def _torchrun(script: Path, prepared: Path, out: Path, *extra: str) -> tuple[dict, str]:
    """Run ``script`` on 2 CPU processes; returns rank 0's ``RESULT`` JSON and the whole stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, str(script), str(prepared), str(out), *extra],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), result.stdout


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistributedContext() and ctx.is_main and not ctx.enabled
    t = torch.tensor([2.0])
    assert all_reduce_mean(t).item() == 2.0
    model = torch.nn.Linear(2, 2)
    with no_sync(model, skip=True):
        pass
