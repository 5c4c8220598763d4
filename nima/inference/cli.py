"""``nima generate`` / ``python scripts/generate.py``: sample text from a trained checkpoint.

The continuation is printed to stdout as it is produced (after the prompt); where the model and
tokenizer came from, and the speed, go to stderr, so ``> out.txt`` captures only text.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from nima.cli import CommandParser
from nima.errors import ConfigError, DataError, NimaError
from nima.inference.generate import SamplingSettings, encode_prompt, stream_text
from nima.inference.loading import (
    LoadedModel,
    add_loading_options,
    describe_identity,
    load_for_inference,
    set_threads,
)
from nima.inference.stop_strings import check_stop_strings
from nima.models import check_sampling

EXAMPLES = """examples:
  nima generate --checkpoint experiments/checkpoints/best_model.pt --prompt "ROMEO:" --seed 0
  nima generate --checkpoint CKPT --prompt "ROMEO:" --max_new_tokens 200 \\
                --temperature 0.8 --top_k 50 --top_p 0.95
  nima generate --checkpoint CKPT --prompt_file prompt.txt --num_samples 3
  nima generate --checkpoint CKPT --prompt "ROMEO:" --stop "JULIET:" --stop '\n\n'
  nima generate --checkpoint CKPT --interactive        (one prompt per line; 'quit' or Ctrl-D ends)
"""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="nima generate",
        description="Generate text from a trained checkpoint, streaming it to the terminal.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt) written by training")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--prompt", help="text to continue (default: a fresh document, from end-of-text or a newline)"
    )
    source.add_argument("--prompt_file", type=Path, help="read the prompt from this UTF-8 file")
    source.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line")
    p.add_argument(
        "--max_new_tokens", type=int, default=200, help="tokens to generate per sample (default 200)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)"
    )
    p.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling probability mass, in (0, 1]")
    p.add_argument(
        "--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed; sample i uses seed + i (default: random)")
    p.add_argument("--num_samples", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--no_stop_at_eos", action="store_true", help="keep going past the end-of-text token")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end the sample before this text (not printed); repeat for several",
    )
    add_loading_options(p)
    return p


def _settings(args: argparse.Namespace) -> SamplingSettings:
    """The sampling settings, checked before anything is loaded or printed."""
    if args.num_samples < 1:
        raise NimaError(f"--num_samples {args.num_samples} must be at least 1")
    if args.max_new_tokens < 0:
        raise NimaError(f"--max_new_tokens {args.max_new_tokens} must be 0 or more")
    sampling = (args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    check_sampling(*sampling, seed=args.seed, prefix="--")
    if args.seed is not None and args.seed + args.num_samples - 1 >= 2**64:
        raise ConfigError(f"--seed {args.seed} + --num_samples {args.num_samples} goes past 2**64 - 1")
    return SamplingSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop_at_eos=not args.no_stop_at_eos,
        stop=check_stop_strings([_unescape(s) for s in args.stop]),
    )


def _unescape(text: str) -> str:
    r"""``--stop '\n\n'`` as typed in a shell means two newlines."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _read_prompt_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"prompt file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"prompt file {path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:  # a folder, no permission ...
        raise DataError(f"cannot read prompt file {path}: {err.strerror or err}") from None


def _interactive_prompts() -> Iterator[str]:
    tty = sys.stdin.isatty()
    if tty:
        print("Type a prompt and press Enter ('quit' or Ctrl-D to end).", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        prompt = line.rstrip("\r\n")
        if prompt.strip().lower() in ("quit", "exit"):
            return
        if prompt.strip():
            yield prompt


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def generate_samples(loaded: LoadedModel, prompt: str, settings: SamplingSettings, num_samples: int) -> int:
    """Print ``num_samples`` continuations of ``prompt`` as they are produced; returns tokens made."""
    total_tokens = 0
    counts: dict[str, int] = {}
    # A character the tokenizer lacks fails here, before anything is printed.
    encode_prompt(loaded.tokenizer, prompt)
    for i in range(num_samples):
        if num_samples > 1:
            _write(("\n" if i else "") + f"--- sample {i + 1}/{num_samples} ---\n")
        sample = replace(settings, seed=None if settings.seed is None else settings.seed + i)
        _write(prompt)
        start = time.perf_counter()
        for piece in stream_text(loaded.model, loaded.tokenizer, prompt, sample, counts):
            _write(piece)
        _write("\n")
        seconds = time.perf_counter() - start
        made = counts.get("new_tokens", 0)
        total_tokens += made
        rate = f", {made / seconds:.0f} tokens/s" if seconds > 0 and made else ""
        print(f"[{made} tokens in {seconds:.2f} s{rate}]", file=sys.stderr)
    return total_tokens


def main(argv: list[str]) -> int:
    """Run ``nima generate``; returns the exit code (user errors raise NimaError)."""
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    settings = _settings(args)
    prompt = _read_prompt_file(args.prompt_file) if args.prompt_file else args.prompt
    loaded = load_for_inference(
        args.checkpoint, tokenizer=args.tokenizer, device=args.device, data_dir=args.data_dir
    )
    if not args.interactive:
        encode_prompt(loaded.tokenizer, prompt or "")  # fail on a bad prompt before printing anything
    step = loaded.info.get("step")
    print(
        f"loaded {loaded.checkpoint_path}"
        + (f" (step {step})" if step is not None else "")
        + f": {loaded.model.num_parameters() / 1e6:.2f}M parameters, "
        f"{describe_identity(loaded.tokenizer.identity())} from {loaded.tokenizer_path}, on {loaded.device}",
        file=sys.stderr,
    )
    if not args.interactive:
        generate_samples(loaded, prompt or "", settings, args.num_samples)
        return 0
    for line in _interactive_prompts():
        try:
            generate_samples(loaded, line, settings, args.num_samples)
        except NimaError as err:  # a bad prompt should not end the session
            print(f"error: {err}", file=sys.stderr)
        except KeyboardInterrupt:  # Ctrl-C stops this answer; Ctrl-C at the prompt (or Ctrl-D) ends
            print("\n[stopped]", file=sys.stderr)
    return 0
