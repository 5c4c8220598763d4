#!/usr/bin/env python3
"""Load on ``nima serve``: one client alone, then N concurrent streaming clients, then a burst.

Writes a random-weight checkpoint in a temporary folder (default: the ``tiny`` preset's shape,
gpt2, 4 layers, d_model 128, context 256, with a 65-character tokenizer without an end-of-text
token, so that every answer has exactly ``--max-tokens`` tokens), starts ``nima serve`` on it as a
child process on a free loopback port, and drives it with asyncio clients that stream (server-sent
events; plain sockets, as light as wrk), all on this machine:

1. one client alone, ``--single-requests`` requests one after another: the baseline tokens/s;
2. for each N of ``--clients`` (default 8, 16 and 32), N clients at once, each sending
   ``--requests-per-client`` requests one after another: aggregate tokens/s and its ratio to the
   single client of the same round, time to the first token and time per token (p50/p95);
3. a burst of ``--burst`` requests sent at once (they queue for the ``--max-batch`` rows);
4. all of it again, ``--rounds`` times in all, so that memory shows whether it keeps growing.

Every request samples (temperature 0.8, top-p 0.95, its own seed). A request fails when its status
is not 200, its stream holds an error event or lacks ``[DONE]``, or it has fewer tokens than asked.
The server's resident memory (VmRSS) is read after the warm-up, after each round and after a
final idle second: it should stay flat. Everything is bounded: ``--time-limit`` seconds per phase.

Usage (from the checkout root):
    python benchmarks/serve_load.py                          # the recorded run
    python benchmarks/serve_load.py --clients 8 --burst 50 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, machine, utc_now

PROMPTS = ["ROMEO:", "JULIET:\nO Romeo", "First Citizen:\nBefore we proceed", "KING HENRY:", "Nurse:\nNow"]


def write_checkpoint(folder: Path, layers: int, d_model: int, heads: int, ctx: int) -> Path:
    """A random-weight checkpoint of the given shape with a 65-character tokenizer."""
    import torch

    from nima.checkpoint import atomic_save, make_checkpoint
    from nima.data.tokenizer import CharTokenizer
    from nima.models import ModelConfig, create_model

    torch.manual_seed(0)
    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's 65
    tok = CharTokenizer(chars)
    config = ModelConfig(
        vocab_size=tok.vocab_size,
        n_layers=layers,
        d_model=d_model,
        n_heads=heads,
        max_seq_len=ctx,
        dropout=0.0,
    )
    model = create_model(config).eval()
    tok_path = tok.save(folder / "tokenizer.json")
    identity = {**tok.identity(), "path": str(tok_path)}
    ckpt = make_checkpoint(model.state_dict(), config.to_dict(), identity, step=0, epoch=0)
    return atomic_save(ckpt, folder / "checkpoints" / "model.pt")


def start_server(checkpoint: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "nima.cli",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--port",
        "0",
        "--device",
        "cpu",
        "--max_batch",
        str(max_batch),
        "--threads",
        str(threads),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+) ", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, found.group(1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Result:
    ok: bool
    tokens: int = 0
    ttft: float = float("nan")
    """Seconds from sending the request to its first token."""
    per_token: float = float("nan")
    """Seconds between tokens after the first (the stream's pace)."""
    error: str = ""


@dataclass
class Phase:
    name: str
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results if r.ok)

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


async def one_request(url: str, prompt: str, max_tokens: int, seed: int) -> Result:
    """One streamed completion, over a plain asyncio connection: a load generator as light as
    wrk's (an HTTP library's per-chunk parsing would take the cores the server is measured on).
    The raw bytes are searched for what matters: a token's chunk, an error, the usage, [DONE]."""
    body = json.dumps(
        {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "top_p": 0.95,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    start = time.perf_counter()
    first = last = None
    tail = b""
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        status = await reader.readline()
        if b" 200 " not in status:
            return Result(
                False, error=f"{status.decode(errors='replace').strip()}: {(await reader.read())[-200:]!r}"
            )
        while data := await reader.read(1 << 16):
            if b'"finish_reason":null' in data:  # holds a token
                last = time.perf_counter()
                first = first or last
            if b'"error"' in data:
                return Result(False, error=data[-200:].decode(errors="replace"))
            tail = (tail + data)[-600:]
        writer.close()
    except OSError as err:
        return Result(False, error=f"{type(err).__name__}: {err}")
    done = b"data: [DONE]" in tail
    found = re.search(rb'"completion_tokens":(\d+)', tail)
    tokens = int(found.group(1)) if found else 0
    if not done or tokens != max_tokens or first is None:
        return Result(False, tokens=tokens, error=f"incomplete: done={done}, tokens={tokens}")
    per_token = (last - first) / (tokens - 1) if tokens > 1 else float("nan")
    return Result(True, tokens, first - start, per_token)


async def clients_phase(
    url: str, name: str, clients: int, per_client: int, max_tokens: int, limit: float
) -> Phase:
    """``clients`` clients at once, each sending ``per_client`` requests one after another."""
    phase = Phase(name)

    async def user(k: int) -> None:
        for j in range(per_client):
            seed = 1000 * k + j
            phase.results.append(await one_request(url, PROMPTS[seed % len(PROMPTS)], max_tokens, seed))

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(user(k) for k in range(clients))), limit)
    phase.seconds = time.perf_counter() - start
    return phase


