"""`python scripts/prepare_data.py ...` is `nima prepare ...`: see `nima prepare --help`."""

from nima.cli import run_as_script

if __name__ == "__main__":
    run_as_script("prepare")
