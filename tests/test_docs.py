"""Every shell command and Python snippet of the docs runs, so that the docs cannot rot.

Covered documents: ``docs/*.md`` and the user guide ``../shared/spec/training-guide.md``. Each
document runs top to bottom in a fresh temporary workspace (symlinks to the code folders, its own
``experiments/``; data under the test data dir), like a reader following it: shell commands one by
one, Python blocks in one shared namespace (later snippets use ``model``, ``trainer`` ... from
earlier ones). Nothing is written into the checkout.

Where a document's sizes would take hours, :data:`SUBSTITUTIONS` swaps in tiny ones; snippets that
are fragments (names the guide leaves to the reader, such as ``train_epoch()``) get the minimal
stand-ins of :data:`PRELUDES`. Both tables are checked: an entry that no longer matches its
document fails the test, so the tables cannot rot either. A block preceded by
``<!-- docs-test: skip (reason) -->`` is not run (no document needs that today).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tiny import model_args, model_dict

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NIMA_SHARED_DIR", REPO.parent / "shared"))
SPEC = SHARED / "spec" / "training-guide.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
CODE_FOLDERS = ("scripts", "configs", "nima", "models", "data", "training")

# Tiny sizes for every training command: the tests' tiny model (tests/tiny.py), a few steps.
TINY_MODEL = " ".join(model_args())
TINY_TRAIN = (
    "--training.batch_size=4 --training.eval_every=2 --training.eval_batches=2 --training.save_every=2"
)
TINY = f"{TINY_MODEL} {TINY_TRAIN}"
TINY_PY_MODEL = ", ".join(f"{name}={value}" for name, value in model_dict().items())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVE_PORT = _free_port()
"""The port inference.md's server example listens on in the test (8000 in the document)."""


@dataclass(frozen=True)
class Sub:
    """Replace ``old`` by ``new`` in the snippets of ``doc`` (a file name); ``why`` is shown in docs."""

    doc: str
    old: str
    new: str
    why: str


SUBSTITUTIONS: list[Sub] = [
    # --- the user guide (../shared/spec/training-guide.md) ---
    Sub(
        "training-guide.md",
        "python scripts/train.py --config configs/base_model.yaml\n",
        f"python scripts/train.py --config configs/base_model.yaml {TINY} --training.max_steps=2\n",
        "base_model.yaml trains a 19M model for 100 epochs: hours on a CPU",
    ),
    Sub(
        "training-guide.md",
        "python scripts/train.py --quick_test\n",
        f"python scripts/train.py --quick_test {TINY} --training.max_steps=2\n",
        "--quick_test takes about a minute; tests take seconds",
    ),
    Sub(
        "training-guide.md",
        "python scripts/train.py --config configs/base_model.yaml "
        "--checkpoint experiments/checkpoints/step_5000.pt\n",
        f"python scripts/train.py --config configs/base_model.yaml {TINY} --training.max_steps=4 "
        "--checkpoint experiments/checkpoints/step_2.pt\n",
        "step 5000 would take hours; the tiny run above saved step_2.pt, resume continues to step 4",
    ),
    Sub("training-guide.md", "max_length=512", "max_length=32", "context 512 of a 124M model: hours"),
    Sub(
        "training-guide.md",
        "create_gpt_small(vocab_size=tokenizer.vocab_size)",
        f"create_gpt_small(vocab_size=tokenizer.vocab_size, {TINY_PY_MODEL})",
        "GPT-2 small is 85M parameters",
    ),
    Sub(
        "training-guide.md",
        "batch_size=32, collate_fn=collator",
        "batch_size=4, collate_fn=collator",
        "smaller batches for the tiny model",
    ),
    Sub(
        "training-guide.md",
        "    num_epochs=10,\n",
        "    num_epochs=10, max_steps=4, eval_batches=2, batch_size=4,\n",
        "10 epochs of tiny Shakespeare: hours; 4 steps show the loop works",
    ),
    # --- our own docs: their commands use real sizes too ---
    Sub(
        "training.md",
        "python scripts/train.py --config configs/base_model.yaml\n",
        f"python scripts/train.py --config configs/base_model.yaml {TINY} --training.max_steps=2\n",
        "hours on a CPU",
    ),
    Sub(
        "training.md",
        "python scripts/train.py --quick_test\n",
        f"python scripts/train.py --quick_test {TINY} --training.max_steps=2\n",
        "about a minute",
    ),
    Sub(
        "training.md",
        "--config configs/cpu_quick.yaml ",
        f"--config configs/cpu_quick.yaml {TINY} ",
        "the cpu_quick model at tiny size: these commands show overrides and resume, not a real run",
    ),
    Sub(
        "evaluation.md",
        "python scripts/train.py --quick_test\n",
        f"python scripts/train.py --quick_test {TINY} --training.max_steps=2\n",
        "about a minute",
    ),
    Sub(
        "evaluation.md",
        "python scripts/train.py --quick_test --training.output_dir=experiments/with_tasks",
        f"python scripts/train.py --quick_test {TINY} --training.max_steps=2 "
        "--training.output_dir=experiments/with_tasks",
        "about a minute; two tiny steps still evaluate the task",
    ),
    Sub(
        "inference.md",
        "python scripts/train.py --quick_test\n",
        f"python scripts/train.py --quick_test {TINY} --training.max_steps=2\n",
        "about a minute",
    ),
    Sub(
        "inference.md",
        "127.0.0.1:8000",
        f"127.0.0.1:{SERVE_PORT}",
        "port 8000 may be taken on a shared machine",
    ),
    Sub("inference.md", "port=8000", f"port={SERVE_PORT}", "port 8000 may be taken on a shared machine"),
]

