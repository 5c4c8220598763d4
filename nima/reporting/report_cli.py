"""``nima report``: rebuild a run folder's ``report.md`` from its files."""

from __future__ import annotations

import argparse
import sys

from nima.cli import CommandParser
from nima.files import check_writable
from nima.reporting.plot import PLOT_FILE, plot_runs, plots_available
from nima.reporting.report import REPORT_FILE, write_report
from nima.reporting.runs import RUN_INFO_FILE, load_run
from nima.reporting.sample import sample_from_checkpoint

EXAMPLES = """examples:
  nima report experiments/quick_test          # -> experiments/quick_test/report.md
  nima report experiments/quick_test --plot   # also redraw experiments/quick_test/loss.png
"""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="nima report",
        description="Write RUN_DIR/report.md — what was trained, on what, how fast, how well, the loss "
        "plot, a sample, and the commands that train it again or continue it — from the run folder's "
        "config.yaml, logs/metrics.jsonl, logs/run_info.json, results.json and newest checkpoint. "
        "Training writes the same page when it ends.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN_DIR", help="the run folder (training.output_dir)")
    parser.add_argument(
        "--plot",
        action="store_true",
        help="redraw RUN_DIR/loss.png first (drawn anyway when it is missing and matplotlib is installed)",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="generate the sample again from the newest checkpoint (done anyway when the folder has none)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``nima report``; returns the exit code (user errors raise NimaError)."""
    args = build_parser().parse_args(argv)
    run = load_run(args.run)
    draw = (args.plot or not (run.path / PLOT_FILE).is_file()) and plots_available() and bool(run.records)
    sample = (args.sample or not run.info.get("sample")) and run.checkpoint_path is not None
    # Every file the report writes, checked before the first is written.
    writes = [REPORT_FILE] + [PLOT_FILE] * draw + [RUN_INFO_FILE] * sample
    for name in writes:
        check_writable(run.path / name, "RUN_DIR", folder=False)
    if run.config_problem:
        print(f"warning: {run.config_problem} (report.md leaves it out)", file=sys.stderr)
    if draw:
        print(f"wrote {plot_runs([run], run.path / PLOT_FILE)}")
    if sample:
        sampled = sample_from_checkpoint(run.path, run.checkpoint_path)
        if sampled:
            run = load_run(run.path)
    print(f"wrote {write_report(run.path, run)}")
    return 0
