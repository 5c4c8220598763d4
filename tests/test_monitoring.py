"""Monitoring: training.report_to, TensorBoard event files read back with TensorBoard's own reader,
W&B offline runs read back from their .wandb file, the memory/tokens/time figures in every record,
and the one-line errors when a package is missing."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import model_config
from training_helpers import split_loader

from nima.config import RunConfig
from nima.errors import ConfigError
from nima.models import create_model
from nima.training import RunReport, TensorBoardLogger, Trainer, TrainingConfig, WandbLogger
from nima.training.loggers import evaluation_sample, flat_config, monitoring_callbacks, wandb_mode

SCALARS = {"loss", "lr", "tokens_per_s", "grad_norm", "memory_gib", "val_loss", "val_perplexity"}


def tiny_trainer(prepared, out: Path, tokenizer: bool = True, **overrides) -> Trainer:
    torch.manual_seed(0)
    model = create_model(model_config(prepared.tokenizer.vocab_size))
    settings = {
        "precision": "fp32",
        "batch_size": 4,
        "max_steps": 6,
        "log_every": 2,
        "eval_every": 3,
        "eval_batches": 2,
        "save_every": 0,
        "progress_bar": False,
        "output_dir": str(out),
        **overrides,
    }
    return Trainer(
        model,
        TrainingConfig(**settings),
        split_loader(prepared),
        split_loader(prepared, "val", 2000),
        tokenizer=prepared.tokenizer if tokenizer else None,
    )


# ---------------------------------------------------------------------------------- the setting


def test_report_to_from_yaml_and_command_line(tmp_path: Path) -> None:
    assert TrainingConfig().report_to == []
    for override in (
        "--training.report_to=tensorboard,wandb",
        "--training.report_to=[tensorboard, wandb]",
        "--training.report_to=tensorboard,wandb,tensorboard",
    ):
        assert RunConfig.from_dict({}, overrides=[override]).training.report_to == ["tensorboard", "wandb"]
    assert RunConfig.from_dict({}, overrides=["--training.report_to=[]"]).training.report_to == []
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  report_to: [tensorboard]\n")
    assert RunConfig.from_yaml(path).training.report_to == ["tensorboard"]
    path.write_text("training:\n  report_to: wandb\n")  # a single name needs no list
    assert RunConfig.from_yaml(path).training.report_to == ["wandb"]
    # and it round-trips through a written config
    again = RunConfig.from_dict(RunConfig.from_yaml(path).to_dict())
    assert again.training.report_to == ["wandb"]


def test_a_misspelled_logger_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"training.report_to must be a list of tensorboard, wandb.*did you mean tensorboard\?",
    ):
        RunConfig.from_dict({}, overrides=["--training.report_to=tensorbord"])
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  report_to: [wandb, mlflow]\n")
    with pytest.raises(ConfigError, match=r"run.yaml: training.report_to must be") as err:
        RunConfig.from_yaml(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="report_to"):
        TrainingConfig(report_to=[3])


def test_missing_packages_are_one_line_errors_naming_the_extra(prepared, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'nima\[wandb\]'") as err:
        tiny_trainer(prepared, tmp_path / "w", report_to=["wandb"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"pip install 'nima\[tensorboard\]'"):
        tiny_trainer(prepared, tmp_path / "t", report_to=["tensorboard"])
    with pytest.raises(ConfigError, match=r"nima\[tensorboard\]"):
        TensorBoardLogger("unused")  # the guide's spelling: from nima.training import TensorBoardLogger


def test_the_trainer_imports_no_logging_package() -> None:
    code = (
        "import sys, nima.training, nima.training.trainer, nima.training.loggers\n"
        "names = ('wandb', 'tensorboard', 'torch.utils.tensorboard', 'matplotlib')\n"
        "bad = [m for m in names if m in sys.modules]\n"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_monitoring_callbacks_follow_the_config_without_duplicates() -> None:
    names = [type(cb).__name__ for cb in monitoring_callbacks(TrainingConfig())]
    assert names == ["RunReport"]
    both = monitoring_callbacks(TrainingConfig(report_to=["tensorboard", "wandb"]))
    assert [type(cb) for cb in both] == [TensorBoardLogger, WandbLogger, RunReport]
    mine = TensorBoardLogger()
    again = monitoring_callbacks(TrainingConfig(report_to=["tensorboard"]), [mine, RunReport(plot=False)])
    assert again == []


def test_wandb_mode_never_waits_for_a_login(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"


def test_flat_config_gives_tensorboard_plain_values() -> None:
    flat = flat_config(
        {"model": {"d_model": 8, "bias": True}, "training": {"betas": [0.9, 0.95], "max_steps": None}}
    )
    assert flat == {
        "model.d_model": 8,
        "model.bias": True,
        "training.betas": "[0.9, 0.95]",
        "training.max_steps": "null",
    }


# ---------------------------------------------------------------------------------- every record


def test_records_carry_tokens_time_and_memory(prepared, tmp_path: Path) -> None:
    trainer = tiny_trainer(prepared, tmp_path / "out", eval_every=0)
    trainer.train()
    records = [
        json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["tokens"] for r in train] == [2 * 4 * 32 * k for k in (1, 2, 3)]  # batch 4 x 32 per step
    times = [r["time_s"] for r in train]
    assert times == sorted(times) and times[0] > 0
    assert all(0.01 < r["memory_gib"] < 64 for r in train)  # this process's peak resident set


def test_tokens_count_on_after_a_resume(prepared, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tiny_trainer(prepared, out, max_steps=4, eval_every=0, save_every=4).train()
    resumed = tiny_trainer(prepared, out, max_steps=6, eval_every=0)
    resumed.load_checkpoint(out / "checkpoints" / "step_4.pt")
    resumed.train()
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tokens"]) for r in records if "loss" in r] == [(2, 256), (4, 512), (6, 768)]


# ---------------------------------------------------------------------------------- samples


def test_the_evaluation_sample_is_made_once_per_step_and_only_with_a_tokenizer(
    prepared, tmp_path: Path
) -> None:
    trainer = tiny_trainer(prepared, tmp_path / "a")
    state = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    rng = torch.get_rng_state()
    trainer.raw_model.train()
    text = evaluation_sample(trainer.view)
    assert isinstance(text, str) and text
    assert evaluation_sample(trainer.view) is text  # cached for the step: every logger shows the same
    assert trainer.raw_model.training  # left in train mode
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG is untouched (exact resume)
    assert all(torch.equal(state[k], v) for k, v in trainer.raw_model.state_dict().items())
    assert evaluation_sample(tiny_trainer(prepared, tmp_path / "b", tokenizer=False).view) is None


# ---------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_event_files_hold_scalars_config_and_samples(prepared, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "out"
    trainer = tiny_trainer(prepared, out, report_to=["tensorboard"])
    results = trainer.train()
    logs = out / "logs" / "tensorboard"
    assert list(logs.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logs), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert SCALARS <= set(tags["scalars"]), tags["scalars"]
    assert [e.step for e in events.Scalars("loss")] == [2, 3, 4, 6]  # evaluations log too
    val = events.Scalars("val_loss")
    assert [e.step for e in val] == [3, 6]  # every evaluation, the final one included
    assert val[-1].value == pytest.approx(results.final_val_loss)
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["loss"] for r in metrics if "loss" in r]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(logged)
    # a generated sample at each evaluation, and the config as text
    assert {"sample/text_summary", "config/text_summary"} <= set(tags["tensors"])
    samples = events.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [3, 6]
    assert samples[0].tensor_proto.string_val[0].strip()
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "learning_rate" in config_text and "d_model" in config_text
    # and as hyperparameters (TensorBoard's HParams tab)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["training.learning_rate"].number_value == pytest.approx(3e-4)
    assert hparams["model.d_model"].number_value == 32
    assert hparams["training.lr_scheduler_type"].string_value == "cosine"
    assert trainer.callbacks[0].writer is None  # closed at the end


def test_tensorboard_logger_only_writes_on_rank_zero(prepared, tmp_path: Path, monkeypatch) -> None:
    trainer = tiny_trainer(prepared, tmp_path / "out", report_to=["tensorboard"])
    monkeypatch.setattr(type(trainer), "is_main", property(lambda self: False))
    logger = next(cb for cb in trainer.callbacks if isinstance(cb, TensorBoardLogger))
    logger.on_train_begin(trainer)
    logger.on_log(trainer, {"loss": 1.0})
    logger.on_evaluate(trainer, {"val_loss": 1.0})
    logger.on_train_end(trainer, {})
    assert not (tmp_path / "out" / "logs" / "tensorboard").exists()


# ---------------------------------------------------------------------------------- W&B


def read_wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file (a LevelDB-style log: a 7-byte header, then 32 KiB blocks
    of chunks, each with a 7-byte header of checksum, length and type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    block, pos, pending, out = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def test_wandb_offline_run_holds_the_history_config_and_summary(
    prepared, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):  # nothing in the home folder
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    out = tmp_path / "out"
    results = tiny_trainer(prepared, out, report_to=["wandb"]).train()
    runs = list((out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    records = read_wandb_records(files[0])
    history: dict[int, dict[str, object]] = {}
    config, summary = {}, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            history.setdefault(int(items.get("_step", -1)), {}).update(items)
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":  # the config given to wandb.init
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "summary":
            summary.update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update}
            )
    assert {2, 4, 6} <= set(history)
    assert {"loss", "lr", "tokens_per_s", "tokens", "memory_gib"} <= set(history[2])
    assert history[6]["val_loss"] == pytest.approx(results.final_val_loss)
    assert history[6]["samples/_type"] == "table-file"  # the samples so far, as a table
    assert history[6]["samples/nrows"] == 2
    table = json.loads((runs[0] / "files" / history[6]["samples/path"]).read_text())
    assert [row[0] for row in table["data"]] == [3, 6] and table["data"][1][1].strip()
    assert config["training"]["learning_rate"] == pytest.approx(3e-4)
    assert config["model"]["d_model"] == 32
    assert summary["best_val_loss"] == pytest.approx(results.best_val_loss)


# ---------------------------------------------------------------------------------- the report callback


def test_run_report_without_matplotlib_still_writes_the_report(prepared, tmp_path: Path) -> None:
    out = tmp_path / "out"
    trainer = Trainer(
        create_model(model_config(prepared.tokenizer.vocab_size)),
        TrainingConfig(
            precision="fp32", batch_size=4, max_steps=2, eval_every=0, progress_bar=False, output_dir=str(out)
        ),
        split_loader(prepared),
        callbacks=[RunReport(plot=False)],
    )
    trainer.train()
    assert not (out / "loss.png").exists()
    report = (out / "report.md").read_text()
    assert "nima plot" in report and "No sample" in report  # no tokenizer was given