def quantiles(values: list[float]) -> tuple[float, float]:
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), q[18]


def report(phase: Phase, single: float | None) -> dict:
    ok = [r for r in phase.results if r.ok]
    ttft50, ttft95 = quantiles([r.ttft for r in ok])
    tok50, tok95 = quantiles([r.per_token for r in ok])
    row = {
        "phase": phase.name,
        "requests": len(phase.results),
        "failed": phase.failed,
        "tokens": phase.tokens,
        "seconds": round(phase.seconds, 2),
        "tokens_per_s": round(phase.tokens_per_s, 1),
        "vs_single": round(phase.tokens_per_s / single, 2) if single else 1.0,
        "ttft_ms_p50": round(ttft50 * 1000, 1),
        "ttft_ms_p95": round(ttft95 * 1000, 1),
        "per_token_ms_p50": round(tok50 * 1000, 2),
        "per_token_ms_p95": round(tok95 * 1000, 2),
    }
    errors = sorted({r.error for r in phase.results if not r.ok})[:3]
    if errors:
        row["errors"] = errors
    print(json.dumps(row), flush=True)
    return row


async def run(a: argparse.Namespace, url: str, pid: int) -> None:
    await clients_phase(url, "warm-up", 2, 2, 16, a.time_limit)
    memory = {"after warm-up": rss_mb(pid)}
    rows, ratios = [], {n: [] for n in a.clients}
    for r in range(1, a.rounds + 1):
        # Each round measures its own single client: the ratios pair phases run minutes apart at
        # most, on a machine whose other load changes.
        single = await clients_phase(url, "1 client", 1, a.single_requests, a.max_tokens, a.time_limit)
        rows.append(report(single, None))
        for n in a.clients:
            phase = await clients_phase(
                url, f"{n} clients", n, a.requests_per_client, a.max_tokens, a.time_limit
            )
            rows.append(report(phase, single.tokens_per_s))
            ratios[n].append(rows[-1]["vs_single"])
        burst = await clients_phase(url, f"burst of {a.burst}", a.burst, 1, a.burst_tokens, a.time_limit)
        rows.append(report(burst, single.tokens_per_s))
        memory[f"after round {r}"] = rss_mb(pid)
    await asyncio.sleep(1)
    memory["idle, 1 s later"] = rss_mb(pid)
    print(json.dumps({"server_rss_mb": {k: round(v, 1) for k, v in memory.items()}}))
    print(
        json.dumps(
            {
                "failed_requests": sum(r["failed"] for r in rows),
                "requests": sum(r["requests"] for r in rows),
                "ratio_to_one_client": {f"{n} clients": ratios[n] for n in a.clients},
                "goal_4x_at_8_plus_clients": {
                    f"{n} clients": min(ratios[n]) >= 4 for n in a.clients if n >= 8
                },
                "memory_growth_after_round_1_mb": round(
                    memory["idle, 1 s later"] - memory["after round 1"], 1
                ),
                "config": f"gpt2 {a.layers}L d{a.d_model} h{a.heads} ctx{a.ctx} vocab65, "
                f"max_batch {a.max_batch}, server threads {a.threads}, {a.max_tokens} tokens per request",
                "when": utc_now(),
                "machine": machine(),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--single-requests", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--burst-tokens", type=int, default=50)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="times every phase runs")
    p.add_argument("--time-limit", type=float, default=300, help="seconds per phase at most")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="nima-serve-load-") as tmp:
        checkpoint = write_checkpoint(Path(tmp), a.layers, a.d_model, a.heads, a.ctx)
        proc, url = start_server(checkpoint, a.max_batch, a.threads)
        try:
            asyncio.run(run(a, url, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
