"""`python scripts/evaluate.py ...` is `nima eval ...`: see `nima eval --help`."""

from nima.cli import run_as_script

if __name__ == "__main__":
    run_as_script("eval")
