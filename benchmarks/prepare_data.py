"""Benchmark: data preparation speed and memory on a large corpus (not a test).

Builds its own corpus in a temporary folder (Python standard-library sources plus tiny
Shakespeare, repeated to 50 MB and 200 MB; nothing is written into the checkout), then prepares it
with ``char`` and with a 10k byte-level ``bpe`` vocabulary, each in a fresh child process, and
reports:

- MB/s end to end, and per phase from ``meta.json`` (BPE training, encoding; assembling the
  shards in seconds);
- MB per CPU-second of the whole child process (start-up, BPE training and its encoding
  processes included; from ``os.wait4``): on a shared machine wall-clock speed depends on the
  other jobs, CPU time less;
- which BPE encoder made the ids (``tiktoken`` when installed, checked; else ``tokenizers``);
  ``--bpe_encoders auto tokenizers`` runs both, to print the speed ratio;
- peak RSS of the child process (``os.wait4``), to show memory does not grow with the corpus;
- the load average before and after each run, and the date.

Goals on a 2-core machine: char >= 50 MB/s, BPE encoding >= 8 MB/s, peak RSS < 1.5 GB at 200 MB.

    python benchmarks/prepare_data.py                      # 50 and 200 MB, char and bpe 10k
    python benchmarks/prepare_data.py --sizes 20 --tokenizers char
    python benchmarks/prepare_data.py --sizes 10 --tokenizers bpe --bpe_encoders auto tokenizers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from common import ROOT, find_tiny_shakespeare, machine, print_table, utc_now

GOALS = {"char_mb_s": 50.0, "bpe_encode_mb_s": 8.0, "peak_rss_mb": 1536.0}

CHILD = """
import json, sys, time
corpus, tokenizer, vocab, data_dir, bpe_encoder = sys.argv[1:6]
if bpe_encoder == "tokenizers":
    sys.modules["tiktoken"] = None  # as if tiktoken were not installed
from nima.data import prepare
start = time.perf_counter()
data = prepare(corpus, tokenizer, vocab_size=int(vocab) if vocab != "-" else None, data_dir=data_dir,
               quiet=True, force=True)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "timings": data.meta["timings"], "train_tokens": data.train_tokens,
                  "val_tokens": data.val_tokens, "vocab_size": data.tokenizer.vocab_size,
                  "encoder": data.meta["encoder"]}))
