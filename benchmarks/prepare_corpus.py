"""Benchmark: preparing a corpus bigger than memory, on one core and on all of them (not a test).

Generates, deterministically from ``--seed``, two corpora of many files of mixed formats (.txt,
.md, .jsonl, .jsonl.gz, .jsonl.zst, .parquet with a ``text`` column, in nested folders): one of
``--size_mb`` and one of ``--small_mb`` of UTF-8 text. Documents (100 B to 50 KB, a few
40-64 MB ones that Nima cuts into several work units) are slices of tiny Shakespeare and of the
Python standard library's sources, in random order, so BPE has real work. Then:

1. Tokenizer: byte-level BPE of ``--vocab_size`` (50257, GPT-2's size; GPT-2's own files are not
   available offline) trained once with Nima's trainer (``BPETokenizer.train``, what
   ``prepare(tokenizer="bpe")`` calls) on ``--sample_mb`` of the small corpus' documents. The
   timed runs are given its ``tokenizer.json``: they measure reading, encoding and shard writing,
   not tokenizer training (which is timed and printed on its own).
2. Preparation: ``nima.data.prepare(corpus, tokenizer.json, workers=W, force=True, quiet=True)``
   with W = 1 and W = every core, each in a fresh child process, ``--rounds`` rounds of the big
   corpus in alternating order (the machine is shared: pairs of runs close in time are compared),
   then one round of the small one. Per run: end-to-end wall time of ``prepare()`` (text MB/s,
   tokens/s), its phase timings from ``meta.json``, the CPU time of the child and its workers,
   and two peaks of memory:

   - *largest process*: the largest peak RSS (``VmHWM``) of any one process of the child's tree
     (the child, its encoding workers, multiprocessing's helper). Not ``ru_maxrss`` from
     ``wait4``: Linux carries the peak of the forking parent over into the child's, and this
     parent holds the BPE trainer's memory;
   - *tree*: the largest sum of the RSS of every process of the tree at one time.

   Both are sampled every 0.1 s from ``/proc`` (Linux only); a peak in the last 0.1 s of a
   process' life can be missed. RSS counts the pages of shared libraries in every process that
   maps them, so the tree's sum is an upper bound.

   Speed-up = t(1 worker) / t(N workers) per round; efficiency = speed-up / N. The sha256 of every
   shard and the tokenizer must be the same whatever the number of workers.
3. tiktoken's own speed: the same documents (read from the files untimed) encoded one by one in
   one thread with ``encode_ordinary`` of the ``tiktoken.Encoding`` that Nima builds from the
   tokenizer (``FastBPE(tokenizer)._encoding``); only the encode calls are timed. Its token count
   must equal Nima's minus one end-of-text id per document.
4. Loader: ``TokenWindowDataset.from_prepared(data, "train", T)`` + ``create_dataloader`` with
   Nima's ``DataCollator`` (what a training run builds, ``num_workers=0``) over the big prepared
   corpus (its pages in the page cache: it has just been written), timed over ``--loader_batches``
   batches at (a) the base config's shape (``configs/base_model.yaml``: batch x max_seq_len) and
   (b) the GPT-2 124M recipe's micro-batch (16 x 1024). It is compared with what the model
   consumes: (a) a plain forward + backward + AdamW step of Nima's GPT at the base config (with the
   corpus' vocabulary, as a run sets it), measured here on ``--model_batch`` sequences a step;
   (b) ~1.2M tokens/s, a generous estimate for 124M on one H100 in bf16, not measured here.

    python benchmarks/prepare_corpus.py                        # 1 GB and 200 MB (~20 min, 2 cores)
    python benchmarks/prepare_corpus.py --size_mb 100 --small_mb 30 --rounds 1   # a quick look
    python benchmarks/prepare_corpus.py --out /work/bench-corpus --keep          # keep it all

Nothing is written into the checkout. ``--out DIR`` puts the corpora, the tokenizer and the
prepared data there (a corpus already there with the same size and seed is used again); without
it a temporary folder is used. Without ``--keep`` everything written is deleted at the end.
Prints a JSON line per run and, last, the tables.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from common import ROOT, find_text, machine, print_table, summary, utc_now

MB = 1_000_000
FORMATS = {"txt": 0.20, "md": 0.10, "jsonl": 0.20, "jsonl.gz": 0.15, "jsonl.zst": 0.15, "parquet": 0.20}
"""Each format's share of the files."""
DOC_CHARS = (100, 50_000)
"""Document length, log-uniform."""
FILE_BYTES = (256 << 10, 6 << 20)
"""Text per ordinary file, log-uniform: hundreds of files per GB."""
BIG_FILE_BYTES = (40 << 20, 64 << 20)
BIG_FILE_EVERY = 256 * MB
"""One big file (.txt or .jsonl, cut into several work units by Nima) per this much text."""
SHAKESPEARE_SHARE = 0.35
"""Share of documents cut from tiny Shakespeare; the rest from standard-library sources."""
MANIFEST = ".manifest.json"
"""The generated corpus' description (a hidden file: Nima skips it)."""
H100_124M_TOKENS_S = 1.2e6
"""Training tokens/s of GPT-2 124M on one H100 in bf16: a generous estimate, not measured here."""
RECIPE_124M_SHAPE = (16, 1024)

