"""The fuzz test's inputs: a small world of good files, and the ways to damage a copy of one.

:func:`build_world` writes a corpus, prepares it, trains a tiny model for two steps and exports
it as a Hugging Face folder: every kind of file a ``nima`` command reads. :func:`damage` makes a
damaged copy of any of them, by its kind: random bytes, a truncation, flipped bytes, a span
replaced; and edits of its structure that still parse (a checkpoint's dict saved again, a JSON or
YAML document with one value changed or one key removed, a safetensors header, a line of a JSON
lines file). :mod:`fuzz_cases` builds command lines from these; :mod:`fuzz_commands` runs them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CORPUS_CHARS = 12_000
TINY_MODEL = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, "max_seq_len": 16}
TINY_TRAINING = {
    "batch_size": 2,
    "eval_batches": 1,
    "warmup_steps": 1,
    "log_every": 1,
    "precision": "fp32",
    "device": "cpu",
    "progress_bar": False,
}


# ---------------------------------------------------------------------------------- the world


@dataclasses.dataclass
class World:
    """The good inputs every case starts from (never changed by a case)."""

    root: Path
    corpus: Path
    jsonl: Path
    data: Path
    prepared: Path
    config: Path
    run: Path
    checkpoint: Path
    hf: Path
    blocker: Path

    def files(self) -> dict[str, str]:
        """sha256 of every file in the world."""
        return tree_hashes(self.root)


def build_world(root: Path, text: str) -> World:
    """Write the corpus, prepare it, train a 2-step run of a tiny model, export it."""
    from nima.cli import main

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    corpus.write_text(text[:CORPUS_CHARS], encoding="utf-8")
    jsonl = root / "corpus.jsonl"
    paragraphs = [p for p in text[:CORPUS_CHARS].split("\n\n") if p.strip()]
    jsonl.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs), encoding="utf-8")
    data = root / "data"
    run = root / "run"
    config = root / "config.yaml"
    sections = {
        "model": TINY_MODEL,
        "training": {
            **TINY_TRAINING,
            "max_steps": 2,
            "eval_every": 2,
            "save_every": 2,
            "output_dir": str(run),
        },
        "data": {"dataset": str(corpus), "tokenizer": "char", "data_dir": str(data)},
    }
    config.write_text(yaml_dump(sections), encoding="utf-8")
    blocker = root / "blocker"
    blocker.write_text("a file where a folder should be\n", encoding="utf-8")
    with quiet_streams():
        codes = [
            main(["prepare", "--dataset", str(corpus), "--data_dir", str(data), "--quiet"]),
            main(["train", "--config", str(config)]),
            main(
                ["export", "--checkpoint", str(run / "checkpoints" / "step_2.pt"), "--out", str(root / "hf")]
            ),
        ]
    if codes != [0, 0, 0]:
        raise RuntimeError(f"building the fuzz world failed: exit codes {codes}")
    return World(
        root=root,
        corpus=corpus,
        jsonl=jsonl,
        data=data,
        prepared=data / "corpus" / "char",
        config=config,
        run=run,
        checkpoint=run / "checkpoints" / "step_2.pt",
        hf=root / "hf",
        blocker=blocker,
    )


def yaml_dump(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def tree_entries(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@contextlib.contextmanager
def quiet_streams() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


# ---------------------------------------------------------------------------------- mutations

WEIRD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    10**30,
    -(10**30),
    1.5,
    1e308,
    -1e-308,
    float("nan"),
    float("inf"),
    "",
    "x",
    "nan",
    "💥" * 3,
    [],
    [1, "a"],
    {},
    {"a": None},
]


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Damage ``data`` in one of several ways; returns the bytes and what was done."""
    how = rng.choice(["random", "truncate", "truncate", "flip", "flip", "empty", "splice", "text", "zeros"])
    n = len(data)
    if how == "random" or n == 0:
        return rng.randbytes(rng.randint(1, 3000)), "random bytes"
    if how == "truncate":
        cut = rng.randint(0, max(n - 1, 0))
        return data[:cut], f"truncated to {cut} of {n} bytes"
    if how == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(n)] = rng.randrange(256)
        return bytes(out), "bytes flipped"
    if how == "empty":
        return b"", "empty"
    if how == "splice":
        a, b = sorted(rng.randrange(n) for _ in range(2))
        return data[:a] + rng.randbytes(rng.randint(0, 64)) + data[b:], "a span replaced"
    if how == "text":
        return b"not this kind of file at all\n" * rng.randint(1, 5), "a text file"
    return bytes(rng.randint(1, 4096)), "zeros"


def mutate_tree(rng: random.Random, value: Any, depth: int = 0) -> tuple[Any, str]:
    """Change one node of a JSON-like tree (a value replaced, a key removed, a type swapped)."""
    if isinstance(value, dict) and value and depth < 6 and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        if rng.random() < 0.2:
            del out[key]
            return out, f"key {key!r} removed"
        out[key], what = mutate_tree(rng, value[key], depth + 1)
        return out, f"{key}: {what}"
    if isinstance(value, list) and value and depth < 6 and rng.random() < 0.7:
        i = rng.randrange(len(value))
        out = list(value)
        out[i], what = mutate_tree(rng, value[i], depth + 1)
        return out, f"[{i}]: {what}"
    new = copy.deepcopy(rng.choice(WEIRD_VALUES))
    return new, f"set to {new!r}"[:80]


