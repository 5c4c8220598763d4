"""Benchmark: data preparation speed and memory on a large corpus (not a test).

Builds its own corpus in a temporary folder (Python standard-library sources plus tiny
Shakespeare, repeated to 50 MB and 200 MB; nothing is written into the checkout), then prepares it
with ``char`` and with a 10k byte-level ``bpe`` vocabulary, each in a fresh child process, and
reports:

- MB/s end to end, and per phase from ``meta.json`` (scan, BPE training, encoding);
- peak RSS of the child process (``os.wait4``), to show memory does not grow with the corpus.

Goals on a 2-core machine: char >= 50 MB/s, BPE encoding >= 8 MB/s, peak RSS < 1.5 GB at 200 MB.

    python benchmarks/prepare_data.py                      # 50 and 200 MB, char and bpe 10k
    python benchmarks/prepare_data.py --sizes 20 --tokenizers char
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

REPO_ROOT = Path(__file__).resolve().parents[1]
GOALS = {"char_mb_s": 50.0, "bpe_encode_mb_s": 8.0, "peak_rss_mb": 1536.0}

CHILD = """
import json, sys, time
from nima.data import prepare
corpus, tokenizer, vocab, data_dir = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
start = time.perf_counter()
data = prepare(corpus, tokenizer, vocab_size=int(vocab) if vocab != "-" else None, data_dir=data_dir,
               quiet=True, force=True)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "timings": data.meta["timings"], "train_tokens": data.train_tokens,
                  "val_tokens": data.val_tokens, "vocab_size": data.tokenizer.vocab_size}))
"""


def find_tiny_shakespeare() -> Path | None:
    candidates = [
        os.environ.get("NIMA_DATA_MIRROR"),
        os.environ.get("NIMA_DATA_DIR"),
        str(REPO_ROOT.parent / "shared" / "data"),
        str(REPO_ROOT / "experiments" / "data"),
    ]
    for root in filter(None, candidates):
        path = Path(root) / "tiny_shakespeare" / "input.txt"
        if path.is_file():
            return path
    return None


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


def run_child(corpus: Path, tokenizer: str, vocab: int | None, data_dir: Path) -> dict:
    """Prepare in a fresh process; return its report plus the child's peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-c", CHILD, str(corpus), tokenizer, str(vocab) if vocab else "-", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"preparation failed ({tokenizer}, {corpus}):\n{err.decode()}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    report["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200], help="corpus sizes in MB")
    parser.add_argument("--tokenizers", nargs="+", default=["char", "bpe"], choices=["char", "byte", "bpe"])
    parser.add_argument("--vocab_size", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    seeds = seed_texts()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nima-bench-") as tmp:
        for size in args.sizes:
            corpus = Path(tmp) / f"corpus_{size}mb.txt"
            nbytes = build_corpus(corpus, size, seeds)
            for tokenizer in args.tokenizers:
                vocab = args.vocab_size if tokenizer == "bpe" else None
                started = time.perf_counter()
                report = run_child(corpus, tokenizer, vocab, Path(tmp) / "data")
                t = report["timings"]
                mb = nbytes / 1e6
                row = {
                    "size_mb": round(mb, 1),
                    "tokenizer": tokenizer if vocab is None else f"bpe-{vocab}",
                    "end_to_end_mb_s": round(mb / report["wall_s"], 2),
                    "scan_mb_s": round(mb / max(t["scan_s"], 1e-9), 1),
                    "tokenizer_train_s": round(t["tokenizer_s"], 1),
                    "encode_mb_s": round(mb / max(t["encode_s"], 1e-9), 2),
                    "peak_rss_mb": round(report["peak_rss_mb"]),
                    "tokens": report["train_tokens"] + report["val_tokens"],
                    "process_s": round(time.perf_counter() - started, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                for split in ("train.bin", "val.bin"):  # keep the temp folder small
                    for path in (Path(tmp) / "data").rglob(split):
                        path.unlink()
            corpus.unlink()

    print("\n| corpus | tokenizer | end-to-end MB/s | encode MB/s | BPE training s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size_mb']:.0f} MB | {r['tokenizer']} | {r['end_to_end_mb_s']} | {r['encode_mb_s']} | "
            f"{r['tokenizer_train_s'] if r['tokenizer'].startswith('bpe') else '-'} | {r['peak_rss_mb']} |"
        )
    print("\nratios to the goals (>= 1.0 meets the goal):")
    for r in rows:
        speed = (
            r["end_to_end_mb_s"] / GOALS["char_mb_s"]
            if r["tokenizer"] == "char"
            else r["encode_mb_s"] / GOALS["bpe_encode_mb_s"]
        )
        memory = GOALS["peak_rss_mb"] / r["peak_rss_mb"]
        print(f"  {r['size_mb']:.0f} MB {r['tokenizer']}: speed {speed:.2f}, memory {memory:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
