"""The checkpoint format: one layout, written in one place, read back with safe loading.

A checkpoint is ``torch.save`` of a plain dict (format ``nima-checkpoint-v1``) holding only
tensors, numbers, strings, lists and dicts, so it always loads with ``weights_only=True``: no
pickled code is ever run. :func:`make_checkpoint` is the layout: the model and what it needs to
be rebuilt (``model_config``, ``tokenizer`` identity, ``data``), plus whatever training state the
Trainer's components contribute at the top level (``optimizer``, ``scheduler``, ``step``,
``epoch``, ``rng`` ...). :func:`load_checkpoint_file` reads any file of this format, filling
what older v1 files lack.
"""

from __future__ import annotations

import errno
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from nima.errors import CheckpointError
from nima.files import atomic_write, one_line
from nima.models import ModelConfig, create_model
from nima.runtime.wrapping import unwrap_model

FORMAT = "nima-checkpoint-v1"
FORMAT_VERSION = 1

# What a v1 file written before a field existed reads as (the loader fills these in).
V1_DEFAULTS: dict[str, Any] = {
    "data": {"prepared_path": None},
    "training_config": {},
    "step": 0,
    "epoch": 0,
    "batch_in_epoch": 0,
    "tokens_seen": 0,
    "best_val_loss": None,
    "last_val_loss": None,
    "early_stopping": None,
    "world_size": 1,
    "rng_by_rank": None,
}


_NUMBER = (int, float)
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "model_config": (dict, type(None)),
    "tokenizer": (dict, type(None)),
    "data": dict,
    "training_config": dict,
    "step": int,
    "epoch": int,
    "batch_in_epoch": int,
    "tokens_seen": int,
    "samples_in_epoch": (int, type(None)),
    "data_world_size": (int, type(None)),
    "best_val_loss": (*_NUMBER, type(None)),
    "last_val_loss": (*_NUMBER, type(None)),
    "world_size": int,
    "optimizer": (dict, type(None)),
    "scheduler": (dict, type(None)),
}
"""The types of the fields every reader relies on: a damaged file is refused when loaded, not
where a field is first used."""
NESTED_TYPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "tokenizer": {"kind": str, "vocab_size": int, "sha256": (str, type(None)), "path": (str, type(None))},
    "data": {"prepared_path": (str, type(None)), "train_tokens": int, "val_tokens": int, "sha256": str},
}


