"""Corpora of many files and formats: sharded, parallel, byte-identical whatever the workers."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from nima.data import units as units_module
from nima.data.preparation import prepare
from nima.data.prepared import load_prepared
from nima.data.shards import HEADER_BYTES, ShardedTokens, read_header
from nima.errors import DataError

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex a jovial king".split()


def _text(seed: int, words: int) -> str:
    rng = np.random.default_rng(seed)
    lines, line = [], []
    for w in rng.choice(WORDS, size=words):
        line.append(str(w))
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    return "\n".join(lines) + "\n"


def write_corpus(root: Path) -> Path:
    """A folder of every format: texts (one nested), markdown, jsonl plain/gz/zst, parquet."""
    corpus = root / "corpus"
    (corpus / "nested" / "deeper").mkdir(parents=True)
    for i in range(3):
        (corpus / f"book{i}.txt").write_text(_text(i, 900), encoding="utf-8")
    (corpus / "nested" / "deeper" / "notes.md").write_text("# Notes\n" + _text(9, 300), encoding="utf-8")
    (corpus / ".hidden.txt").write_text("never read", encoding="utf-8")
    records = [{"text": _text(100 + i, 60), "id": i} for i in range(80)]
    (corpus / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:40]), encoding="utf-8")
    with gzip.open(corpus / "nested" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[40:60])
    zstandard = pytest.importorskip("zstandard")
    raw = "".join(json.dumps(r) + "\n" for r in records[60:70]).encode()
    (corpus / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"text": [r["text"] for r in records[70:]], "n": list(range(10))})
    pq.write_table(table, corpus / "d.parquet", row_group_size=3)
    return corpus


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.bin"))
    }


@pytest.fixture
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units of a few KB, so that even a small corpus is cut into many."""
    monkeypatch.setattr(units_module, "UNIT_BYTES", 4096)
    monkeypatch.setattr(units_module, "UNIT_ROWS", 4)


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_every_format_gives_the_same_bytes_with_any_number_of_workers(
    tmp_path: Path, small_units: None, tokenizer: str
) -> None:
    corpus = write_corpus(tmp_path)
    vocab = 300 if tokenizer == "bpe" else None
    one = prepare(corpus, tokenizer, vocab, data_dir=tmp_path / "one", workers=1, shard_tokens=5000)
    two = prepare(corpus, tokenizer, vocab, data_dir=tmp_path / "two", workers=2, shard_tokens=5000)
    assert one.meta["units"] > 10  # the corpus really was cut into many units
    assert _digest(one.path) == _digest(two.path)
    assert (one.path / "tokenizer.json").read_bytes() == (two.path / "tokenizer.json").read_bytes()
    documents = 3 + 1 + 80  # texts, the markdown file, records; the hidden file is skipped
    assert one.meta["source"]["documents"] == documents
    assert len(one.meta["splits"]["train"]["shards"]) > 1
    eot = one.tokenizer.eos_token_id
    stream = np.concatenate([one.tokens("train")[:], one.tokens("val")[:]])
    assert int(np.count_nonzero(stream == eot)) == documents  # every document ends with end-of-text
    assert one.tokens("train")[-1] == eot and one.tokens("val")[-1] == eot


def test_documents_are_whole_and_decode_back(tmp_path: Path, small_units: None) -> None:
    corpus = write_corpus(tmp_path)
    data = prepare(corpus, "byte", data_dir=tmp_path / "data", workers=2, shard_tokens=3000)
    texts = set()
    for split in ("train", "val"):
        ids = data.tokens(split)[:]
        ends = np.flatnonzero(ids == data.tokenizer.eos_token_id)
        starts = np.concatenate([[0], ends[:-1] + 1])
        texts |= {data.tokenizer.decode(ids[a:b].tolist()) for a, b in zip(starts, ends, strict=True)}
    expected = {(corpus / f"book{i}.txt").read_text() for i in range(3)}
    expected.add((corpus / "nested" / "deeper" / "notes.md").read_text())
    for line in (corpus / "a.jsonl").read_text().splitlines():
        expected.add(json.loads(line)["text"])
    assert expected <= texts  # byte ranges of the large texts joined back into whole documents
    assert data.meta["splits"]["val"]["documents"] > 0 and data.meta["splits"]["train"]["documents"] > 0


