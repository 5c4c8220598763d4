"""`python scripts/generate.py ...` is `nima generate ...`: see `nima generate --help`."""

from nima.cli import run_as_script

if __name__ == "__main__":
    run_as_script("generate")
