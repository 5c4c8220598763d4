"""RunConfig: YAML loading, validation with suggestions, command-line overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nima.config
import nima.config.run
from nima import config_fields
from nima.config import SECTIONS, RunConfig, parse_overrides
from nima.config_fields import field_types
from nima.data import DataConfig
from nima.errors import ConfigError
from nima.models import ModelConfig
from nima.training import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


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


# ------------------------------------------------------------------ one home for each setting

MOVED = [
    ("training", "gradient_checkpointing", "true", "model.gradient_checkpointing"),
    ("training", "num_workers", "2", "data.num_workers"),
    ("data", "seed", "7", "training.seed"),
]


@pytest.mark.parametrize("section, key, value, home", MOVED)
def test_a_moved_key_in_a_file_says_where_it_went(tmp_path: Path, section, key, value, home) -> None:
    path = _write(tmp_path, f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(path)
    assert str(err.value) == f"{path}: {section}.{key} moved to {home}"


@pytest.mark.parametrize("section, key, value, home", MOVED)
def test_a_moved_key_on_the_command_line_says_where_it_went(section, key, value, home) -> None:
    for overrides in ([f"--{section}.{key}={value}"], [f"--{section}.{key}", value]):
        with pytest.raises(ConfigError) as err:
            RunConfig.from_dict({}, source="configs/x.yaml", overrides=overrides)
        assert str(err.value) == f"command line: {section}.{key} moved to {home}"


@pytest.mark.parametrize("section, key, value, home", MOVED)
def test_a_moved_key_in_python_says_where_it_went(section, key, value, home) -> None:
    cls = SECTIONS[section]
    with pytest.raises(ConfigError, match=f"^{section}.{key} moved to {home}$"):
        cls(**{key: yaml.safe_load(value)})
    with pytest.raises(ConfigError, match=f"^{section}.{key} moved to {home}$"):
        cls.from_dict({key: yaml.safe_load(value)})


def test_the_new_homes_work_from_file_and_command_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  gradient_checkpointing: true\ndata:\n  num_workers: 2\n")
    run = RunConfig.from_yaml(path, overrides=["--training.seed=7"])
    assert run.model.gradient_checkpointing is True and run.data.num_workers == 2 and run.training.seed == 7
    run = RunConfig.from_dict(
        {}, overrides=["--model.gradient_checkpointing=yes", "--data.num_workers", "3", "--training.seed=0"]
    )
    assert run.model.gradient_checkpointing is True and run.data.num_workers == 3 and run.training.seed == 0
    assert (
        "gradient_checkpointing" not in run.training.to_dict() and "num_workers" not in run.training.to_dict()
    )
    assert "seed" not in run.data.to_dict()


# ------------------------------------------------------------------ one validation path for every section

# (section, a typo, its suggestion, a key with a wrong type, that value, its type, an out-of-range value)
SECTION_CASES = [
    ("model", "n_head", "n_heads", "n_layers", "two", "an integer", ("dropout", "1.5", "in [0, 1)")),
    ("training", "learnig_rate", "learning_rate", "compile", "maybe", "true or false", ("eps", "0", "> 0")),
    (
        "data",
        "val_fracton",
        "val_fraction",
        "val_fraction",
        "most",
        "a number",
        ("num_workers", "-1", ">= 0"),
    ),
]


def _one_line_error(call) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("section, typo, key, bad_key, bad, kind, out_of_range", SECTION_CASES)
def test_every_section_is_checked_the_same_way_in_a_file(
    tmp_path: Path, section, typo, key, bad_key, bad, kind, out_of_range
) -> None:
    path = _write(tmp_path, f"{section}:\n  {typo}: 1\n")
    message = _one_line_error(lambda: RunConfig.from_yaml(path))
    assert message == f"{path}: unknown key {section}.{typo} (did you mean {section}.{key}?)"

    path = _write(tmp_path, f"{section}:\n  {bad_key}: {bad}\n")
    message = _one_line_error(lambda: RunConfig.from_yaml(path))
    assert message == f"{path}: {section}.{bad_key} must be {kind}, got {bad!r}"

    name, value, rule = out_of_range
    path = _write(tmp_path, f"{section}:\n  {name}: {value}\n")
    message = _one_line_error(lambda: RunConfig.from_yaml(path))
    assert message.startswith(f"{path}: {section}.{name} must be {rule}, got ")


@pytest.mark.parametrize("section, typo, key, bad_key, bad, kind, out_of_range", SECTION_CASES)
def test_every_section_is_checked_the_same_way_on_the_command_line_and_in_python(
    section, typo, key, bad_key, bad, kind, out_of_range
) -> None:
    cls = SECTIONS[section]
    unknown = f"unknown key {section}.{typo} (did you mean {section}.{key}?)"
    assert _one_line_error(lambda: RunConfig.from_dict({}, overrides=[f"--{section}.{typo}=1"])).endswith(
        unknown
    )
    assert _one_line_error(lambda: cls.from_dict({typo: 1})) == unknown
    assert _one_line_error(lambda: cls(**{typo: 1})) == unknown

    wrong = f"{section}.{bad_key} must be {kind}, got {bad!r}"
    assert _one_line_error(
        lambda: RunConfig.from_dict({}, overrides=[f"--{section}.{bad_key}={bad}"])
    ).endswith(wrong)
    assert _one_line_error(lambda: cls(**{bad_key: bad})) == wrong

    name, value, rule = out_of_range
    expected = f"{section}.{name} must be {rule}, got "
    assert expected in _one_line_error(
        lambda: RunConfig.from_dict({}, overrides=[f"--{section}.{name}={value}"])
    )
    assert _one_line_error(lambda: cls(**{name: yaml.safe_load(value)})).startswith(expected)


def test_command_line_strings_are_parsed_by_field_type_in_every_section() -> None:
    run = RunConfig.from_dict(
        {},
        overrides=[
            "--model.bias=null",
            "--model.d_ff=64",
            "--model.tie_embeddings=off",
            "--model.norm_eps=1e-6",
            "--training.max_steps=null",
            "--training.peak_flops=1e12",
            "--data.pin_memory=yes",
            "--data.val_fraction=0.2",
            "--data.data_dir=null",
            "--data.text_field=123",
        ],
    )
    m, t, d = run.model, run.training, run.data
    assert m.bias is None and m.d_ff == 64 and m.tie_embeddings is False and m.norm_eps == 1e-6
    assert t.max_steps is None and t.peak_flops == 1e12
    assert d.pin_memory is True and d.val_fraction == 0.2 and d.data_dir is None and d.text_field == "123"


def test_values_from_a_file_or_python_must_have_the_type() -> None:
    # Only command-line strings are parsed; a quoted "20" in a file is a string, not a number.
    with pytest.raises(ConfigError, match="training.max_steps must be an integer or null, got '20'"):
        RunConfig.from_dict({"training": {"max_steps": "20"}})
    with pytest.raises(ConfigError, match="data.pin_memory must be true or false, got 'yes'"):
        DataConfig(pin_memory="yes")
    # ... except numbers in exponent notation, which YAML 1.1 reads as strings.
    assert RunConfig.from_dict({"training": {"max_steps": "1e3"}}).training.max_steps == 1000
    assert ModelConfig(norm_eps="1e-6").norm_eps == 1e-6


def test_derived_model_fields_stay_null_through_the_shared_builder() -> None:
    run = RunConfig.from_dict({"model": {"d_model": 64, "n_heads": 4, "d_ff": None, "arch": "llama"}})
    m = run.model
    assert (m.d_ff, m.bias, m.activation, m.n_kv_heads) == (None, None, None, None)
    assert (m.ff_dim, m.use_bias, m.act, m.kv_heads) == (192, False, "silu", 4)


# ------------------------------------------------------------------ aliases and moved keys: one table


def test_renamed_keys_are_declared_once_and_point_at_real_keys() -> None:
    for table in (config_fields.ALIASES, config_fields.MOVED):
        for old, new in table.items():
            section, key = old.split(".")
            home, name = new.split(".")
            assert name in field_types(SECTIONS[home]), f"{old} -> {new}: no such key"
            assert key not in field_types(SECTIONS[section])
    for alias, key in config_fields.ALIASES.items():
        section, name = alias.split(".")
        assert SECTIONS[section].ALIASES[name] == key.split(".")[1]
    for old, new in config_fields.MOVED.items():
        section, key = old.split(".")
        assert SECTIONS[section].MOVED[key] == new


@pytest.mark.parametrize("alias, key", list(config_fields.ALIASES.items()))
def test_every_alias_works_wherever_its_key_does(tmp_path: Path, alias: str, key: str) -> None:
    section, spelling = alias.split(".")
    name = key.split(".")[1]
    from_file = RunConfig.from_yaml(_write(tmp_path, f"{section}:\n  {spelling}: 7\n"))
    from_cli = RunConfig.from_dict({section: {name: 1}}, overrides=[f"--{alias}=7"])
    for run in (from_file, from_cli):
        assert getattr(getattr(run, section), name) == 7
    config = SECTIONS[section](**{spelling: 7})
    assert getattr(config, name) == getattr(config, spelling) == 7
    assert spelling not in config.to_dict()


def test_train_help_about_aliases_and_moved_keys_is_generated_from_the_table(monkeypatch) -> None:
    from nima.training.cli import build_parser

    help_text = " ".join(build_parser().format_help().split())  # lines are wrapped at 100
    for alias, key in config_fields.ALIASES.items():
        assert f"{alias} = {key}" in help_text
    for old, new in config_fields.MOVED.items():
        assert f"{old} is now {new}" in help_text
    monkeypatch.setitem(config_fields.MOVED, "training.old_knob", "model.new_knob")
    assert "training.old_knob is now model.new_knob" in " ".join(build_parser().format_help().split())


# ------------------------------------------------------------------ reading a config needs no Trainer


def test_reading_a_config_imports_no_training_module() -> None:
    code = (
        "import sys\n"
        "import nima.config\n"
        f"nima.config.RunConfig.from_yaml({str(ROOT / 'configs' / 'base_model.yaml')!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith('nima.training')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_training_config_has_one_home_and_the_guide_imports_work() -> None:
    import nima.training

    assert nima.training.TrainingConfig is TrainingConfig is nima.config.training.TrainingConfig


def test_choices_agree_with_the_code_that_acts_on_them() -> None:
    from nima.config.training import STRATEGIES
    from nima.distributed import STRATEGIES as WRAPPED

    assert STRATEGIES == WRAPPED


# ------------------------------------------------------------------ --quick_test reads configs/cpu_quick.yaml


def _checkout(root: Path, yaml_text: str | None) -> Path:
    """A stand-in checkout: a pyproject.toml, and configs/cpu_quick.yaml holding ``yaml_text``."""
    (root / "configs").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    if yaml_text is not None:
        (root / "configs" / "cpu_quick.yaml").write_text(yaml_text)
    return root


def test_the_quick_test_reads_cpu_quick_yaml_and_writes_to_experiments_quick_test(
    tmp_path: Path, monkeypatch
) -> None:
    from nima.training import cli

    shipped = (ROOT / "configs" / "cpu_quick.yaml").read_text()
    assert "max_steps: 500\n" in shipped
    monkeypatch.setattr(nima.config.run, "CHECKOUT", _checkout(tmp_path, shipped.replace("500", "7", 1)))
    monkeypatch.chdir(tmp_path.parent)
    run = cli.load_run_config(None, True, [])
    assert run.training.max_steps == 7 and run.training.output_dir == "experiments/quick_test"
    run = cli.load_run_config(None, True, {"training.output_dir": "elsewhere", "model.n_layers": "2"})
    assert run.training.output_dir == "elsewhere" and run.model.n_layers == 2
    with pytest.raises(ConfigError, match="^--quick_test: training.learning_rate must be > 0"):
        cli.load_run_config(None, True, ["--training.learning_rate=-1"])


def test_the_shipped_configs_are_found_from_any_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert nima.config.shipped_config("cpu_quick.yaml") == ROOT / "configs" / "cpu_quick.yaml"


def test_the_quick_test_without_its_config_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from nima.training import cli

    monkeypatch.setattr(nima.config.run, "CHECKOUT", _checkout(tmp_path / "site", None))
    monkeypatch.chdir(tmp_path)
    message = _one_line_error(lambda: cli.load_run_config(None, True, []))
    assert message.startswith("--quick_test: configs/cpu_quick.yaml not found")


# ------------------------------------------------------------------ rules across sections


def test_bpe_vocab_size_is_the_models_for_bpe_only() -> None:
    run = RunConfig.from_dict({"data": {"tokenizer": "bpe"}, "model": {"vocab_size": 300}})
    assert run.bpe_vocab_size == 300
    assert RunConfig.from_dict({"data": {"tokenizer": "char"}}).bpe_vocab_size is None
    assert RunConfig.from_dict({"data": {"tokenizer": "byte"}}).bpe_vocab_size is None


def test_a_bpe_vocabulary_below_its_byte_alphabet_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  vocab_size: 100\ndata:\n  tokenizer: bpe\n")
    message = _one_line_error(lambda: RunConfig.from_yaml(path))
    assert message.startswith(f"{path}: model.vocab_size must be >= 257 with data.tokenizer: bpe")
    assert message.endswith("got 100")
    assert RunConfig.from_yaml(path, overrides=["--model.vocab_size=257"]).bpe_vocab_size == 257


class _Tokenizer:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size


@pytest.mark.parametrize(
    "tokenizer, asked, got, reason",
    [
        ("char", 10000, 65, "the char vocabulary comes from the tokenizer"),
        ("byte", 65, 257, "the byte vocabulary comes from the tokenizer"),
        ("bpe", 500, 480, "the corpus gave fewer BPE merges than asked"),
        ("bpe", 300, 301, "the bpe vocabulary comes from the tokenizer"),
    ],
)
def test_fit_vocab_size_follows_the_tokenizer_with_one_warning(tokenizer, asked, got, reason) -> None:
    run = RunConfig.from_dict({"model": {"vocab_size": asked}, "data": {"tokenizer": tokenizer}})
    said: list[str] = []
    fitted = run.fit_vocab_size(_Tokenizer(got), say=said.append)
    assert said == [f"warning: model.vocab_size={asked} changed to {got} ({reason})"]
    assert fitted.model.vocab_size == got and run.model.vocab_size == asked
    assert fitted.training == run.training and fitted.data == run.data


def test_fit_vocab_size_keeps_a_matching_run_silently() -> None:
    run = RunConfig.from_dict({"model": {"vocab_size": 65}})
    said: list[str] = []
    assert run.fit_vocab_size(_Tokenizer(65), say=said.append) is run and said == []