PRELUDES: dict[tuple[str, str], tuple[str, str]] = {
    # (doc, text that identifies the snippet) -> (stand-in code run before it, why)
    ("training-guide.md", "if early_stopping(val_loss):"): (
        "num_epochs = 50\n"
        "_val_losses = iter([3.0, 2.5, 2.4] + [2.4] * 100)\n"
        "def train_epoch():\n    return 0.0\n"
        "def evaluate():\n    return next(_val_losses)\n",
        "the guide leaves train_epoch() and evaluate() to the reader; validation stops improving at epoch 3",
    ),
    ("training-guide.md", "tracker.log({'loss': loss, 'lr': learning_rate}, step=global_step)"): (
        "loss, learning_rate, global_step = 2.5, 3e-4, 1\n",
        "values a training loop would have at this point",
    ),
    ("training-guide.md", "printer.print_step(step, {'loss': loss, 'lr': lr})"): (
        "step, loss, lr, epoch, train_loss, val_loss = 10, 2.5, 3e-4, 0, 2.6, 2.7\n",
        "values a training loop would have at this point",
    ),
}

# Output each document must produce somewhere (proof that the snippets really did their job).
EXPECTED_OUTPUT: dict[str, list[str]] = {
    "training-guide.md": ["Early stopping triggered!", "Average loss: 2.5"],
}

FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S
)
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->\s*$")


@dataclass
class Step:
    kind: str  # "shell" | "python"
    line: int
    code: str


def shell_commands(body: str) -> list[tuple[int, str]]:
    """Commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    out, pending, start = [], "", 0
    for i, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = i
        line = line[2:] if not pending and line.startswith("$ ") else line
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, (pending + line).strip()))
        pending = ""
    return out


def extract_steps(path: Path) -> tuple[list[Step], list[str]]:
    """Shell commands and Python blocks of a markdown file, in order; plus skipped-block notes."""
    text = path.read_text(encoding="utf-8")
    steps, skipped = [], []
    for m in FENCE.finditer(text):
        lang = m.group("lang").lower()
        line = text.count("\n", 0, m.start()) + 2
        before = text[: m.start()].rstrip().splitlines()[-1:] or [""]
        skip = SKIP_MARK.search(before[0])
        if lang not in ("bash", "sh", "shell", "console", "python", "py"):
            continue
        if skip:
            skipped.append(f"{path.name}:{line}: {skip.group('why')}")
            continue
        body = "\n".join(s[len(m.group("indent")) :] for s in m.group("body").splitlines()) + "\n"
        if lang in ("python", "py"):
            steps.append(Step("python", line, body))
        else:
            steps += [Step("shell", line + offset, cmd + "\n") for offset, cmd in shell_commands(body)]
    return steps, skipped


def apply_tables(doc: str, steps: list[Step]) -> list[Step]:
    """The steps with this document's substitutions and preludes applied; stale entries fail."""
    out = [Step(s.kind, s.line, s.code) for s in steps]
    for sub in (s for s in SUBSTITUTIONS if s.doc == doc):
        hits = [s for s in out if sub.old in s.code]
        assert hits, (
            f"{doc}: substitution no longer matches anything: {sub.old!r} (update tests/test_docs.py)"
        )
        for s in hits:
            s.code = s.code.replace(sub.old, sub.new)
    for (prelude_doc, marker), (code, _) in PRELUDES.items():
        if prelude_doc != doc:
            continue
        hits = [s for s in out if s.kind == "python" and marker in s.code]
        assert hits, f"{doc}: prelude marker no longer matches a snippet: {marker!r}"
        for s in hits:
            s.code = code + s.code
    return out


