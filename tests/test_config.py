"""RunConfig: YAML loading, validation with suggestions, command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from nima.config import RunConfig, parse_overrides
from nima.errors import ConfigError
from nima.training import TrainingConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    run = RunConfig.from_yaml(path)
    assert run.model.d_model % run.model.n_heads == 0
    assert run.training.learning_rate > 0
    assert run.data.dataset


def test_shipped_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"base_model.yaml", "tiny_shakespeare_char.yaml", "cpu_quick.yaml"}


def test_base_model_matches_the_guide() -> None:
    run = RunConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "base_model.yaml")
    m, t = run.model, run.training
    assert (m.vocab_size, m.d_model, m.n_heads, m.n_layers, m.d_ff, m.max_seq_len, m.dropout) == (
        10000,
        512,
        8,
        6,
        2048,
        1024,
        0.1,
    )
    assert (t.num_epochs, t.learning_rate, t.batch_size, t.warmup_steps, t.weight_decay, t.gradient_clip) == (
        100,
        1e-4,
        32,
        4000,
        0.01,
        1.0,
    )
    assert (t.save_every, t.eval_every) == (1000, 500)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = _write(tmp_path, "training:\n  learnig_rate: 0.001\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(path)
    assert (
        str(err.value) == f"{path}: unknown key training.learnig_rate (did you mean training.learning_rate?)"
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model:\n  n_layer: 2\n", "unknown key model.n_layer (did you mean model.n_layers?)"),
        ("data:\n  tokeniser: char\n", "unknown key data.tokeniser (did you mean data.tokenizer?)"),
        ("trainin:\n  max_steps: 2\n", "unknown section 'trainin' (did you mean training?)"),
        ("training:\n  learning_rate: fast\n", "training.learning_rate must be a number, got 'fast'"),
        ("training:\n  learning_rate: -0.1\n", "training.learning_rate must be > 0"),
        (
            "training:\n  gradient_accumulation_steps: 0\n",
            "training.gradient_accumulation_steps must be >= 1",
        ),
        ("training:\n  max_steps: 2.5\n", "training.max_steps must be an integer or null"),
        ("training:\n  use_mixed_precision: maybe\n", "training.use_mixed_precision must be true or false"),
        ("training:\n  lr_scheduler_type: cosin\n", "(did you mean cosine?)"),
        ("training:\n  precision: bf32\n", "training.precision must be one of"),
        ("training:\n  distributed_strategy: fsdp2\n", "one of ddp, fsdp, got 'fsdp2' (did you mean fsdp?)"),
        ("training:\n  save_steps: 5\n  save_every: 6\n", "same setting"),
        ("model:\n  d_model: 100\n  n_heads: 3\n", "n_heads"),
        ("training: [1, 2]\n", "must be a mapping"),
        ("training:\n  max_steps: [\n", "is not valid YAML"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(_write(tmp_path, text))
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith(str(tmp_path))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")


def test_overrides_both_syntaxes_typed_by_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "training:\n  save_every: 100\n")
    run = RunConfig.from_yaml(
        path,
        overrides=[
            "--training.max_steps=20",
            "--model.n_layers",
            "2",
            "--training.learning_rate=1e-3",
            "--model.dropout=0",
            "--training.betas=0.9,0.95",
            "--training.save_steps",
            "7",
            "--training.gradient_clip=null",
            "--data.tokenizer=byte",
            "--training.compile=true",
            "--training.output_dir",
            "/tmp/out 1",
        ],
    )
    t = run.training
    assert t.max_steps == 20 and isinstance(t.max_steps, int)
    assert run.model.n_layers == 2
    assert t.learning_rate == 1e-3 and isinstance(t.learning_rate, float)
    assert run.model.dropout == 0.0 and isinstance(run.model.dropout, float)
    assert t.betas == (0.9, 0.95)
    assert t.save_every == 7  # the override replaces the file's other spelling
    assert t.gradient_clip is None
    assert run.data.tokenizer == "byte"
    assert t.compile is True
    assert t.output_dir == "/tmp/out 1"


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key training.max_step "):
        RunConfig.from_dict({}, overrides=["--training.max_step=3"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--training.max_steps"])
    with pytest.raises(ConfigError, match="--section.key=value"):
        parse_overrides(["max_steps=3"])
    with pytest.raises(ConfigError, match="must be an integer"):
        RunConfig.from_dict({}, overrides=["--model.n_layers=two"])


def test_yaml_style_numbers_are_accepted() -> None:
    # YAML 1.1 reads 1e-4 as a string; it is still a learning rate.
    run = RunConfig.from_dict({"training": {"learning_rate": "1e-4", "min_lr": 0}})
    assert run.training.learning_rate == 1e-4 and run.training.min_lr == 0.0


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    run = RunConfig.from_dict({"model": {"d_model": 64, "n_heads": 4}, "training": {"eval_steps": 9}})
    path = _write(tmp_path, run.to_yaml())
    again = RunConfig.from_yaml(path)
    assert again.to_dict() == run.to_dict()
    assert again.training.eval_every == 9


def test_training_config_aliases_and_validation() -> None:
    cfg = TrainingConfig(save_steps=1000, eval_steps=500)
    assert (cfg.save_every, cfg.eval_every) == (1000, 500)
    assert (cfg.save_steps, cfg.eval_steps) == (1000, 500)
    assert "save_steps" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="min_lr"):
        TrainingConfig(learning_rate=1e-3, min_lr=1e-2)
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainingConfig(learning_rate=0)
    with pytest.raises(ConfigError, match="device"):
        TrainingConfig(device="gpu")
    with pytest.raises(ConfigError, match="unknown key training.batchsize"):
        TrainingConfig.from_dict({"batchsize": 3})
