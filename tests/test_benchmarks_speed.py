"""Smoke tests of the speed benchmarks' code paths (tiny runs; the figures themselves are not tested)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import model_args

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_folder_first_on_path(monkeypatch):
    # As `python benchmarks/<name>.py` has it: the scripts import their shared module (common.py)
    # by its plain name.
    monkeypatch.syspath_prepend(str(BENCH))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reference_shape_throughput_run_includes_eval_and_checkpoints(session_data_dir, tmp_path):
    child = _load("_nima_throughput")
    figures = child.run(
        steps=30,
        warmup=20,
        data_dir=str(session_data_dir),
        output_dir=str(tmp_path / "out"),
        overrides=["--training.eval_every=25", "--training.eval_batches=2", "--training.save_every=30"],
    )
    assert figures["timed_steps"] == 10
    assert figures["tokens_per_s"] > 0
    assert figures["precision"] == "fp32"
    assert figures["evals"] == 2  # step 25 and the final one at 30 (both inside the timed window)
    assert figures["saves"] >= 2  # step_30.pt plus best_model.pt at least
    assert (tmp_path / "out" / "checkpoints" / "step_30.pt").is_file()
    assert figures["timed_s"] > 0 and figures["val_loss"] is not None


def test_reference_shape_is_the_reference_recipe():
    shape = _load("common").REFERENCE_SHAPE  # what _nima_throughput.py trains at
    model, training = shape["model"], shape["training"]
    assert (model["n_layers"], model["n_heads"], model["d_model"], model["d_ff"], model["max_seq_len"]) == (
        4,
        4,
        128,
        512,
        64,
    )
    assert model["arch"] == "gpt2" and model["bias"] and model["tie_embeddings"]
    assert training["batch_size"] == 12 and training["learning_rate"] == 1e-3
    assert training["precision"] == "fp32"
    # Everything that makes the Trainer do extra work stays at its default.
    for key in ("eval_every", "eval_batches", "log_every", "save_every", "progress_bar"):
        assert key not in training


def test_summary_is_median_with_range():
    compare = _load("compare_reference")
    s = compare.summary([1.2, 0.9, 1.0])
    assert s == {"median": 1.0, "min": 0.9, "max": 1.2, "n": 3}
    assert compare.fmt(s).startswith("1.000x (min 0.900, max 1.200, 3 pairs)")


def test_train_figures_come_from_results_json(tmp_path):
    compare = _load("compare_reference")
    # What `nima train` writes at the end: the TrainResults as JSON (more keys than are read).
    results = {"steps": 1000, "tokens": 768000, "wall_time_s": 40.0, "train_tokens_per_s": 25000.0,
               "tokens_per_s": 19200.0, "final_val_loss": 1.9, "precision": "fp32"}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))
    parsed = compare.read_train_results(tmp_path)
    assert parsed == {"steps": 1000, "tokens": 768000, "wall_s": 40.0, "train_tokens_per_s": 25000.0}
    assert compare.overhead_share(parsed) == pytest.approx(1 - 768000 / 25000 / 40.0)
    with pytest.raises(SystemExit, match="results.json"):
        compare.read_train_results(tmp_path / "missing")


@pytest.mark.slow
def test_gpu_memory_checks_run_their_three_checks_on_a_cpu(prepared, tmp_path):
    # On a lent GPU, `python benchmarks/gpu_memory.py --record benchmarks/RESULTS.md` runs the
    # guide's base config, batch_size: auto and running out of memory mid-run; here, at a tiny size.
    results_md = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_memory.py"), "--device", "cpu", "--tiny",
         "--record", str(results_md)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    guide, auto, oom, summary = (json.loads(line) for line in proc.stdout.strip().splitlines()[-4:])
    assert summary == {"device": "cpu", "held": ["guide", "auto", "oom"], "all_held": True}
    assert guide["steps"] == 5 and guide["checkpoint_saved"]
    assert guide["memory_plan"].startswith("memory plan:")
    assert auto["batch_size_auto"].startswith("batch_size auto: micro-batch")
    assert oom["message"].startswith("the GPU ran out of memory at step 4") and not oom["traceback"]
    header, rule, *rows = results_md.read_text().splitlines()
    assert header.startswith("| date (UTC) | device | check | holds |") and len(rows) == 3
    assert all("| yes |" in row for row in rows)


@pytest.mark.slow
def test_gpu_benchmark_tiny_on_cpu(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "gpu.py"),
            "--device",
            "cpu",
            "--tiny",
            "--steps",
            "10",
            "--warmup",
            "10",
            "--peak_flops",
            "1e13",  # above any CPU's: a quiet bf16 CPU runs this model past 1e11 FLOP/s
            "--record",
            str(results_md),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["timed_steps"] == 10 and result["tokens_per_s"] > 0
    assert 0 < result["mfu"] < 1
    assert result["trainer_logged_mfu"] is not None  # the Trainer's own MFU metric is logged
    header, rule, row = results_md.read_text().splitlines()  # --record: a header, then one row
    assert header.startswith("| date (UTC) | device |") and rule.startswith("|---|")
    assert f"| {result['tokens_per_s']:,.0f} |" in row and f"{100 * result['mfu']:.1f}%" in row
    assert "`python benchmarks/gpu.py --device cpu --tiny" in row


def test_sample_efficiency_curve_points(session_data_dir, tmp_path):
    sample = _load("sample_efficiency")
    result = sample.curve(
        "configs/cpu_quick.yaml",
        [
            *model_args(max_seq_len=64),  # cpu_quick's context, which the token count below assumes
            "--training.max_steps=4",
            "--training.batch_size=4",
        ],
        eval_every=2,
        data_dir=str(session_data_dir),
        output_dir=str(tmp_path / "out"),
        threads=1,
    )
    assert [p["step"] for p in result["points"]] == [2, 4]
    assert result["points"][1]["tokens"] == 4 * 4 * 64
    # Full-split evaluation: as many windows as the validation split has, not eval_batches of them.
    assert all(p["val_loss"] > 0 for p in result["points"])


@pytest.mark.slow
def test_compare_reference_quick_end_to_end(tiny_shakespeare_file, tmp_path):
    compare = _load("compare_reference")
    try:
        reference = compare.find_reference(None)
    except SystemExit:
        pytest.skip("reference_gpt.py is not next to this checkout")
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "compare_reference.py"),
            "--quick",
            "--check_precision",
            "--nima_option=--training.log_every=5",
            "--reference",
            str(reference),
            "--text",
            str(tiny_shakespeare_file),
            "--work_dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT throughput ") and "time-to-loss " in last
    assert "full-split val loss" in last
    assert "(Nima with --training.log_every=5)" in proc.stdout


@pytest.mark.parametrize(
    "option", ["--model.d_model=64", "--training.batch_size=24", "--training.precision=bf16"]
)
def test_compare_reference_options_cannot_change_what_is_held_equal(option, capsys):
    with pytest.raises(SystemExit) as stop:
        _load("compare_reference").main([f"--nima_option={option}", "--skip_quality"])
    assert stop.value.code == 2
    assert "the shape, batch and precision are the reference's" in capsys.readouterr().err


def test_op_scaling_groups_the_step_by_operator_family():
    bench = _load("op_scaling")
    assert bench.family("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert bench.family("aten::addmm") == "matmul" and bench.family("aten::gelu_backward") == "gelu"
    assert bench.family("aten::view") == "other"
    assert bench.family("graph_0_cpp_fused_gelu_view_2") == "fused"  # Inductor kernels (--compile)
    assert bench.family("## Call CompiledFxGraph fabc123") == "graph calls"
    assert bench.family("Optimizer.step#AdamW.step") is None  # wraps aten ops counted already
    figures = bench.profile_step(threads=1, steps=2, batch=2)
    assert {"matmul", "attention", "gelu", "optimizer"} <= figures.keys()
    assert all(ms > 0 for ms in figures.values())


def test_checkpoint_stall_benchmark_tiny():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "checkpoint_stall.py"), "--d_model", "32", "--n_layers", "1",
         "--saves", "2", "--train_s", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [x.get("mode") for x in lines[:2]] == ["sync", "async"]
    assert lines[0]["checkpoint_mb"] == pytest.approx(lines[1]["checkpoint_mb"], abs=0.01)  # ties kept
    assert "stall_ratio_sync_vs_async" in lines[2]


TINY_LOOP = ["--steps", "3", "--warmup", "2", "--threads", "1"]


def test_loop_overhead_tiny_run_prints_the_ratio(session_data_dir, capsys):
    bench = _load("loop_overhead")
    assert bench.main(["--rounds", "2", *TINY_LOOP, "--data_dir", str(session_data_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert [r.split("(")[1].split(",")[0] for r in rounds] == ["bare first", "trainer first"]  # alternating
    result = json.loads(lines[-1])
    ratio = result["speed_ratio_trainer_vs_bare"]
    assert ratio["n"] == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert result["bare_ms_per_step"]["median"] > 0 and result["trainer_ms_per_step"]["median"] > 0
    assert set(result["page_faults_per_step"]) == {"bare", "trainer"}
    assert result["steps"] == 3 and result["rounds"] == 2


def test_loop_overhead_profile_lists_the_loop_outside_the_model(session_data_dir, capsys):
    bench = _load("loop_overhead")
    assert bench.main(["--profile", *TINY_LOOP, "--data_dir", str(session_data_dir)]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert 0 < figures["loop_ms_per_step"] < figures["profile_ms_per_step"]
    assert "outside the model, clipping and optimizer math" in out
    assert "nima/models/" not in out  # the model's own code is left out of the listing


def test_interleaved_reference_pairs_the_same_steps_in_one_process(tiny_shakespeare_file, capsys):
    bench = _load("interleaved_reference")
    argv = ["--rounds", "1", "--steps", "40", "--chunk", "10", "--warmup", "10"]
    assert bench.main([*argv, "--text", str(tiny_shakespeare_file)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    (round_line,) = [line for line in lines if line.startswith("round ")]
    assert "(30 steps, evals 1, saves 2," in round_line  # the final evaluation and checkpoints are timed
    result = json.loads(lines[-1])["whole_trainer_vs_textbook"]
    assert result["n"] == 1 and result["min"] == result["median"] == result["max"] > 0


def test_memory_benchmark_measures_its_quick_configurations():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "memory.py"), "--quick"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows and all("error" not in row and row["measured_mib"] > 0 for row in rows), rows


@pytest.mark.slow
def test_eval_speed_times_the_built_in_scorer_and_the_harness_on_one_task(tiny_shakespeare_file):
    argv = ["--examples", "6", "--rounds", "1", "--max_seq_len", "64", "--text", str(tiny_shakespeare_file)]
    proc = subprocess.run(
        [sys.executable, str(BENCH / "eval_speed.py"), *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run in ("built-in evaluate_task", "harness + nima adapter", "harness + hf backend"):
        assert f"| {run} |" in proc.stdout
    assert "built-in / harness with the nima adapter: " in proc.stdout
    assert "the same acc and acc_norm in every run: yes" in proc.stdout
