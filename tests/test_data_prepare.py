"""Preparation on real data (tiny Shakespeare) and on small texts: counts, split, dtype, reuse, safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nima.data import load_prepared, prepare, prepare_dataset
from nima.data import preparation as prepare_module
from nima.data.preparation import token_dtype
from nima.data.shards import HEADER_BYTES, ShardedTokens
from nima.data.tokenizer import EOT_TEXT
from nima.errors import DataError

SHAKESPEARE_CHARS = 1_115_394


def _decode_all(data) -> str:
    """The corpus back from its tokens (a one-document corpus ends with end-of-text, when the
    tokenizer has one)."""
    text = data.tokenizer.decode(np.asarray(data.tokens("train")).tolist()) + data.tokenizer.decode(
        np.asarray(data.tokens("val")).tolist()
    )
    return text.removesuffix(EOT_TEXT)


def test_tiny_shakespeare_char(session_data_dir: Path, tiny_shakespeare_file: Path) -> None:
    data = prepare("tiny_shakespeare", "char")
    assert data.path == session_data_dir / "tiny_shakespeare" / "char"
    assert data.tokenizer.vocab_size == 65
    assert data.train_tokens + data.val_tokens == SHAKESPEARE_CHARS  # one token per character
    # The split: the last ~10% of the text, cut at a line break.
    assert abs(data.val_tokens - SHAKESPEARE_CHARS * 0.1) < 200
    text = tiny_shakespeare_file.read_text(encoding="utf-8")
    assert text[: data.train_tokens].endswith("\n")
    train = data.tokens("train")
    assert isinstance(train, ShardedTokens) and train.dtype == np.dtype("<u2")
    assert data.shard_paths("train")[0].stat().st_size == HEADER_BYTES + 2 * data.train_tokens
    assert _decode_all(data) == text
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["source"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert meta["dtype"] == "<u2" and meta["tokenizer"]["kind"] == "char"
    assert meta["split"]["val_fraction"] == 0.1
    assert {"dataset", "vocab_size", "train_tokens", "val_tokens", "settings"} <= set(meta)


@pytest.mark.slow
def test_tiny_shakespeare_byte_and_bpe(tiny_shakespeare_file: Path) -> None:
    text = tiny_shakespeare_file.read_text(encoding="utf-8")
    byte = prepare("tiny_shakespeare", "byte")
    assert byte.tokenizer.vocab_size == 257
    assert byte.train_tokens + byte.val_tokens == len(text.encode()) + 1  # the document's end-of-text
    bpe = prepare("tiny_shakespeare", "bpe", vocab_size=500)
    assert bpe.path.name == "bpe-500" and bpe.tokenizer.vocab_size == 500
    assert bpe.dtype == np.dtype("<u2")
    assert bpe.train_tokens + bpe.val_tokens < len(text) / 1.5
    assert _decode_all(bpe) == text
    # Chunked, parallel encoding gives exactly the ids of encoding the text whole (checked on a
    # 200k-character prefix that ends where GPT-2's pre-tokenizer cuts: before a space).
    cut = text.index(" ", 200_000)
    while text[cut - 1].isspace():
        cut = text.index(" ", cut + 1)
    whole = bpe.tokenizer.encode(text[:cut])
    assert np.asarray(bpe.tokens("train")[: len(whole)]).tolist() == whole


def test_guide_prepare_dataset(tiny_shakespeare_file: Path) -> None:
    train, val, tokenizer = prepare_dataset(
        dataset_name="tiny_shakespeare", tokenizer_type="char", max_length=512
    )
    assert tokenizer.vocab_size == 65
    assert train.max_length == 512 and len(train[0]) == 513
    assert train.prepared_path is not None and train.tokenizer_identity == tokenizer.identity()
    # Validation covers every token: full windows plus a shorter last one.
    covered = sum(len(val[i]) - 1 for i in range(len(val)))
    assert covered == val.num_tokens - 1


def test_reuse_and_reprepare_on_change(tmp_path: Path) -> None:
    corpus = tmp_path / "story.txt"
    corpus.write_text("".join(f"line {i} of the story\n" for i in range(200)))
    data_dir = tmp_path / "data"
    first = prepare(corpus, "char", data_dir=data_dir)
    assert first.path == data_dir / "story" / "char"
    created = first.meta["created"], first.shard_paths("train")[0].stat().st_ino
    again = prepare(corpus, "char", data_dir=data_dir)
    assert (again.meta["created"], again.shard_paths("train")[0].stat().st_ino) == created
    assert again.reused and not first.reused

    # Touched but unchanged: still reused (checked by sha256).
    os.utime(corpus, ns=(1, 1))
    assert prepare(corpus, "char", data_dir=data_dir).shard_paths("train")[0].stat().st_ino == created[1]

    # A changed setting prepares anew.
    other_split = prepare(corpus, "char", data_dir=data_dir, val_fraction=0.5)
    assert other_split.val_tokens > 3 * first.val_tokens

    # A changed source prepares anew.
    corpus.write_text(corpus.read_text() + "an extra line with new letters XYZ\n")
    changed = prepare(corpus, "char", data_dir=data_dir)
    assert changed.train_tokens + changed.val_tokens > first.train_tokens + first.val_tokens
    assert "X" in changed.tokenizer.chars
    assert [p.name for p in (data_dir / "story").iterdir()] == ["char"]  # no temp folders left


def test_failed_preparation_leaves_the_good_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "book.txt"
    corpus.write_text("all good text\n" * 300)
    data_dir = tmp_path / "data"
    good = prepare(corpus, "byte", data_dir=data_dir)
    before = {p: p.read_bytes() for p in good.path.rglob("*") if p.is_file()}

    corpus.write_text("changed text that will fail\n" * 300)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prepare_module, "encode_unit", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(corpus, "byte", data_dir=data_dir)
    assert {p: p.read_bytes() for p in good.path.rglob("*") if p.is_file()} == before
    # The work folder stays (a crash is not bad input: the next run resumes from it).
    assert sorted(p.name for p in (data_dir / "book").iterdir()) == ["byte", "byte.work"]

    # Leftovers of a killed preparation are cleaned up once they are old.
    monkeypatch.undo()
    stale = data_dir / "book" / ".byte.tmp-killed"
    stale.mkdir()
    os.utime(stale, (1, 1))
    prepare(corpus, "byte", data_dir=data_dir)
    assert sorted(p.name for p in (data_dir / "book").iterdir()) == ["byte"]


def _documents(data, split: str) -> list[str]:
    """The documents of ``split``: each ends with the end-of-text token."""
    text = data.tokenizer.decode(np.asarray(data.tokens(split)).tolist())
    assert text.endswith(EOT_TEXT)
    return text.split(EOT_TEXT)[:-1]


def test_folder_of_text_files_separates_documents(tmp_path: Path) -> None:
    folder = tmp_path / "letters"
    folder.mkdir()
    for i in range(10):
        (folder / f"{i:02d}.txt").write_text(f"Dear friend number {i},\nall is well.\n")
    (folder / "notes.md").write_text("markdown is text too")
    (folder / "ignored.csv").write_text("not a corpus format")
    data = prepare(folder, "byte", data_dir=tmp_path / "data")
    assert data.meta["source"]["documents"] == 11
    docs = [(folder / f"{i:02d}.txt").read_text() for i in range(10)] + ["markdown is text too"]
    train, val = _documents(data, "train"), _documents(data, "val")
    # Whole documents on each side: ceil(0.1 * 11) = 2 files are validation; train keeps the order.
    assert len(val) == 2 and sorted(train + val) == sorted(docs)
    assert train == [d for d in docs if d in train]
    char = prepare(folder, "char", data_dir=tmp_path / "data")
    assert char.tokenizer.eos_token_id is not None


def test_jsonl_with_text_field(tmp_path: Path) -> None:
    path = tmp_path / "posts.jsonl"
    rows = [{"id": i, "body": f"post {i}: hello there\n"} for i in range(50)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = prepare(path, "bpe", vocab_size=300, data_dir=tmp_path / "data", text_field="body")
    train, val = _documents(data, "train"), _documents(data, "val")
    # Each record is a document, in val when its text hashes below val_fraction: about 5 of 50.
    assert sorted(train + val) == sorted(r["body"] for r in rows)
    assert 1 <= len(val) <= 12 and train[0] == rows[0]["body"]
    with pytest.raises(DataError, match="no field 'text'.*--text_field"):
        prepare(path, "char", data_dir=tmp_path / "data")


def test_uint32_when_the_vocabulary_is_large(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    alphabet = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 20992)) + "".join(
        chr(c) for c in range(0x20000, 0x20000 + 45000)
    )
    path = tmp_path / "wide.txt"
    path.write_text(
        "\n".join(alphabet[i : i + 100] for i in range(0, len(alphabet), 100)) + "\n" + alphabet[:5000]
    )
    data = prepare(path, "char", data_dir=tmp_path / "data")
    assert data.tokenizer.vocab_size > 65536
    assert data.dtype == np.dtype("<u4") and data.tokens("train").dtype == np.dtype("<u4")
    assert _decode_all(data) == path.read_text()


def test_other_encodings(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(("Café crème, señor.\n" * 50).encode("latin-1"))
    data = prepare(path, "char", data_dir=tmp_path / "data", encoding="latin-1")
    assert "é" in data.tokenizer.chars
    assert _decode_all(data) == ("Café crème, señor.\n" * 50)


def test_tiny_shakespeare_from_the_mirror(
    tmp_path: Path, tiny_shakespeare_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIMA_DATA_MIRROR", str(tiny_shakespeare_file.parent.parent))
    data_dir = tmp_path / "data"
    (data_dir / "tiny_shakespeare").mkdir(parents=True)
    (data_dir / "tiny_shakespeare" / "input.txt").write_text("a damaged copy")  # wrong hash: replaced
    data = prepare("tiny_shakespeare", "byte", data_dir=data_dir)
    assert data.train_tokens + data.val_tokens == SHAKESPEARE_CHARS + 1  # and the end-of-text
    assert (data_dir / "tiny_shakespeare" / "input.txt").read_bytes() == tiny_shakespeare_file.read_bytes()


def test_load_prepared_detects_truncation(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("some words here\n" * 100)
    data = prepare(path, "char", data_dir=tmp_path / "data")
    assert load_prepared(data.path).meta == data.meta
    with open(data.shard_paths("train")[0], "r+b") as f:
        f.truncate(1030)
    with pytest.raises(DataError, match="truncated"):
        load_prepared(data.path)
    assert prepare(path, "char", data_dir=tmp_path / "data").train_tokens == data.train_tokens  # repaired
    with pytest.raises(DataError, match="no prepared dataset"):
        load_prepared(tmp_path / "nowhere")


def test_public_names_and_a_light_cli() -> None:
    import nima.data

    for name in nima.data.__all__:
        assert getattr(nima.data, name) is not None
    # `nima prepare` needs no PyTorch: it starts fast.
    code = "import sys, nima.data.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_data_config_checks_its_values() -> None:
    from nima.data import DataConfig
    from nima.errors import ConfigError

    config = DataConfig.from_dict({"dataset": "tiny_shakespeare", "tokenizer": "bpe"})
    assert config.tokenizer == "bpe" and config.val_fraction == 0.1
    assert DataConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="did you mean data.tokenizer"):
        DataConfig.from_dict({"tokeniser": "char"})
    with pytest.raises(ConfigError, match="data.tokenizer"):
        DataConfig(tokenizer="word")
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig(val_fraction=0)


def test_prepare_with_a_saved_tokenizer_encodes_with_it_as_it_is(tmp_path: Path) -> None:
    from nima.data.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz \n", with_eot=True)
    saved = tokenizer.save(tmp_path / "given" / "tokenizer.json")
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox\njumps over the lazy dog\n" * 40)
    data = prepare(str(text), str(saved), data_dir=tmp_path / "data")
    assert data.path.name == f"char-{tokenizer.identity()['sha256'][:12]}"
    assert data.tokenizer.to_dict() == tokenizer.to_dict()  # not a new vocabulary from the text
    assert data.tokens("train")[:3].tolist() == tokenizer.encode("the")
    assert prepare(str(text), str(saved.parent), data_dir=tmp_path / "data").reused  # folder form too
    with pytest.raises(DataError, match="unknown tokenizer 'nope.json': choose one of char, byte, bpe"):
        prepare(str(text), "nope.json", data_dir=tmp_path / "data")
    text.write_text("UPPER CASE IS NOT IN IT\n" * 40)
    with pytest.raises(DataError, match="char tokenizer has no id for the character 'U'"):
        prepare(str(text), str(saved), data_dir=tmp_path / "data")