def mutate_json_file(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    try:
        doc = json.loads(data)
    except ValueError:
        return mutate_bytes(rng, data)
    if rng.random() < 0.35:
        return mutate_bytes(rng, data)
    new, what = mutate_tree(rng, doc)
    return json.dumps(new, allow_nan=True).encode(), what


def mutate_yaml_file(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    import yaml

    if rng.random() < 0.3:
        return mutate_bytes(rng, data)
    if rng.random() < 0.15:
        text = rng.choice(
            [
                "",
                "# only a comment\n",
                "- a\n- b\n",
                "model: [1,\n",
                "!!python/object:os.system x\n",
                "a: &a [*a]\n",
                "model:\n  n_layers: 1e400\n",
                "training: 5\n",
                "[[[[[[[[[[[[[[\n",
            ]
        )
        return text.encode(), f"config text {text!r}"
    doc = yaml.safe_load(data)
    new, what = mutate_tree(rng, doc)
    try:
        return yaml.safe_dump(new, sort_keys=False, allow_unicode=True).encode(), what
    except yaml.YAMLError:
        return mutate_bytes(rng, data)


def mutate_checkpoint_file(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Bytes damaged, or the checkpoint's dict edited and saved again (it still loads)."""
    import torch

    if rng.random() < 0.5:
        return mutate_bytes(rng, data)
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    key = rng.choice(
        ["model", "model_config", "tokenizer", "format", "step", "data", "optimizer", "training_config"]
    )
    what = key
    if key == "model" and ckpt["model"] and rng.random() < 0.8:
        name = rng.choice(sorted(ckpt["model"]))
        tensor = ckpt["model"][name]
        change = rng.choice(["nan", "shape", "int", "scalar", "drop", "huge"])
        what = f"model.{name}: {change}"
        if change == "nan":
            tensor = tensor.clone().fill_(float("nan"))
        elif change == "shape":
            tensor = torch.zeros(tensor.numel() + 1)
        elif change == "int":
            tensor = tensor.to(torch.int64)
        elif change == "scalar":
            tensor = torch.tensor(1.0)
        elif change == "huge":
            tensor = tensor.clone().fill_(3e38)
        if change == "drop":
            del ckpt["model"][name]
        else:
            ckpt["model"][name] = tensor
    elif key in ckpt:
        ckpt[key], change = mutate_tree(rng, ckpt[key])
        what = f"{key}: {change}"
    else:
        ckpt[key] = rng.choice(WEIRD_VALUES)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue(), what


def mutate_safetensors_file(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Bytes damaged, or the header (length and JSON) edited."""
    if rng.random() < 0.5 or len(data) < 8:
        return mutate_bytes(rng, data)
    (length,) = struct.unpack("<Q", data[:8])
    header, rest = data[8 : 8 + length], data[8 + length :]
    if rng.random() < 0.3:
        fake = rng.choice([0, 1, 2**63, 2**64 - 1, length + 100, len(data) * 10])
        return struct.pack("<Q", fake) + data[8:], f"header length {fake}"
    new, what = mutate_json_file(rng, header)
    return struct.pack("<Q", len(new)) + new + rest, f"header {what}"


def mutate_lines(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A JSON-lines file: one line damaged or edited, or lines added."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines or rng.random() < 0.3:
        return mutate_bytes(rng, data)
    i = rng.randrange(len(lines))
    if rng.random() < 0.5:
        new, what = mutate_json_file(rng, lines[i].encode())
        lines[i] = new.decode("utf-8", errors="replace")
    else:
        lines.insert(
            i,
            rng.choice(
                [
                    "{",
                    "[]",
                    "null",
                    '{"step": "x"}',
                    '{"step": 1e400, "loss": "nan"}',
                    '{"step": -5, "loss": -1e308, "time_s": -3}',
                    '{"step": 3, "lr": 1e308, "grad_norm": 1e308, "tokens_per_s": -1}',
                    "\x00\x01",
                ]
            ),
        )
        what = "a strange line"
    return ("\n".join(lines) + "\n").encode(), f"line {i + 1}: {what}"


def mutator_for(path: Path) -> Callable[[random.Random, bytes], tuple[bytes, str]]:
    if path.suffix == ".pt":
        return mutate_checkpoint_file
    if path.suffix == ".safetensors":
        return mutate_safetensors_file
    if path.suffix == ".jsonl":
        return mutate_lines
    if path.suffix == ".json":
        return mutate_json_file
    if path.suffix in (".yaml", ".yml"):
        return mutate_yaml_file
    return mutate_bytes


def damage(rng: random.Random, path: Path) -> tuple[bytes, str]:
    """Damaged contents for a copy of ``path``, by its kind; and what was done to it."""
    return mutator_for(path)(rng, path.read_bytes())
