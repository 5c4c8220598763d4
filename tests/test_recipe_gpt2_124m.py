"""The GPT-2 124M recipe, shrunk to CPU size, on a generated FineWeb-style folder of parquet shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nima.config import RunConfig
from nima.data.prepared import load_prepared

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "gpt2_124m.yaml"


def fineweb_like(folder: Path, tiny_shakespeare: Path, shards: int = 3) -> Path:
    """Parquet shards with a ``text`` column (and FineWeb's other columns), one row per document."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    lines = tiny_shakespeare.read_text(encoding="utf-8").split("\n\n")[:1200]
    folder.mkdir(parents=True)
    for shard in range(shards):
        texts = lines[shard::shards]
        table = pa.table({"text": texts, "id": [f"<urn:{shard}:{i}>" for i in range(len(texts))]})
        pq.write_table(table, folder / f"{shard:03d}_00000.parquet", row_group_size=100)
    return folder


def test_the_recipe_is_gpt2_small() -> None:
    run = RunConfig.from_yaml(RECIPE)
    model, training = run.model, run.training
    assert (model.n_layers, model.n_heads, model.d_model, model.max_seq_len) == (12, 12, 768, 1024)
    tokens_per_step = training.batch_size * model.max_seq_len * training.gradient_accumulation_steps
    assert tokens_per_step == 524_288  # about 0.5M tokens per optimizer step
    assert run.data.tokenizer == "gpt2" and training.precision == "bf16" and training.compile
    from nima.models import GPT

    parameters = sum(p.numel() for p in GPT(run.model).parameters())
    assert 123e6 < parameters < 125e6


@pytest.mark.slow
def test_a_shrunk_copy_trains_on_parquet_shards(
    tmp_path: Path, tiny_shakespeare_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nima.cli import main

    corpus = fineweb_like(tmp_path / "fineweb" / "sample" / "10BT", tiny_shakespeare_file)
    out = tmp_path / "run"
    shrink = [
        # GPT-2's own tokenizer files are not available offline: a small BPE stands in for it.
        f"--data.dataset={corpus}", "--data.tokenizer=bpe", "--model.vocab_size=400",
        f"--data.data_dir={tmp_path / 'data'}", "--data.val_fraction=0.05", "--data.shard_tokens=20000",
        "--model.n_layers=2", "--model.n_heads=2", "--model.d_model=32", "--model.d_ff=64",
        "--model.max_seq_len=64", "--training.batch_size=4", "--training.gradient_accumulation_steps=2",
        "--training.max_steps=4", "--training.warmup_steps=1", "--training.eval_every=2",
        "--training.eval_batches=2", "--training.save_every=2", "--training.precision=fp32",
        "--training.compile=false", f"--training.output_dir={out}", "--training.progress_bar=false",
    ]  # fmt: skip
    assert main(["train", "--config", str(RECIPE), *shrink]) == 0, capsys.readouterr().err
    prepared = load_prepared(tmp_path / "data" / "10BT" / "bpe-400")
    assert len(prepared.meta["splits"]["train"]["shards"]) > 1  # read across shards
    assert prepared.meta["source"]["documents"] == 1200
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(val) == 2 and all(np.isfinite(val))
    assert (out / "checkpoints" / "step_4.pt").is_file()
