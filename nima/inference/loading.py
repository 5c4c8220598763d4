"""Load a trained model for use: the checkpoint, its tokenizer, and the check that they belong together.

A checkpoint records its tokenizer's identity (kind, vocabulary size, sha256 of the tokenizer JSON)
and where the tokenizer file was. The tokenizer is looked for, in order:

1. the file or prepared-data folder given explicitly (``--tokenizer PATH``);
2. the path recorded in the checkpoint;
3. ``tokenizer.json`` in the prepared dataset folder recorded in the checkpoint;
4. ``tokenizer.json`` next to the checkpoint or one folder up;
5. any prepared dataset under the data directory whose tokenizer has the recorded sha256.

A candidate whose identity differs from the checkpoint's is never used: an explicit one is an
error naming both identities; an automatic one is skipped.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nima.checkpoint import load_model_from_checkpoint
from nima.data import default_data_dir, load_tokenizer
from nima.errors import CheckpointError, ConfigError, DataError
from nima.runtime.device import resolve_device

STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng")
MAX_THREADS_PER_CPU = 4


@dataclass
class LoadedModel:
    """A model ready for evaluation or generation, with the tokenizer it was trained with."""

    model: torch.nn.Module
    """The GPT, in eval mode, on ``device``."""
    tokenizer: Any
    """The matching nima.data tokenizer."""
    checkpoint_path: Path
    tokenizer_path: Path
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    """The checkpoint's metadata (step, epoch, configs, tokenizer identity, data), without weights or
    optimizer state."""


def pick_device(name: str | None = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu (the runtime's rule, for ``--device``)."""
    return resolve_device(name, option="--device")


def add_loading_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """The options every command that loads a checkpoint shares (``nima eval``, ``nima generate``,
    ``nima export``): ``--tokenizer`` and ``--data_dir``, and with ``device`` also ``--device`` and
    ``--threads`` (for the commands that run the model)."""
    parser.add_argument(
        "--tokenizer", help="tokenizer.json or prepared data folder (default: found from the checkpoint)"
    )
    parser.add_argument(
        "--data_dir", help="where prepared datasets live (default $NIMA_DATA_DIR or experiments/data)"
    )
    if not device:
        return
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice; 1 is often fastest for small models)",
    )


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` with a clear error for a bad value (None: leave as is).

    Generating from a small model costs little work per token, so on a busy CPU one thread
    often beats several that wait on each other."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads {threads} must be at least 1")
    most = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
    if threads > most:  # each thread is a real OS thread: a million would bring the machine down
        raise ConfigError(
            f"--threads {threads} is more than {MAX_THREADS_PER_CPU} per CPU of this machine "
            f"({os.cpu_count()} CPUs); use at most {most}"
        )
    torch.set_num_threads(threads)


def describe_identity(identity: dict[str, Any] | None) -> str:
    """``char tokenizer, vocab 65, sha256 1a2b3c4d5e6f`` (short, for messages)."""
    if not identity:
        return "unknown tokenizer"
    sha = str(identity.get("sha256") or "?")[:12]
    return f"{identity.get('kind', '?')} tokenizer, vocab {identity.get('vocab_size', '?')}, sha256 {sha}"


def tokenizer_matches(tokenizer: Any, identity: dict[str, Any] | None) -> bool:
    """Whether ``tokenizer`` is the one the checkpoint recorded (by sha256 when known)."""
    if not identity:
        return True
    mine = tokenizer.identity()
    if identity.get("sha256"):
        return mine.get("sha256") == identity["sha256"]
    return all(mine.get(k) == identity.get(k) for k in ("kind", "vocab_size") if k in identity)


def _data_dir(data_dir: str | Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    return default_data_dir()


def _candidate_paths(info: dict[str, Any], checkpoint_path: Path, data_dir: Path) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    recorded = (info.get("tokenizer") or {}).get("path")
    if recorded:
        found.append(("path recorded in the checkpoint", Path(recorded)))
    prepared = (info.get("data") or {}).get("prepared_path")
    if prepared:
        found.append(("prepared dataset recorded in the checkpoint", Path(prepared) / "tokenizer.json"))
    found.append(("next to the checkpoint", checkpoint_path.parent / "tokenizer.json"))
    found.append(("next to the checkpoint folder", checkpoint_path.parent.parent / "tokenizer.json"))
    if data_dir.is_dir():
        found += [("data directory", p) for p in sorted(data_dir.glob("*/*/tokenizer.json"))]
    return found


def resolve_tokenizer(
    info: dict[str, Any],
    checkpoint_path: str | Path,
    tokenizer: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> tuple[Any, Path]:
    """Find and load the tokenizer of a checkpoint; returns ``(tokenizer, path)``.

    ``info`` is the checkpoint dict (weights may be absent). Raises CheckpointError when an explicit
    ``tokenizer`` does not match the checkpoint, or when no matching tokenizer can be found.
    """
    checkpoint_path = Path(checkpoint_path)
    identity = info.get("tokenizer") or None
    if tokenizer is not None:
        path = Path(tokenizer)
        tok = load_tokenizer(path)
        if not tokenizer_matches(tok, identity):
            raise CheckpointError(
                f"tokenizer {path} does not match checkpoint {checkpoint_path}: the model was trained with a "
                f"{describe_identity(identity)}, this is a {describe_identity(tok.identity())}; "
                "pass the tokenizer.json of the dataset the model was trained on"
            )
        return tok, path if path.suffix == ".json" else path / "tokenizer.json"

    tried: list[str] = []
    for source, path in _candidate_paths(info, checkpoint_path, _data_dir(data_dir)):
        if source == "data directory" and not identity:
            continue  # without a recorded identity any tokenizer would "match": never guess
        if not path.is_file():
            if source != "data directory":
                tried.append(f"{path} ({source}): missing")
            continue
        try:
            tok = load_tokenizer(path)
        except DataError as err:
            tried.append(f"{path}: {err}")
            continue
        if tokenizer_matches(tok, identity):
            return tok, path
        tried.append(f"{path} ({source}): a different {describe_identity(tok.identity())}")
    raise CheckpointError(
        f"cannot find the tokenizer of {checkpoint_path} ({describe_identity(identity)}); tried: "
        f"{'; '.join(tried) or 'nothing'}; "
        "pass --tokenizer PATH to its tokenizer.json or prepared data folder"
    )


def checkpoint_metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict without its tensors-heavy entries (weights, optimizer, RNG)."""
    return {k: v for k, v in checkpoint.items() if k not in STATE_KEYS}


def load_for_inference(
    checkpoint: str | Path,
    tokenizer: str | Path | None = None,
    device: str | torch.device | None = "auto",
    data_dir: str | Path | None = None,
) -> LoadedModel:
    """Load the model of ``checkpoint`` on ``device`` with its tokenizer (found as described in this
    module's docstring, or ``tokenizer``), refusing a tokenizer that does not match."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    checkpoint = Path(checkpoint)
    model, ckpt = load_model_from_checkpoint(checkpoint, device=device)
    info = checkpoint_metadata(ckpt)
    tok, tok_path = resolve_tokenizer(info, checkpoint, tokenizer, data_dir)
    model_vocab = int(model.config.vocab_size)
    if tok.vocab_size > model_vocab:
        raise CheckpointError(
            f"tokenizer {tok_path} has {tok.vocab_size} ids but the model of {checkpoint} "
            f"only {model_vocab}; "
            "pass the tokenizer the model was trained with"
        )
    return LoadedModel(
        model=model,
        tokenizer=tok,
        checkpoint_path=checkpoint,
        tokenizer_path=tok_path,
        device=device,
        info=info,
    )