def make_checkpoint(
    model_state: dict[str, torch.Tensor],
    model_config: dict[str, Any] | None,
    tokenizer: dict[str, Any] | None,
    prepared_path: str | Path | None = None,
    training_config: dict[str, Any] | None = None,
    data_identity: dict[str, Any] | None = None,
    **training_state: Any,
) -> dict[str, Any]:
    """The checkpoint dict: model weights (wrapper prefixes removed), how to rebuild the model,
    the tokenizer's identity, the prepared data it trained on, and ``training_state`` (step,
    optimizer, ...; plain values and tensors only) at the top level.

    ``data_identity`` (``train_tokens``, ``val_tokens``, ``sha256``: see
    :func:`nima.checkpoint.metadata.data_identity`) goes into ``data`` beside ``prepared_path``, so
    that resuming on data that changed since is refused (files written before it existed have
    none, and are not checked)."""
    return {
        "format": FORMAT,
        "model": clean_state_dict(model_state),
        "model_config": model_config,
        "tokenizer": tokenizer,
        "data": {
            "prepared_path": str(prepared_path) if prepared_path is not None else None,
            **(data_identity or {}),
        },
        "training_config": dict(training_config or {}),
        "step": 0,
        "epoch": 0,
        **training_state,
    }


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a Nima checkpoint with ``weights_only=True``; CheckpointError when missing or foreign.

    ``mmap=True`` maps the tensors instead of reading them: only what is used is read, and it stays
    reclaimable page cache (metadata alone, or a model without its optimizer state). Files in
    torch's legacy format cannot be mapped and are read whole.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            found = sorted(p.name for p in path.parent.glob("*.pt"))
            hint = f"; found there: {', '.join(found[:8])}" if found else "; no .pt files there"
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says enough
            warnings.simplefilter("ignore", UserWarning)
            mapped = mmap and zipfile.is_zipfile(path)
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as err:
        text = _plain(err)
        code = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if code:
            raise CheckpointError(
                f"{path} was refused: it holds pickled code or objects ({code.group(1)}), not only tensors "
                "and plain values, and loading it could run that code; Nima loads only what its own "
                "checkpoints hold (weights_only): use a checkpoint written by nima train or nima import"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        raise CheckpointError(_unreadable(path, detail.group(1) if detail else text)) from None
    except Exception as err:  # arbitrary bytes make the unpickler raise anything
        raise CheckpointError(_unreadable(path, _plain(err))) from None
    return upgrade(ckpt, path)


def _plain(err: BaseException) -> str:
    """An error's text without terminal escapes (torch bolds some words)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    if isinstance(err, LookupError) or not text:  # a KeyError's text is the key alone
        text = f"{type(err).__name__} {text}".strip()
    return text


def _unreadable(path: Path, text: str) -> str:
    """One line for a file torch cannot read, with the first sentence of why."""
    first = re.split(r"(?<=\.)\s|\n", text, maxsplit=1)[0].rstrip(".")
    return (
        f"{path} is not a readable Nima checkpoint (corrupt, truncated or not saved by Nima): "
        f"{one_line(first, limit=200)}; {UNREADABLE_FIX}"
    )


UNREADABLE_FIX = "use another checkpoint (with --resume: delete this one, the next newest is used)"


def upgrade(ckpt: Any, path: str | Path = "checkpoint") -> dict[str, Any]:
    """Check the format of a loaded checkpoint and fill in the fields older v1 files lack."""
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    newer = isinstance(found, str) and re.fullmatch(r"nima-checkpoint-v(\d+)", found)
    if newer and int(newer.group(1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {found}, newer than this Nima reads ({FORMAT}); "
            "it was written by a newer Nima: upgrade Nima to load it"
        )
    if found != FORMAT or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(
            f"{path} is not a Nima checkpoint (expected format {FORMAT!r}); "
            "only files saved by Nima's Trainer can be loaded"
        )
    fields = [(key, ckpt, kinds) for key, kinds in FIELD_TYPES.items()]
    for section, types in NESTED_TYPES.items():
        if isinstance(ckpt.get(section), dict):
            fields += [(f"{section}.{key}", ckpt[section], kinds) for key, kinds in types.items()]
    for name, holder, kinds in fields:
        key = name.rpartition(".")[2]
        if key in holder and not isinstance(holder[key], kinds):
            raise CheckpointError(
                f"{path} is damaged: its {name} is a {type(holder[key]).__name__}, not what Nima writes "
                "there; use another checkpoint"
            )
        if key in holder and kinds is int and not 0 <= holder[key] < 2**62:  # counts and sizes
            raise CheckpointError(f"{path} is damaged: its {name} is {holder[key]}; use another checkpoint")
    strange = next(
        (k for k, v in ckpt["model"].items() if not (isinstance(k, str) and torch.is_tensor(v))), None
    )
    if strange is not None:
        raise CheckpointError(f"{path} is damaged: its model weights hold {strange!r}, not a named tensor")
    return {**V1_DEFAULTS, **ckpt}


class _ErrorKeepingWriter:
    """A file handle for ``torch.save`` that keeps the first OSError of a write: torch's zip
    writer turns it into a RuntimeError that no longer says why (``unexpected pos 704 vs 598``)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.handle.flush()


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a file-size limit, a folder that cannot be
    written): an OSError whose message names the file, the reason and what to do."""

    def __str__(self) -> str:
        reason = self.strerror or (str(self.args[0]) if self.args else "write failed")
        if self.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            fix = "free disk space (or raise the file-size limit or quota) or choose another "
        else:
            fix = "choose a writable "
        return (
            f"{self.filename}: {reason} (errno {self.errno}); nothing was replaced, the checkpoints "
            f"already written are intact; {fix}training.output_dir"
        )


def write_checkpoint_file(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save(state)`` to ``path`` atomically (see :func:`nima.files.atomic_write`).

    A write that fails raises :class:`CheckpointWriteError` (an OSError) naming the file and the
    reason; the file that was there before is untouched and no temporary file is left behind.
    """
    path = Path(path)

    def write(handle: IO[bytes]) -> None:
        keeper = _ErrorKeepingWriter(handle)
        try:
            torch.save(state, keeper)
        except RuntimeError:
            if keeper.error is not None:
                raise keeper.error from None
            raise

    try:
        return atomic_write(path, write)
    except OSError as err:
        raise CheckpointWriteError(err.errno, err.strerror or str(err), str(path)) from None