DRIVER = r"""
import json, subprocess, sys, time, traceback
steps = json.load(open(sys.argv[1], encoding="utf-8"))
started = time.perf_counter()
doc = sys.argv[2]
namespace = {"__name__": "__main__"}
for i, step in enumerate(steps):
    where = f"{doc}:{step['line']}"
    elapsed = time.perf_counter() - started
    print(f"\n===== [{i + 1}/{len(steps)}] {step['kind']} at {where} (t={elapsed:.1f}s)", flush=True)
    print(step["code"].rstrip() + "\n-----", flush=True)
    if step["kind"] == "shell":
        rc = subprocess.call(step["code"], shell=True, stdin=subprocess.DEVNULL, executable="/bin/bash")
        if rc != 0:
            print(f"\nDOCS-TEST FAILURE: shell command at {where} exited with {rc}", flush=True)
            sys.exit(1)
    else:
        try:
            exec(compile(step["code"], where, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"\nDOCS-TEST FAILURE: Python snippet at {where} raised", flush=True)
            sys.exit(1)
        sys.stdout.flush()
print("\nDOCS-TEST OK", flush=True)
"""


def make_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in CODE_FOLDERS:
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    return root


def run_document(path: Path, tmp_path: Path) -> str:
    steps = apply_tables(path.name, extract_steps(path)[0])
    assert steps, f"{path} has no shell commands or Python snippets"
    workspace = make_workspace(tmp_path / "workspace")
    steps_file = tmp_path / "steps.json"
    steps_file.write_text(json.dumps([s.__dict__ for s in steps]), encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(workspace),
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(steps_file), path.name],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    output = proc.stdout
    if os.environ.get("NIMA_DOCS_TRANSCRIPTS"):
        Path(os.environ["NIMA_DOCS_TRANSCRIPTS"], f"{path.stem}.log").write_text(output, encoding="utf-8")
    assert proc.returncode == 0 and "DOCS-TEST OK" in output, output[-6000:]
    for expected in EXPECTED_OUTPUT.get(path.name, []):
        assert expected in output, f"{path.name}: expected output {expected!r} missing\n{output[-3000:]}"
    return output


def test_docs_exist_and_are_covered():
    names = {p.name for p in DOCS}
    assert {"training.md", "evaluation.md", "inference.md", "architecture.md"} <= names
    assert SPEC.is_file(), f"user guide not found at {SPEC}; set NIMA_SHARED_DIR"


@pytest.mark.slow
@pytest.mark.parametrize("path", [SPEC, *DOCS], ids=lambda p: p.name)
def test_document_runs(path: Path, tmp_path: Path):
    run_document(path, tmp_path)


@pytest.mark.parametrize("path", [SPEC, *DOCS], ids=lambda p: p.name)
def test_tables_match_their_documents(path: Path):
    steps, skipped = extract_steps(path)
    apply_tables(path.name, steps)
    for note in skipped:
        assert note.split(": ", 1)[1].strip(), f"skipped block without a reason: {note}"


def test_relative_links_in_docs_point_to_files():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_guide_yaml_is_what_configs_base_model_holds():
    text = SPEC.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    guide = yaml.safe_load(block)
    shipped = yaml.safe_load((REPO / "configs" / "base_model.yaml").read_text(encoding="utf-8"))
    for section in ("model", "training"):
        assert shipped[section] == guide[section], (
            f"configs/base_model.yaml {section}: differs from the guide"
        )


def test_shell_command_parsing():
    body = "# comment\npython a.py \\\n  --x 1\n\n$ python b.py\n"
    assert shell_commands(body) == [(1, "python a.py    --x 1"), (4, "python b.py")]
