"""`python scripts/train.py ...` is `nima train ...`: see `nima train --help`."""

from nima.cli import run_as_script

if __name__ == "__main__":
    run_as_script("train")
