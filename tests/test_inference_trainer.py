"""`nima eval` and `nima generate` end to end on a checkpoint written by the real Trainer.

`nima train --quick_test` at tiny size trains for 30 steps on tiny Shakespeare (data under the
test data dir); the checkpoint it writes records the prepared dataset and tokenizer, which is all
`nima eval` and `nima generate` need.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import generate_args
from tiny import model_args

from nima.cli import main as nima_main
from nima.data import prepare

TINY = [
    *model_args(), "--training.precision=fp32",  # the same run on any CPU
    "--training.batch_size=8", "--training.max_steps=30", "--training.warmup_steps=0",
    "--training.learning_rate=1e-2", "--training.eval_every=30", "--training.eval_batches=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, session_data_dir) -> Path:
    out = tmp_path_factory.mktemp("trained")
    code = nima_main(
        [
            "train",
            "--quick_test",
            *TINY,
            f"--training.output_dir={out}",
            f"--data.data_dir={session_data_dir}",
        ]
    )
    assert code == 0
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = nima_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_eval_defaults_to_the_validation_split_the_model_was_trained_on(run_dir, capsys, session_data_dir):
    ckpt = run_dir / "checkpoints" / "best_model.pt"
    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        str(ckpt),
        "--max_tokens",
        "3000",
        "--json",
        "--data_dir",
        str(session_data_dir),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["data"]["split"] == "val"
    assert Path(report["data"]["prepared"]) == session_data_dir / "tiny_shakespeare" / "char"
    assert report["data"]["tokens_available"] == 111_538
    assert report["tokens"] == 3000
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["bits_per_char"] == pytest.approx(report["bits_per_token"])
    # 30 steps already beat guessing uniformly among the 65 characters by a wide margin
    assert report["loss"] < math.log(65) - 0.5
    code, out, _ = cli(capsys, "eval", "--checkpoint", str(ckpt), "--split", "train", "--max_tokens", "500")
    assert code == 0 and "train split" in out and "tokens scored   500" in out


@pytest.mark.slow
def test_generate_from_a_trainer_checkpoint(run_dir, capsys):
    ckpt = run_dir / "checkpoints" / "best_model.pt"
    code, out, err = cli(capsys, *generate_args(ckpt, 30))
    assert code == 0, err
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 31
    assert "char tokenizer, vocab 65" in err


@pytest.mark.slow
def test_a_tokenizer_from_another_preparation_is_refused(run_dir, capsys, session_data_dir):
    byte_data = prepare("tiny_shakespeare", tokenizer="byte", data_dir=session_data_dir)
    ckpt = run_dir / "checkpoints" / "best_model.pt"
    code, out, err = cli(capsys, "generate", "--checkpoint", str(ckpt), "--tokenizer", str(byte_data.path))
    assert code == 2 and out == ""
    assert "does not match" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "eval", "--checkpoint", str(ckpt), "--data", str(byte_data.path))
    assert code == 2 and "different tokenizer" in err


@pytest.mark.slow
def test_evaluate_model_agrees_with_the_trainers_validation_loss(run_dir, session_data_dir):
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader, load_prepared
    from nima.evaluation import evaluate_model
    from nima.inference import load_for_inference
    from nima.training import Trainer, TrainingConfig

    loaded = load_for_inference(run_dir / "checkpoints" / "best_model.pt", device="cpu")
    data = load_prepared(session_data_dir / "tiny_shakespeare" / "char")
    # Three batches of the split: the Trainer's validation then covers all of it, as evaluate_model.
    context = loaded.model.config.max_seq_len
    three_batches = np.asarray(data.tokens("val")[: 3 * 8 * context + 1])
    val = TokenWindowDataset(three_batches, context, random_offset=False)
    loader = create_dataloader(val, batch_size=8, collate_fn=DataCollator(data.tokenizer), shuffle=False)
    ours = evaluate_model(loaded.model, loader, max_batches=3, tokenizer=data.tokenizer)
    config = TrainingConfig(  # fp32, as evaluate_model computes: the two agree to 1e-5
        batch_size=8,
        eval_batches=3,
        output_dir=str(run_dir / "unused"),
        progress_bar=False,
        precision="fp32",
    )
    trainers = Trainer(loaded.model, config, loader, loader).evaluate()
    assert ours.tokens == 3 * 8 * loaded.model.config.max_seq_len
    assert ours.loss == pytest.approx(trainers["val_loss"], rel=1e-5)
    assert ours.bits_per_char == pytest.approx(ours.bits_per_token)
