"""`python scripts/sweep.py ...` is `nima sweep ...`: see `nima sweep --help`."""

from nima.cli import run_as_script

if __name__ == "__main__":
    run_as_script("sweep")
