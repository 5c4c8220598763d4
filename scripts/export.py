"""`python scripts/export.py ...` is `nima export ...`: see `nima export --help`."""

from nima.cli import run_as_script

if __name__ == "__main__":
    run_as_script("export")