def write_failed(path: str | Path, err: OSError) -> CheckpointError:
    """The one-line CheckpointError for a checkpoint write that failed with ``err``."""
    detail = str(err) if isinstance(err, CheckpointWriteError) else f"{path}: {err}"
    return CheckpointError(f"cannot write checkpoint {detail}")


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` and ``_orig_mod.`` prefixes that wrappers add to parameter names."""
    return {
        re.sub(r"^(?:(?:module|_orig_mod)\.)+", "", k).replace("._orig_mod.", "."): v
        for k, v in state.items()
    }


def saved_model_config(ckpt: dict[str, Any], path: str | Path, **overrides: Any) -> ModelConfig:
    """The ModelConfig a checkpoint records (with ``overrides``); CheckpointError naming the file
    when it has none or a damaged one."""
    if not isinstance(ckpt.get("model_config"), dict):
        raise CheckpointError(f"{path} has no model_config; it cannot be rebuilt without one")
    try:
        return ModelConfig.from_dict({**ckpt["model_config"], **overrides})
    except Exception as err:  # a ConfigError too: the file is what is wrong
        raise CheckpointError(f"{path} has a damaged model_config: {one_line(err)}") from None


def load_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the GPT saved in a checkpoint: returns ``(model in eval mode on device, checkpoint dict)``."""
    # Mapped: a training checkpoint's optimizer state (twice the weights) is never read.
    ckpt = load_checkpoint_file(path, map_location="cpu", mmap=True)
    model = create_model(saved_model_config(ckpt, path))
    try:
        model.load_state_dict(clean_state_dict(ckpt["model"]))
    except Exception as err:  # the file's tensors and names, whatever they hold
        raise CheckpointError(
            f"{path}: weights do not fit the saved model config: {one_line(str(err).splitlines()[0], 200)}"
        ) from None
    check_finite(model.state_dict(), path)
    return model.to(device).eval(), ckpt


def check_finite(weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """CheckpointError when a weight holds nan or inf: training never saves such weights (its
    guard stops first), so they mean a damaged file, which would only give nan losses."""
    floats = ((name, t) for name, t in weights.items() if t.is_floating_point())
    broken = next((name for name, t in floats if not torch.isfinite(t).all()), None)
    if broken is not None:
        raise CheckpointError(f"{path} is damaged: its weights hold nan or inf ({broken}); use another one")


def save_model_checkpoint(model: torch.nn.Module, tokenizer: Any, path: str | Path, **extra: Any) -> Path:
    """Write a checkpoint with weights, model config and tokenizer identity only (no training state).

    ``nima eval`` and ``nima generate`` read it like any other; the tokenizer is saved as
    ``tokenizer.json`` next to the ``checkpoints/`` folder holding ``path``, and recorded by path.
    """
    path = Path(path)
    tokenizer_path = tokenizer.save(path.parent.parent / "tokenizer.json")
    state = make_checkpoint(
        unwrap_model(model).state_dict(),
        model.config.to_dict(),
        {**tokenizer.identity(), "path": str(tokenizer_path.resolve())},
        **extra,
    )
    try:
        return write_checkpoint_file(state, path)
    except OSError as err:
        raise write_failed(path, err) from None
