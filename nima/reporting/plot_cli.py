"""``nima plot``: draw the loss, learning rate, throughput and gradient norm of one run or several."""

from __future__ import annotations

import argparse
from pathlib import Path

from nima.cli import CommandParser
from nima.files import check_writable
from nima.reporting.plot import PLOT_FILE, X_AXES, plot_runs
from nima.reporting.runs import run_folder_of

EXAMPLES = """examples:
  nima plot experiments/quick_test                       # -> experiments/quick_test/loss.png
  nima plot experiments/run_a experiments/run_b --x tokens --output compare.png
"""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="nima plot",
        description="Draw training and validation loss, learning rate, throughput and gradient norm "
        "from run folders' logs/metrics.jsonl into one PNG; several runs are overlaid, named by "
        "their folders.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (training.output_dir)")
    parser.add_argument(
        "--x",
        choices=X_AXES,
        default="step",
        help="x axis: optimizer steps, training tokens seen, or training time (default: step)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"PNG to write (default: RUN_DIR/{PLOT_FILE} for one run, runs.png here for several)",
    )
    parser.add_argument("--title", help="figure title (default: the run names and best validation loss)")
    return parser


def main(argv: list[str]) -> int:
    """Run ``nima plot``; returns the exit code (user errors raise NimaError)."""
    args = build_parser().parse_args(argv)
    folders = [run_folder_of(path) for path in args.runs]
    output = args.output or (folders[0] / PLOT_FILE if len(folders) == 1 else Path("runs.png"))
    check_writable(output, "--output", folder=False)  # before the runs are read and drawn
    written = plot_runs(folders, output, x=args.x, title=args.title)
    print(f"wrote {written}")
    return 0