"""


def seed_texts() -> list[bytes]:
    """Standard-library sources (UTF-8 only) and tiny Shakespeare, as the raw material."""
    texts = []
    shakespeare = find_tiny_shakespeare()
    if shakespeare is not None:
        texts.append(shakespeare.read_bytes())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or total > 40 << 20:
            continue
        try:
            data = path.read_bytes()
            data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(data)
        total += len(data)
    return texts


def build_corpus(path: Path, size_mb: int, seeds: list[bytes]) -> int:
    """Write about ``size_mb`` MB by repeating the seed texts, streaming (no big string in memory)."""
    target = size_mb * 1_000_000
    written = 0
    with open(path, "wb") as f:
        while written < target:
            for text in seeds:
                f.write(text)
                f.write(b"\n")
                written += len(text) + 1
                if written >= target:
                    break
    return written


def run_child(corpus: Path, tokenizer: str, vocab: int | None, data_dir: Path, bpe_encoder: str) -> dict:
    """Prepare in a fresh process; return its report plus the child's peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    vocab_arg = str(vocab) if vocab else "-"
    cmd = [sys.executable, "-c", CHILD, str(corpus), tokenizer, vocab_arg, str(data_dir), bpe_encoder]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"preparation failed ({tokenizer}, {corpus}):\n{err.decode()}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    report["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    report["cpu_s"] = usage.ru_utime + usage.ru_stime
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200], help="corpus sizes in MB")
    parser.add_argument("--tokenizers", nargs="+", default=["char", "bpe"], choices=["char", "byte", "bpe"])
    parser.add_argument("--vocab_size", type=int, default=10_000)
    parser.add_argument(
        "--bpe_encoders",
        nargs="+",
        default=["auto"],
        choices=["auto", "tokenizers"],
        help="auto: tiktoken when installed (checked), else tokenizers; tokenizers: force it",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}, python {sys.version.split()[0]}, {utc_now()}")
    seeds = seed_texts()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nima-bench-") as tmp:
        for size in args.sizes:
            corpus = Path(tmp) / f"corpus_{size}mb.txt"
            nbytes = build_corpus(corpus, size, seeds)
            runs = [
                (tokenizer, encoder)
                for tokenizer in args.tokenizers
                for encoder in (args.bpe_encoders if tokenizer == "bpe" else ["-"])
            ]
            for tokenizer, bpe_encoder in runs:
                vocab = args.vocab_size if tokenizer == "bpe" else None
                load_before = os.getloadavg()[0]
                started = time.perf_counter()
                report = run_child(corpus, tokenizer, vocab, Path(tmp) / "data", bpe_encoder)
                t = report["timings"]
                mb = nbytes / 1e6
                row = {
                    "size_mb": round(mb, 1),
                    "tokenizer": tokenizer if vocab is None else f"bpe-{vocab}",
                    "encoder": report["encoder"],
                    "end_to_end_mb_s": round(mb / report["wall_s"], 2),
                    "assemble_s": round(t.get("assemble_s", 0.0), 1),
                    "tokenizer_train_s": round(t["tokenizer_s"], 1),
                    "encode_mb_s": round(mb / max(t["encode_s"], 1e-9), 2),
                    "mb_per_cpu_s": round(mb / max(report["cpu_s"], 1e-9), 2),
                    "peak_rss_mb": round(report["peak_rss_mb"]),
                    "tokens": report["train_tokens"] + report["val_tokens"],
                    "process_s": round(time.perf_counter() - started, 1),
                    "load_before": round(load_before, 1),
                    "load_after": round(os.getloadavg()[0], 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                for split in ("train.bin", "val.bin"):  # keep the temp folder small
                    for path in (Path(tmp) / "data").rglob(split):
                        path.unlink()
            corpus.unlink()

    header = ["corpus", "tokenizer", "encoder", "end-to-end MB/s", "encode MB/s", "MB/CPU-s (whole run)",
              "BPE training s", "peak RSS MB", "load before/after"]  # fmt: skip
    table = []
    for r in rows:
        training = r["tokenizer_train_s"] if r["tokenizer"].startswith("bpe") else "-"
        encoder = r["encoder"].split(" ")[0]
        table.append([f"{r['size_mb']:.0f} MB", r["tokenizer"], encoder, r["end_to_end_mb_s"],
                      r["encode_mb_s"], r["mb_per_cpu_s"], training, r["peak_rss_mb"],
                      f"{r['load_before']} / {r['load_after']}"])  # fmt: skip
    print_table(header, table)
    print("\nratios to the goals (>= 1.0 meets the goal):")
    for r in rows:
        speed = (
            r["end_to_end_mb_s"] / GOALS["char_mb_s"]
            if r["tokenizer"] == "char"
            else r["encode_mb_s"] / GOALS["bpe_encode_mb_s"]
        )
        memory = GOALS["peak_rss_mb"] / r["peak_rss_mb"]
        name = f"{r['size_mb']:.0f} MB {r['tokenizer']} ({r['encoder'].split(' ')[0]})"
        print(f"  {name}: speed {speed:.2f}, memory {memory:.2f}")
    bpe_rows = {
        (r["size_mb"], r["encoder"].split(" ")[0]): r for r in rows if r["tokenizer"].startswith("bpe")
    }
    for (size, encoder), r in bpe_rows.items():
        base = bpe_rows.get((size, "tokenizers"))
        if encoder != "tokenizers" and base is not None:
            print(
                f"  {size:.0f} MB BPE encoding, {encoder} / tokenizers: "
                f"{r['encode_mb_s'] / base['encode_mb_s']:.2f}x wall, "
                f"{r['mb_per_cpu_s'] / base['mb_per_cpu_s']:.2f}x per CPU-second (whole run)"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