def test_shards_have_headers_and_read_as_one_stream(tmp_path: Path) -> None:
    corpus = tmp_path / "story.txt"
    corpus.write_text(_text(1, 3000))
    data = prepare(corpus, "char", data_dir=tmp_path / "data", shard_tokens=1000)
    shards = data.shard_paths("train")
    assert len(shards) == -(-data.train_tokens // 1000)
    dtype, tokens, _ = read_header(shards[0])
    assert (dtype, tokens) == (np.dtype("<u2"), 1000)
    assert shards[0].stat().st_size == HEADER_BYTES + 2000
    raw = np.concatenate([np.fromfile(p, dtype="<u2", offset=HEADER_BYTES) for p in shards])
    stream = data.tokens("train")
    assert isinstance(stream, ShardedTokens) and len(stream) == data.train_tokens
    assert np.array_equal(stream[:], raw)
    assert np.array_equal(stream[990:1010], raw[990:1010])  # a slice across two shards
    assert data.tokenizer.decode(raw[:200].tolist()) == corpus.read_text()[:200]


def test_a_damaged_shard_is_found(tmp_path: Path) -> None:
    corpus = tmp_path / "story.txt"
    corpus.write_text(_text(1, 3000))
    data = prepare(corpus, "char", data_dir=tmp_path / "data", shard_tokens=1000)
    shard = data.shard_paths("train")[1]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated or damaged"):
        load_prepared(data.path)
    again = prepare(corpus, "char", data_dir=tmp_path / "data", shard_tokens=1000)  # prepared anew
    assert not again.reused and read_header(again.shard_paths("train")[1])[1] == 1000


def test_an_interrupted_preparation_resumes_at_the_units_it_had_not_finished(
    tmp_path: Path, small_units: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nima.data import unit_encoding

    corpus = write_corpus(tmp_path)
    reference = prepare(corpus, "byte", data_dir=tmp_path / "reference", workers=1)
    encoded: list[int] = []
    real = unit_encoding.encode_unit

    def dies_at_the_sixth(unit, settings):
        if len(encoded) == 5:
            raise KeyboardInterrupt
        encoded.append(unit.index)
        return real(unit, settings)

    data_dir = tmp_path / "data"
    monkeypatch.setattr("nima.data.preparation.encode_unit", dies_at_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, "byte", data_dir=data_dir, workers=1)
    assert not (data_dir / "corpus" / "byte").exists()  # nothing that looks finished
    work = data_dir / "corpus" / "byte.work"
    assert len(list(work.glob("0*.json"))) == 5  # five units done

    encoded.clear()
    monkeypatch.setattr(
        "nima.data.preparation.encode_unit", lambda u, s: encoded.append(u.index) or real(u, s)
    )
    resumed = prepare(corpus, "byte", data_dir=data_dir, workers=1)
    assert encoded[0] == 5 and len(encoded) == reference.meta["units"] - 5
    assert _digest(resumed.path) == _digest(reference.path)
    assert not work.exists()


def test_parts_prepared_apart_then_assembled_give_the_same_bytes(tmp_path: Path, small_units: None) -> None:
    corpus = write_corpus(tmp_path)
    whole = prepare(corpus, "byte", data_dir=tmp_path / "whole", workers=1)
    data_dir = tmp_path / "parts"
    for k in (1, 2, 3):
        assert prepare(corpus, "byte", data_dir=data_dir, part=(k, 3), workers=1) is None
    assert not (data_dir / "corpus" / "byte").exists()
    assembled = prepare(corpus, "byte", data_dir=data_dir, workers=1)
    assert _digest(assembled.path) == _digest(whole.path)


def test_val_files_and_document_hashing(tmp_path: Path) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"part{i}.txt").write_text(_text(i, 400))
    data = prepare(corpus, "byte", data_dir=tmp_path / "a", val_files="part5.txt")
    assert data.meta["splits"]["val"]["documents"] == 1
    val = data.tokenizer.decode(data.tokens("val")[:-1].tolist())
    assert val == (corpus / "part5.txt").read_text()

    # Without val_files: one whole file of six (ceil(0.1 * 6)), chosen by a hash of its path.
    data = prepare(corpus, "byte", data_dir=tmp_path / "b")
    assert data.meta["splits"]["val"]["documents"] == 1
    with pytest.raises(DataError, match="matches none"):
        prepare(corpus, "byte", data_dir=tmp_path / "c", val_files="nothing*.txt")


def test_bad_records_stop_with_the_file_and_line_or_are_counted(tmp_path: Path) -> None:
    corpus = tmp_path / "records.jsonl"
    good = [json.dumps({"text": _text(i, 80)}) for i in range(60)]
    corpus.write_text("\n".join(good[:30] + ['{"text": 3}', "not json", '{"body": "x"}'] + good[30:]) + "\n")
    with pytest.raises(DataError, match=r"records.jsonl line 31: field 'text' is a int.*--skip_bad_records"):
        prepare(corpus, "byte", data_dir=tmp_path / "data")
    assert not (tmp_path / "data" / "records").exists()  # nothing left behind
    data = prepare(corpus, "byte", data_dir=tmp_path / "data", skip_bad_records=True)
    assert data.meta["bad_records"]["count"] == 3
    assert "line 31" in data.meta["bad_records"]["first"]
    assert data.meta["source"]["documents"] == 60


def test_damaged_compressed_files_and_missing_columns(tmp_path: Path) -> None:
    damaged = tmp_path / "bad.jsonl.gz"
    damaged.write_bytes(gzip.compress(b'{"text": "hello there"}\n' * 1000)[:-40])
    with pytest.raises(DataError, match=r"bad.jsonl.gz is damaged"):
        prepare(damaged, "byte", data_dir=tmp_path / "data")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), table)
    with pytest.raises(DataError, match=r"t.parquet has no column 'text' \(it has: body\).*--text_field"):
        prepare(table, "byte", data_dir=tmp_path / "data")


