"""Preparation: a corpus -> tokenizer + token shards + ``meta.json``, on every core.

Output folder: ``<data_dir>/<dataset>/<tokenizer tag>/`` (tag ``char``, ``byte``, ``gpt2``,
``bpe-<N>``, or ``<kind>-<sha256 prefix>`` for a given tokenizer.json); its layout is described
in :mod:`nima.data.prepared`.

How it works, and why:

- Plan (:mod:`nima.data.units`): the corpus' files become numbered work units (a file, a byte
  range of a large one, row groups of a table) with their split; nothing here depends on the
  number of workers, so neither do the bytes written.
- Tokenizer (:mod:`nima.data.tokenizer_fit`): given, pretrained, or fitted on (a sample of) the
  corpus.
- Encode (:mod:`nima.data.unit_encoding`): ``workers`` processes encode units into per-unit token
  files in a work folder ``<tag>.work/`` beside the result; a unit is done once its ``.json``
  exists, so an interrupted preparation (Ctrl-C, a kill, a full disk) resumes at the first unit it
  had not finished. ``part=(K, N)`` encodes only part K of N (another machine's share), to be
  assembled by a run without ``part`` once every part's units are in the work folder.
- Assemble: the unit files are concatenated in order into shards of ``shard_tokens`` tokens
  (:class:`~nima.data.shards.ShardWriter`) in a temporary folder, which is renamed into place;
  a failure leaves any earlier result intact. The work folder is removed after success, and
  after bad input (which a new run cannot reuse anyway).
- Reuse: a folder whose ``meta.json`` records the same settings and the same source files (size
  and mtime, else sha256) is returned as is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nima.data.prepared import (
    PREPARED_FORMAT,
    PreparedData,
    check_token_ids,
    default_data_dir,
    load_prepared,
    open_tokens,
    token_dtype,
    tokenizer_tag,
)
from nima.data.result_folder import (
    combined_sha256,
    file_sha256,
    install,
    missing_folders,
    remove_empty,
    remove_stale_temporaries,
    reuse,
    reuse_smaller_bpe,
    true_bpe_name,
)
from nima.data.shards import DEFAULT_SHARD_TOKENS, ShardWriter
from nima.data.sources import TextSource, resolve_source
from nima.data.stream_encoders import cpu_count
from nima.data.tokenizer import BPETokenizer, Tokenizer, check_bpe_vocab_size, load_tokenizer
from nima.data.tokenizer_fit import TOKENIZER_KINDS, fit_tokenizer, given_tokenizer
from nima.data.unit_encoding import EncodeSettings, encode_unit, fast_bpe_available, run_units, unit_files
from nima.data.units import Plan, part_of, plan_units
from nima.errors import DataError
from nima.files import atomic_write_json, make_public, sha256_file, why_unwritable

__all__ = [
    "FAST_BPE_MIN_BYTES",
    "PREPARED_FORMAT",
    "TOKENIZER_KINDS",
    "PreparedData",
    "check_token_ids",
    "default_data_dir",
    "given_tokenizer",
    "load_prepared",
    "open_tokens",
    "prepare",
    "token_dtype",
    "tokenizer_tag",
]

DEFAULT_SAMPLE_BYTES = 1_000_000_000
FAST_BPE_MIN_BYTES = 1 << 22
"""Below this much text, building and checking the fast encoder costs more than it saves."""
COPY_TOKENS = 1 << 24
"""Tokens copied at a time from unit files into shards."""


def prepare(
    dataset: str | os.PathLike = "tiny_shakespeare",
    tokenizer: str = "char",
    vocab_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    encoding: str = "utf-8",
    text_field: str = "text",
    val_fraction: float = 0.1,
    val_files: str | None = None,
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    tokenizer_sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    skip_bad_records: bool = False,
    part: tuple[int, int] | None = None,
    quiet: bool = True,
    force: bool = False,
) -> PreparedData | None:
    """Prepare ``dataset`` with a ``tokenizer``, or reuse an earlier result.

    ``dataset``: a known name (``tiny_shakespeare``), or a file, a folder (recursively) or a glob
    of ``.txt``, ``.md``, ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` and ``.parquet`` files (text in
    ``text_field``), or a folder written by ``datasets.Dataset.save_to_disk``.
    ``tokenizer``: ``char``, ``byte``, ``bpe`` (needs ``vocab_size``; trained on at most
    ``tokenizer_sample_bytes`` of the train split), ``gpt2``, or the path of a saved tokenizer
    (``tokenizer.json``, or a folder with one), used as it is; its result goes to
    ``<dataset>/<kind>-<first 12 hex digits of its sha256>/``.
    Validation: ``val_fraction`` of the documents (or of the text, for one document), or the
    files matching the glob ``val_files``. ``workers``: encoding processes (default: every core;
    the result is the same bytes whatever the number). ``skip_bad_records``: count and skip
    records that are not JSON or lack the text, instead of stopping at the first.
    ``part=(K, N)``: encode only part K of N and return None (see the module docstring).
    ``quiet=False`` shows progress on stderr; ``force`` prepares anew even when a matching result
    exists. Raises :class:`~nima.errors.DataError` for bad input.
    """
    given, kind, vocab_size, tag = _tokenizer_choice(tokenizer, vocab_size)
    val_fraction = _check_val_fraction(val_fraction)
    part = _check_part(part)
    _check_positive("--shard_tokens", shard_tokens)
    _check_positive("--tokenizer_sample_bytes", tokenizer_sample_bytes)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    source = resolve_source(dataset, root, encoding=encoding, text_field=text_field)
    workers = _check_workers(workers, source.total_bytes())
    out = root / source.name / tag
    settings = {
        "tokenizer": kind,
        "vocab_size": vocab_size,
        "encoding": encoding,
        "text_field": text_field if source.uses_text_field else None,
        "val_fraction": val_fraction if val_files is None else None,
        "val_files": val_files,
        "shard_tokens": int(shard_tokens),
        "tokenizer_sample_bytes": int(tokenizer_sample_bytes) if kind == "bpe" else None,
        "skip_bad_records": bool(skip_bad_records),
        "format": PREPARED_FORMAT,
    }
    if given is not None:
        settings["tokenizer_sha256"] = given.identity()["sha256"]
    if not force and part is None:
        reused = reuse(out, source, settings) or reuse_smaller_bpe(out, source, settings)
        if reused is not None:
            reused.reused = True
            return reused
    why = why_unwritable(out.parent)  # before any work
    if why is not None:
        raise DataError(f"cannot write prepared data under {out.parent}: {why}; choose another --data_dir")
    plan = plan_units(
        source, val_fraction=val_fraction, val_files=val_files, skip_bad_records=skip_bad_records
    )
    build = _Build(source, plan, settings, out.parent / f"{out.name}.work", root, workers, quiet, given)
    return _build_into(out, build, part, force)


def _tokenizer_choice(
    tokenizer: str, vocab_size: int | None
) -> tuple[Tokenizer | None, str, int | None, str]:
    """(the given tokenizer or None, its kind, the vocabulary size asked, the result folder's tag)."""
    given = given_tokenizer(tokenizer)
    if given is not None:
        return given, "given", given.vocab_size, f"{given.kind}-{given.identity()['sha256'][:12]}"
    kind = _check_tokenizer_kind(tokenizer)
    # char, byte and gpt2 vocabularies are fixed by the text, by UTF-8, by GPT-2
    vocab_size = check_bpe_vocab_size(vocab_size) if kind == "bpe" else None
    return None, kind, vocab_size, tokenizer_tag(kind, vocab_size)


def _build_into(out: Path, build: _Build, part: tuple[int, int] | None, force: bool) -> PreparedData | None:
    """Run ``build`` (resuming its work folder) and install the result at ``out``."""
    created = missing_folders(out.parent)  # removed again if preparing fails: no empty folders left
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        _open_work(build.work, build.settings, build.source, build.plan, force)
    except OSError as err:
        remove_empty(created)
        raise DataError(
            f"cannot write prepared data under {out.parent}: {err.strerror or err}; choose another --data_dir"
        ) from None
    try:
        tokenizer_path = build.tokenizer()
        build.encode(tokenizer_path, part)
        if part is not None:
            return None
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        make_public(tmp, directory=True)
        try:
            meta = build.assemble(tmp, tokenizer_path)
            out = true_bpe_name(out, meta, build.settings)
            install(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException as err:
        if isinstance(err, DataError) and not isinstance(err, _WorkIncomplete):
            # bad input: nothing a later run could reuse
            shutil.rmtree(build.work, ignore_errors=True)
            remove_empty(created)
        if isinstance(err, OSError):  # disk full, permissions, a source file that vanished
            raise DataError(
                f"preparing {build.source.location} into {out} failed: {err}; run the same command again "
                "to resume where it stopped"
            ) from None
        raise
    shutil.rmtree(build.work, ignore_errors=True)
    return PreparedData(path=out, meta=meta, tokenizer=load_tokenizer(out / "tokenizer.json"))


PARALLEL_MIN_BYTES = 16 << 20
"""Below this much text, starting worker processes costs more than it saves."""


class _WorkIncomplete(DataError):
    """The work folder lacks units, or holds some of another tokenizer: keep it for the user to fix."""


def _check_workers(workers: int | None, corpus_bytes: int) -> int:
    if workers is None:
        return cpu_count() if corpus_bytes >= PARALLEL_MIN_BYTES else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers must be a positive number of processes, got {workers!r}")
    most = 4 * (os.cpu_count() or 1)
    if workers > most:
        raise DataError(f"--workers {workers} is more than 4 per CPU of this machine; use at most {most}")
    return workers


def _check_positive(option: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{option} must be a positive whole number, got {value!r}")


def _check_part(part: tuple[int, int] | None) -> tuple[int, int] | None:
    if part is None:
        return None
    k, n = part
    if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n):
        raise DataError(f"--part must be K/N with 1 <= K <= N, got {k}/{n}")
    return k, n


# ---------------------------------------------------------------------------------- work folder


def _open_work(work: Path, settings: dict[str, Any], source: TextSource, plan: Plan, force: bool) -> None:
    """Keep the units of an earlier, unfinished preparation of the same plan; else start afresh.

    The plan is named by the settings and the files' paths (relative to the corpus) and sizes, not
    their mtimes: parts encoded on other machines, from copies of the corpus, still count."""
    root = source.location if source.location.is_dir() else source.location.parent
    files = [[os.path.relpath(f.path, root), f.split_name, f.size] for f in source.files]
    record = {"settings": settings, "files": files, "units": len(plan.units)}
    try:
        same = json.loads((work / "plan.json").read_text(encoding="utf-8")) == record
    except (OSError, ValueError):
        same = False
    if force or not same:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "plan.json", record)


class _Build:
    """The steps of one preparation, sharing its plan, settings and work folder."""

    def __init__(self, source, plan, settings, work, root, workers, quiet, given) -> None:
        self.source: TextSource = source
        self.plan: Plan = plan
        self.settings: dict[str, Any] = settings
        self.work: Path = work
        self.root: Path = root
        self.workers: int = workers
        self.quiet: bool = quiet
        self.given: Tokenizer | None = given
        self.timings: dict[str, float] = {}
        self.encoded: dict[str, int] = {}
        """What this run encoded (units done before it not counted): bytes, tokens, processes."""

    def tokenizer(self) -> str:
        """The path of the tokenizer in the work folder (made once: every part uses the same)."""
        path = self.work / "tokenizer.json"
        if path.is_file():
            return str(path)
        start = time.perf_counter()
        tokenizer = self.given or fit_tokenizer(
            self.settings["tokenizer"],
            self.settings["vocab_size"],
            self.plan,
            data_dir=self.root,
            val_fraction=self.settings["val_fraction"] or 0.0,
            sample_chars=self.settings["tokenizer_sample_bytes"] or 0,
            workers=self.workers,
            quiet=self.quiet,
        )
        tokenizer.save(path)
        self.timings["tokenizer_s"] = time.perf_counter() - start
        return str(path)

    def encode(self, tokenizer_path: str, part: tuple[int, int] | None) -> None:
        """Encode the units not done yet (those of ``part`` only, when given)."""
        tokenizer = load_tokenizer(tokenizer_path)
        units = self.plan.units if part is None else part_of(self.plan.units, part)
        todo = [u for u in units if not unit_files(self.work, u.index)["done"].is_file()]
        sha256 = sha256_file(Path(tokenizer_path))
        settings = EncodeSettings(
            tokenizer_path=tokenizer_path,
            tokenizer_sha256=sha256,
            dtype=token_dtype(tokenizer.vocab_size).str,
            val_fraction=self.settings["val_fraction"] or 0.0,
            work=str(self.work),
            fast_bpe=self._use_fast_bpe(tokenizer, tokenizer_path, sha256),
        )
        total = sum(u.bytes for u in todo)
        start, tokens = time.perf_counter(), [0]
        bar = tqdm(
            total=total, desc="encode", unit="B", unit_scale=True, disable=self.quiet, dynamic_ncols=True
        )

        def done(unit, counts) -> None:
            if "disagreed" in counts["encoder"]:
                print(
                    f"note: tiktoken and tokenizers gave different ids in {unit.read.path}; "
                    "encoding again with tokenizers (slower) where they did",
                    file=sys.stderr,
                )
            tokens[0] += counts["train"]["tokens"] + counts["val"]["tokens"]
            bar.update(unit.bytes)
            bar.set_postfix_str(f"{tokens[0] / max(time.perf_counter() - start, 1e-9) / 1e6:.2f}M tok/s")

        with bar:
            run_units(encode_unit, todo, self.workers, settings, on_done=done)
        self.timings["encode_s"] = time.perf_counter() - start
        self.encoded = {"bytes": total, "tokens": tokens[0], "processes": min(self.workers, len(todo))}
        if part is not None and not self.quiet:
            print(
                f"part {part[0]}/{part[1]}: {len(units)} of {len(self.plan.units)} units encoded in "
                f"{self.work}; when every part's units are there, run the command without --part",
                file=sys.stderr,
            )

    def _use_fast_bpe(self, tokenizer: Tokenizer, tokenizer_path: str, sha256: str) -> bool:
        if not isinstance(tokenizer, BPETokenizer) or self.source.total_bytes() < FAST_BPE_MIN_BYTES:
            return False
        available = fast_bpe_available(tokenizer_path, sha256)
        if not available and not self.quiet:
            print(
                "BPE encoding with tokenizers; `pip install tiktoken` makes it about 3x faster "
                "(same ids, checked)",
                file=sys.stderr,
            )
        return available

    def assemble(self, folder: Path, tokenizer_path: str) -> dict[str, Any]:
        """Concatenate the unit files into shards in ``folder``; write ``meta.json``; the meta."""
        start = time.perf_counter()
        missing = [u.index for u in self.plan.units if not unit_files(self.work, u.index)["done"].is_file()]
        if missing:  # a part's units were not copied in
            raise _WorkIncomplete(
                f"{len(missing)} work units are missing from {self.work} (the first: {missing[0]})"
            )
        counts = [json.loads(unit_files(self.work, u.index)["done"].read_text()) for u in self.plan.units]
        sha256 = sha256_file(Path(tokenizer_path))
        strays = [u.index for u, c in zip(self.plan.units, counts, strict=True) if c["tokenizer"] != sha256]
        if strays:  # a part whose machine trained, or was given, another tokenizer
            raise _WorkIncomplete(
                f"{len(strays)} work units in {self.work} (the first: {strays[0]}) were encoded with "
                f"another tokenizer than {tokenizer_path}; give every part the same --tokenizer file"
            )
        tokenizer = load_tokenizer(tokenizer_path)
        tokenizer.save(folder / "tokenizer.json")
        dtype = token_dtype(tokenizer.vocab_size)
        splits = {
            side: self._write_split(folder, side, dtype, tokenizer.eos_token_id, counts)
            for side in ("train", "val")
        }
        for side, other in (("val", "train"), ("train", "val")):
            if splits[side]["tokens"] == 0:
                raise DataError(self._empty_split_message(side, splits[other]["documents"]))
        self.timings["assemble_s"] = time.perf_counter() - start
        bad = {"count": sum(c["bad_records"]["count"] for c in counts)}
        bad["first"] = next((c["bad_records"]["first"] for c in counts if c["bad_records"]["first"]), None)
        if bad["count"] and not self.quiet:
            print(f"note: skipped {bad['count']} bad record(s); the first: {bad['first']}", file=sys.stderr)
        meta = {
            "format": PREPARED_FORMAT,
            "dataset": self.source.name,
            "source": self._source_record(splits),
            "tokenizer": {**tokenizer.identity(), "eos_token_id": tokenizer.eos_token_id},
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.str,
            "train_tokens": splits["train"]["tokens"],
            "val_tokens": splits["val"]["tokens"],
            "splits": splits,
            "split": self._split_record(),
            "settings": self.settings,
            "units": len(self.plan.units),
            "encoder": "; ".join(sorted({c["encoder"] for c in counts})),
            "bad_records": bad,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "encoded": self.encoded,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(folder / "meta.json", meta)
        return meta

    def _write_split(self, folder: Path, side: str, dtype: np.dtype, eot: int | None, counts: list) -> dict:
        writer = ShardWriter(folder / side, dtype, self.settings["shard_tokens"], eot=eot)
        try:
            for unit in self.plan.units:
                tokens = open_tokens(unit_files(self.work, unit.index)[side], dtype)
                for first in range(0, len(tokens), COPY_TOKENS):
                    writer.write(tokens[first : first + COPY_TOKENS])
            shards = writer.close()
        except BaseException:
            writer.abort()
            raise
        return {
            "tokens": writer.tokens,
            "documents": sum(c[side]["documents"] for c in counts),
            "characters": sum(c[side]["characters"] for c in counts),
            "shards": shards,
        }

    def _empty_split_message(self, side: str, other_documents: int) -> str:
        if self.plan.single_document:
            return f"--dataset {self.source.location} is too small: the {side} split came out empty"
        return (
            f"the {side} split of {self.source.location} came out empty ({other_documents} documents went "
            f"to the other): with few documents, name the validation files with --val_files GLOB"
            + (" or raise --val_fraction" if self.settings["val_fraction"] else "")
        )

    def _split_record(self) -> dict[str, Any]:
        if self.settings["val_files"] is not None:
            method = f"by files: those matching {self.settings['val_files']!r} are val"
        elif self.plan.single_document:
            method = "one document: the last val_fraction of its text is val, cut at a line break"
        elif all(u.side is not None for u in self.plan.units):
            method = "by files: the ceil(val_fraction * files) whose path hashes lowest are val"
        else:
            method = "by documents: those whose text hashes below val_fraction are val"
        return {
            "method": method,
            "val_fraction": self.settings["val_fraction"],
            "val_files": self.settings["val_files"],
        }

    def _source_record(self, splits: dict[str, Any]) -> dict[str, Any]:
        files = self.source.files
        hashes = [self.source.known_sha256] if self.source.known_sha256 else [file_sha256(f) for f in files]
        combined = hashes[0] if self.source.known_sha256 else combined_sha256(files, hashes)
        return {
            "kind": self.source.kind,
            "location": str(self.source.location),
            "sha256": combined,
            "file_sha256": hashes,
            "bytes": self.source.total_bytes(),
            "characters": splits["train"]["characters"] + splits["val"]["characters"],
            "documents": splits["train"]["documents"] + splits["val"]["documents"],
            "fingerprint": self.source.fingerprint(),
        }


def _check_tokenizer_kind(tokenizer: str) -> str:
    if tokenizer not in TOKENIZER_KINDS:
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of: {', '.join(TOKENIZER_KINDS)}")
    return tokenizer


def _check_val_fraction(val_fraction: float) -> float:
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        raise DataError(f"--val_fraction must be a number between 0 and 1, got {val_fraction!r}") from None
    if not 0.0 < value < 1.0:
        raise DataError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}; try 0.1")
    return value