CHILD = """
import json, sys, time
corpus, tokenizer, data_dir, workers = sys.argv[1:5]
from nima.data import prepare
start = time.perf_counter()
data = prepare(corpus, tokenizer, data_dir=data_dir, workers=int(workers), force=True, quiet=True)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "path": str(data.path), "timings": data.meta["timings"],
                  "tokens": data.train_tokens + data.val_tokens, "units": data.meta["units"],
                  "documents": data.meta["source"]["documents"], "encoder": data.meta["encoder"]}))
"""


# ---------------------------------------------------------------------------------- the corpus


def material() -> tuple[str, str]:
    """tiny Shakespeare, and the standard library's Python sources joined (UTF-8 files only)."""
    shakespeare = find_text(None).read_bytes().decode("utf-8")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = []
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            sources.append(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return shakespeare, "\n\n".join(sources)


def documents(rng: random.Random, shakespeare: str, code: str) -> Iterator[str]:
    """Endless documents: slices of the material, from a line start, of log-uniform length."""
    low, high = math.log(DOC_CHARS[0]), math.log(DOC_CHARS[1])
    while True:
        source = shakespeare if rng.random() < SHAKESPEARE_SHARE else code
        length = int(math.exp(rng.uniform(low, high)))
        start = rng.randrange(max(1, len(source) - length))
        line = source.find("\n", start, start + 200)
        start = line + 1 if line >= 0 else start
        text = source[start : start + length].strip()
        if text:
            yield text


def write_file(path: Path, fmt: str, docs: list[str]) -> int:
    """Write ``docs`` as a file of format ``fmt``; returns the UTF-8 bytes of text Nima reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("txt", "md"):  # one document for Nima: the whole file
        if fmt == "md":
            docs = [f"## Section {i}\n\n{doc}" for i, doc in enumerate(docs)]
        data = "\n\n".join(docs).encode("utf-8")
        path.write_bytes(data)
        return len(data)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"id": list(range(len(docs))), "text": docs})
        pq.write_table(table, path, row_group_size=512, compression="snappy")
        return sum(len(doc.encode("utf-8")) for doc in docs)
    lines = "".join(
        json.dumps({"id": i, "text": doc}, ensure_ascii=False) + "\n" for i, doc in enumerate(docs)
    )
    data = lines.encode("utf-8")
    if fmt == "jsonl.gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as f:
            f.write(data)
    elif fmt == "jsonl.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    else:
        path.write_bytes(data)
    return sum(len(doc.encode("utf-8")) for doc in docs)


def generate_corpus(folder: Path, size_mb: int, seed: int, shakespeare: str, code: str) -> dict:
    """A corpus of ``size_mb`` MB of text in ``folder`` (used again when its manifest matches)."""
    wanted = {"size_mb": size_mb, "seed": seed, "formats": FORMATS, "doc_chars": list(DOC_CHARS)}
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest["settings"] == wanted:
            return manifest
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    rng = random.Random(seed)
    docs = documents(random.Random(seed + 1), shakespeare, code)
    target, text_bytes, files, by_format = size_mb * MB, 0, 0, {}
    next_big, big_files = BIG_FILE_EVERY // 2, 0
    started = time.perf_counter()
    while text_bytes < target:
        big = text_bytes >= next_big
        if big:
            next_big += BIG_FILE_EVERY
            fmt = ("txt", "jsonl")[big_files % 2]  # the small corpus has one big file: a .txt
            big_files += 1
            budget = rng.randint(*BIG_FILE_BYTES)
        else:
            fmt = rng.choices(list(FORMATS), weights=list(FORMATS.values()))[0]
            budget = int(math.exp(rng.uniform(math.log(FILE_BYTES[0]), math.log(FILE_BYTES[1]))))
        budget = min(budget, max(target - text_bytes, DOC_CHARS[1]))
        chosen, chars = [], 0
        while chars < budget:
            chosen.append(next(docs))
            chars += len(chosen[-1])
        # nested folders: part/format-ish/sub, so that the corpus is a tree, not one flat folder
        path = folder / f"part{files % 5}" / f"group{rng.randrange(3)}" / f"file{files:05d}.{fmt}"
        if rng.random() < 0.3:
            path = path.parent / f"deep{rng.randrange(2)}" / path.name
        written = write_file(path, fmt, chosen)
        text_bytes += written
        files += 1
        entry = by_format.setdefault(fmt, {"files": 0, "text_bytes": 0, "documents": 0})
        entry["files"] += 1
        entry["text_bytes"] += written
        entry["documents"] += 1 if fmt in ("txt", "md") else len(chosen)
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    manifest = {
        "settings": wanted,
        "text_bytes": text_bytes,
        "disk_bytes": disk,
        "files": files,
        "by_format": by_format,
        "generate_s": round(time.perf_counter() - started, 1),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def corpus_files(folder: Path) -> list[Path]:
    """The corpus' files in Nima's order (sorted paths; hidden files skipped)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def file_documents(path: Path) -> Iterator[str]:
    """The documents of one corpus file, as Nima reads them (a text file is one document)."""
    name = path.name
    if name.endswith((".txt", ".md")):
        yield path.read_bytes().decode("utf-8")
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from pq.read_table(path, columns=["text"]).column("text").to_pylist()
    else:
        raw = path.read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        elif name.endswith(".zst"):
            import zstandard

            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        for line in raw.decode("utf-8").splitlines():
            if line.strip():
                yield json.loads(line)["text"]


# ---------------------------------------------------------------------------------- tokenizer


def train_tokenizer(
    folder: Path, corpus: Path, vocab_size: int, sample_mb: int, seed: int
) -> tuple[Path, dict]:
    """A byte-level BPE trained on ``sample_mb`` of ``corpus``' documents, saved in ``folder``
    (used again when it was trained with the same settings)."""
    from nima.data.chunking import iter_pieces
    from nima.data.tokenizer import BPETokenizer

    path = folder / "tokenizer.json"
    wanted = {"vocab_size": vocab_size, "sample_mb": sample_mb, "seed": seed, "corpus": str(corpus)}
    try:
        record = json.loads((folder / "trained.json").read_text())
        if record["settings"] == wanted and path.is_file():
            return path, record
    except (OSError, ValueError, KeyError):
        pass
    total = json.loads((corpus / MANIFEST).read_text())["text_bytes"]
    keep = min(1.0, sample_mb * MB / total)
    rng = random.Random(seed + 2)

    def sample() -> Iterator[str]:  # ~64 KiB pieces taken evenly over the corpus
        for file in corpus_files(corpus):
            for doc in file_documents(file):
                for piece in iter_pieces([doc], piece_chars=1 << 16):
                    if rng.random() < keep:
                        yield piece

    start = time.perf_counter()
    tokenizer = BPETokenizer.train(sample(), vocab_size)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
    record = {"settings": wanted, "train_s": round(seconds, 1), "vocab_size": tokenizer.vocab_size}
    (folder / "trained.json").write_text(json.dumps(record))
    return path, record


# ---------------------------------------------------------------------------------- preparation runs


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (every thread's), from ``/proc``."""
    found = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task.name}/children") as f:
                    found.extend(int(x) for x in f.read().split())
            except OSError:
                continue
    except OSError:
        pass
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB: its resident memory now and its peak so far."""
    found = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(maxsplit=1)[0]
                if key in found:
                    found[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return found["VmRSS:"], found["VmHWM:"]


class TreeMemory:
    """Samples a process and all its descendants every ``every_s`` until stopped: the peak of
    their summed RSS (``tree``) and the largest peak RSS (VmHWM) of any one of them."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid, self.every_s = pid, every_s
        self.tree_kib, self.largest_kib, self.most_processes = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            pids, queue = [], [self.pid]
            while queue:
                pid = queue.pop()
                pids.append(pid)
                queue.extend(children(pid))
            sizes = [memory_kib(p) for p in pids]
            self.tree_kib = max(self.tree_kib, sum(rss for rss, _ in sizes))
            self.largest_kib = max(self.largest_kib, *(hwm for _, hwm in sizes))
            self.most_processes = max(self.most_processes, len(pids))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_prepare(corpus: Path, tokenizer: Path, data_dir: Path, workers: int) -> dict:
    """``prepare`` in a fresh child process: its report, CPU time, memory peaks and output hash."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", CHILD, str(corpus), str(tokenizer), str(data_dir), str(workers)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT)
        memory = TreeMemory(proc.pid)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: the CPU time of the child and its workers
        memory.stop()
        stderr.seek(0)
        err = stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"preparation failed ({workers} workers, {corpus}):\n{err.decode()}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    report.update(
        workers=workers,
        cpu_s=usage.ru_utime + usage.ru_stime,
        largest_process_mb=memory.largest_kib / 1024,
        tree_mb=memory.tree_kib / 1024,
        processes=memory.most_processes,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        sha256=output_sha256(Path(report["path"])),
        stderr=err.decode().strip()[-300:],
    )
    return report


def output_sha256(folder: Path) -> str:
    """One sha256 over the tokenizer and every shard (names and contents), in order."""
    digest = hashlib.sha256()
    shards = [*sorted((folder / "train").glob("*.bin")), *sorted((folder / "val").glob("*.bin"))]
    for path in [folder / "tokenizer.json", *shards]:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- tiktoken alone


def tiktoken_baseline(corpus: Path, tokenizer_path: Path) -> dict:
    """tiktoken's own single-thread speed on the corpus' documents (only the encode calls timed)."""
    from nima.data.chunking import iter_pieces
    from nima.data.fast_bpe import FastBPE
    from nima.data.tokenizer import load_tokenizer

    encoding = FastBPE(load_tokenizer(tokenizer_path))._encoding
    seconds, tokens, text_bytes, docs = 0.0, 0, 0, 0
    for file in corpus_files(corpus):
        for doc in file_documents(file):
            docs += 1
            text_bytes += len(doc.encode("utf-8"))
            # a 40-64 MB document in 1 MiB pieces cut where GPT-2's split cuts anyway: the same ids
            pieces = [doc] if len(doc) <= 1 << 20 else list(iter_pieces([doc], 1 << 20, 4 << 20))
            for piece in pieces:
                start = time.perf_counter()
                ids = encoding.encode_ordinary(piece)
                seconds += time.perf_counter() - start
                tokens += len(ids)
    return {"encode_s": seconds, "tokens": tokens, "text_bytes": text_bytes, "documents": docs}


# ---------------------------------------------------------------------------------- loader vs model


def loader_tokens_per_s(data, batch: int, seq: int, batches: int) -> float:
    """Tokens/s of a training loader (what ``build_loaders`` makes) over ``data``'s train split."""
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader

    dataset = TokenWindowDataset.from_prepared(data, "train", seq, seed=0)
    loader = create_dataloader(dataset, batch, collate_fn=DataCollator(data.tokenizer), shuffle=True, seed=0)
    iterator = iter(loader)
    for _ in range(5):  # the first batches map the shards and build the order
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch_ = next(iterator)
    seconds = time.perf_counter() - start
    assert batch_["input_ids"].shape == (batch, seq)
    return batches * batch * seq / seconds


def model_tokens_per_s(data, batch: int, steps: int) -> tuple[float, dict]:
    """Training tokens/s of Nima's GPT at the base config's shape (fp32, this CPU): forward,
    backward and an AdamW step on ``batch`` real sequences, after one untimed step."""
    import torch

    from nima.config.run import RunConfig
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader
    from nima.models import GPT

    run = RunConfig.from_yaml(ROOT / "configs" / "base_model.yaml")
    torch.manual_seed(0)
    model = GPT(replace(run.model, vocab_size=data.tokenizer.vocab_size))  # as a run sets it
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.training.learning_rate)
    seq = model.config.max_seq_len
    dataset = TokenWindowDataset.from_prepared(data, "train", seq, seed=0)
    loader = iter(create_dataloader(dataset, batch, collate_fn=DataCollator(data.tokenizer), seed=0))
    times = []
    for _ in range(steps + 1):
        b = next(loader)
        start = time.perf_counter()
        loss = model(b["input_ids"], b["labels"], return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    shape = {
        "batch": run.training.batch_size,
        "seq": seq,
        "measured_batch": batch,
        "threads": torch.get_num_threads(),
    }
    return batch * seq / statistics.median(times[1:]), shape


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size_mb", type=int, default=1024, help="the big corpus, MB of text (1024)")
    parser.add_argument("--small_mb", type=int, default=200, help="the small corpus, for memory (200)")
    parser.add_argument("--out", type=Path, default=None, help="where corpora and results go (a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora, tokenizer and prepared data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of (1 worker, N workers) on the big corpus"
    )
    parser.add_argument("--workers", type=int, default=None, help="N (every core)")
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--sample_mb", type=int, default=32, help="text the BPE is trained on")
    parser.add_argument("--loader_batches", type=int, default=300)
    parser.add_argument("--model_batch", type=int, default=4, help="sequences per measured model step")
    parser.add_argument("--model_steps", type=int, default=2, help="timed model steps (after 1 untimed)")
    parser.add_argument("--skip_baseline", action="store_true", help="no tiktoken-alone run")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or min(args.size_mb, args.small_mb) < 1 or args.size_mb == args.small_mb:
        parser.error("--rounds and the sizes must be at least 1, and --size_mb differ from --small_mb")
    from nima.data.stream_encoders import cpu_count

    workers = args.workers or cpu_count()
    print(f"machine: {machine()}, python {sys.version.split()[0]}, {utc_now()}", flush=True)
    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="nima-corpus-")) if temporary else args.out.resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"--out {out} is inside the checkout; choose a folder outside it")
    made = [out / "data"]
    results: dict = {"machine": machine(), "date": utc_now(), "runs": []}
    try:
        shakespeare, code = material()
        corpora = {}
        for label, size in (("big", args.size_mb), ("small", args.small_mb)):
            folder = out / f"corpus_{size}mb_seed{args.seed}"
            made.append(folder)
            manifest = generate_corpus(folder, size, args.seed, shakespeare, code)
            corpora[label] = (folder, manifest)
            print(json.dumps({"corpus": label, "path": str(folder), **manifest}), flush=True)
        del shakespeare, code
        made.append(out / "tokenizer")
        tokenizer, trained = train_tokenizer(
            out / "tokenizer", corpora["small"][0], args.vocab_size, args.sample_mb, args.seed
        )
        results["tokenizer"] = trained
        print(json.dumps({"tokenizer": str(tokenizer), **trained}), flush=True)

        def run(label: str, round_: int, w: int) -> dict:
            folder, manifest = corpora[label]
            report = run_prepare(folder, tokenizer, out / "data", w)
            mb = manifest["text_bytes"] / MB
            row = {
                "corpus": label,
                "text_mb": round(mb, 1),
                "round": round_,
                **{k: v for k, v in report.items() if k != "stderr"},
                "mb_s": mb / report["wall_s"],
                "tokens_s": report["tokens"] / report["wall_s"],
                "mb_per_cpu_s": mb / report["cpu_s"],
            }
            if report["stderr"]:
                row["stderr_tail"] = report["stderr"]
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            return row

        for r in range(args.rounds):
            for w in (1, workers) if r % 2 == 0 else (workers, 1):
                run("big", r, w)
        big_path = Path(results["runs"][-1]["path"])
        for w in (1, workers):
            run("small", 0, w)

        if not args.skip_baseline:
            base = tiktoken_baseline(corpora["big"][0], tokenizer)
            base["mb_s"] = base["text_bytes"] / MB / base["encode_s"]
            results["tiktoken"] = base
            print(json.dumps({"tiktoken_alone": base}), flush=True)

        from nima.data import load_prepared

        data = load_prepared(big_path)
        model_tps, model_shape = model_tokens_per_s(data, args.model_batch, args.model_steps)
        loader = {
            "base": loader_tokens_per_s(data, model_shape["batch"], model_shape["seq"], args.loader_batches),
            "124m": loader_tokens_per_s(data, *RECIPE_124M_SHAPE, args.loader_batches),
        }
        results["loader"] = {"tokens_s": loader, "model_tokens_s": model_tps, "model_shape": model_shape}
        print(json.dumps({"loader": results["loader"]}), flush=True)
        report(results, workers, corpora, args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        if not args.keep:
            for path in made:
                shutil.rmtree(path, ignore_errors=True)
            if temporary:
                shutil.rmtree(out, ignore_errors=True)
    return 0


def report(results: dict, workers: int, corpora: dict, args: argparse.Namespace) -> None:
    runs = results["runs"]
    big = corpora["big"][1]
    formats = ", ".join(f"{fmt} {v['files']}" for fmt, v in sorted(big["by_format"].items()))
    print(
        f"\nbig corpus: {big['text_bytes'] / MB:,.0f} MB of text in {big['files']} files "
        f"({formats}), {big['disk_bytes'] / MB:,.0f} MB on disk; BPE {results['tokenizer']['vocab_size']} "
        f"trained on {args.sample_mb} MB in {results['tokenizer']['train_s']} s (not in the runs below)"
    )
    header = ["corpus", "workers", "round", "wall s", "MB/s", "M tokens/s", "encode s", "assemble s",
              "MB per CPU-s", "largest process MB", "tree MB", "load before/after", "sha256"]  # fmt: skip
    rows = [
        [f"{r['text_mb']:,.0f} MB", r["workers"], r["round"], f"{r['wall_s']:.1f}", f"{r['mb_s']:.2f}",
         f"{r['tokens_s'] / 1e6:.2f}", r["timings"].get("encode_s"), r["timings"].get("assemble_s"),
         f"{r['mb_per_cpu_s']:.2f}", f"{r['largest_process_mb']:.0f}", f"{r['tree_mb']:.0f}",
         f"{r['load_before']:.1f} / {r['load_after']:.1f}", r["sha256"][:12]]
        for r in runs
    ]  # fmt: skip
    print_table(header, rows)

    def wall(label: str, w: int, round_: int | None = None) -> list[float]:
        return [
            r["wall_s"]
            for r in runs
            if r["corpus"] == label and r["workers"] == w and (round_ is None or r["round"] == round_)
        ]

    rounds = sorted({r["round"] for r in runs if r["corpus"] == "big"})
    speedups = [wall("big", 1, k)[0] / wall("big", workers, k)[0] for k in rounds]
    s = summary(speedups)
    print(
        f"\nspeed-up, {workers} workers against 1 (big corpus, per round): {s['median']:.2f}x "
        f"(rounds {', '.join(f'{x:.2f}' for x in speedups)}); efficiency {s['median'] / workers:.2f} "
        f"(goal >= 0.8)"
    )
    hashes = {r["sha256"] for r in runs if r["corpus"] == "big"}
    small_hashes = {r["sha256"] for r in runs if r["corpus"] == "small"}
    print(
        f"identical output whatever the workers: big {'yes' if len(hashes) == 1 else 'NO'} "
        f"({', '.join(h[:16] for h in sorted(hashes))}), small {'yes' if len(small_hashes) == 1 else 'NO'}"
    )
    for key, name in (("largest_process_mb", "largest process"), ("tree_mb", "whole tree")):
        for w in sorted({1, workers}):
            small = max(r[key] for r in runs if r["corpus"] == "small" and r["workers"] == w)
            large = max(r[key] for r in runs if r["corpus"] == "big" and r["workers"] == w)
            print(
                f"peak memory, {name}, {w} worker(s): {small:.0f} MB at {args.small_mb} MB, "
                f"{large:.0f} MB at {args.size_mb} MB ({large / small:.2f}x)"
            )
    base = results.get("tiktoken")
    one = statistics.median(r["mb_s"] for r in runs if r["corpus"] == "big" and r["workers"] == 1)
    if base:
        nima_tokens = runs[0]["tokens"] - runs[0]["documents"]
        tokens_s = base["tokens"] / base["encode_s"] / 1e6
        print(
            f"tiktoken alone, one thread: {base['mb_s']:.2f} MB/s ({tokens_s:.2f}M "
            f"tokens/s); Nima with 1 worker {one:.2f} MB/s = {one / base['mb_s']:.2f}x of it; tokens "
            f"{base['tokens']:,} (Nima's minus one end-of-text per document: {nima_tokens:,}, "
            f"{'equal' if nima_tokens == base['tokens'] else 'DIFFERENT'})"
        )
    loader = results["loader"]
    shape = loader["model_shape"]
    model = loader["model_tokens_s"]
    print_table(
        ["shape (batch x context)", "loader tokens/s", "model consumes tokens/s", "loader / model"],
        [
            [f"base config {shape['batch']} x {shape['seq']}", f"{loader['tokens_s']['base']:,.0f}",
             f"{model:,.0f} (measured: this CPU, fp32, {shape['measured_batch']} sequences a step)",
             f"{loader['tokens_s']['base'] / model:,.0f}x"],
            [f"GPT-2 124M recipe {RECIPE_124M_SHAPE[0]} x {RECIPE_124M_SHAPE[1]}",
             f"{loader['tokens_s']['124m']:,.0f}", f"{H100_124M_TOKENS_S:,.0f} (estimate: one H100, bf16)",
             f"{loader['tokens_s']['124m'] / H100_124M_TOKENS_S:,.1f}x"],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