def test_globs_and_saved_datasets(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    data = prepare(str(corpus / "**" / "*.jsonl*"), "byte", data_dir=tmp_path / "data")
    assert data.meta["source"]["kind"] == "glob" and data.meta["source"]["documents"] == 70
    datasets = pytest.importorskip("datasets")
    rows = [_text(i, 50) for i in range(40)]
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": rows[:30]}),
            "validation": datasets.Dataset.from_dict({"text": rows[30:]}),
        }
    ).save_to_disk(str(saved))
    data = prepare(saved, "byte", data_dir=tmp_path / "data")
    assert data.meta["splits"]["val"]["documents"] == 10
    assert data.meta["splits"]["train"]["documents"] == 30


def test_gpt2_tokenizer_offline_says_where_to_put_the_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NIMA_DATA_MIRROR", raising=False)
    corpus = tmp_path / "story.txt"
    corpus.write_text(_text(1, 100))
    from nima.data import sources

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "_download", offline)
    with pytest.raises(DataError, match=r"put encoder.json and vocab.bpe from .* into .*tokenizers/gpt2"):
        prepare(corpus, "gpt2", data_dir=tmp_path / "data")


def test_gpt2_format_files_give_the_ids_of_the_tokenizer_they_came_from(tmp_path: Path) -> None:
    from nima.data.pretrained import gpt2_style_tokenizer
    from nima.data.tokenizer import BPETokenizer

    trained = BPETokenizer.train([_text(i, 500) for i in range(5)], 400)
    spec = json.loads(trained.hf_tokenizer.to_str())
    (tmp_path / "encoder.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    rebuilt = gpt2_style_tokenizer(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    text = _text(77, 300) + " <|endoftext|> ünïcode ✓"
    assert rebuilt.encode(text) == trained.encode(text)
    assert rebuilt.eos_token_id == trained.eos_token_id and rebuilt.vocab_size == trained.vocab_size


def test_workers_option_is_checked(tmp_path: Path) -> None:
    corpus = tmp_path / "story.txt"
    corpus.write_text(_text(1, 100))
    with pytest.raises(DataError, match="--workers"):
        prepare(corpus, "byte", data_dir=tmp_path, workers=0)
    with pytest.raises(DataError, match="--part"):
        prepare(corpus, "byte", data_dir=tmp_path, part=(4, 3))
    assert os.listdir(tmp_path) == ["story.txt"]


def test_bpe_trains_on_a_bounded_sample_spread_over_the_corpus(tmp_path: Path, small_units: None) -> None:
    from nima.data.sources import resolve_source
    from nima.data.unit_encoding import training_sample
    from nima.data.units import plan_units

    corpus = write_corpus(tmp_path)
    plan = plan_units(resolve_source(corpus, tmp_path), val_fraction=0.1)
    sample = list(training_sample(plan.units, 0.1, 8_000))
    assert 4_000 < sum(map(len, sample)) <= 8_000  # the budget, about evenly per unit
    whole = sum(map(len, training_sample(plan.units, 0.1, 10**9)))
    assert whole > 3 * 8_000  # the corpus is larger than the sample
    data = prepare(corpus, "bpe", 400, data_dir=tmp_path / "data", tokenizer_sample_bytes=8_000)
    assert data.meta["settings"]["tokenizer_sample_bytes"] == 8_000


def test_a_large_text_file_among_records_stays_whole_on_one_side(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(units_module, "UNIT_BYTES", 1 << 14)
    folder = tmp_path / "mixed"
    folder.mkdir()
    big = _text(5, 20_000)
    (folder / "big.txt").write_text(big)
    (folder / "small.jsonl").write_text(
        "".join(json.dumps({"text": _text(i, 40)}) + "\n" for i in range(200))
    )
    data = prepare(folder, "byte", data_dir=tmp_path / "data", workers=1)
    assert data.meta["units"] > 5  # the text file was cut into byte ranges
    split = [s for s in ("train", "val") if big in data.tokenizer.decode(data.tokens(s)[:].tolist())]
    assert len(split) == 1  # all of it, in one split
    assert data.val_tokens < 0.3 * (data.train_tokens + data.val_tokens)
