#!/usr/bin/env bash
# Set-up and the two everyday jobs, on a fresh machine:
#   ./run.sh demo    create .venv, prepare tiny Shakespeare, train a quick model, print a sample
#   ./run.sh test    create .venv and run the whole test suite
# The environment is made once and reused. GPU users: create .venv and install the PyTorch build
# for your CUDA version into it first; set-up keeps any torch it finds there.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${NIMA_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # An explicit pin: an open torch range would pull a multi-GB CUDA build on a CPU machine.
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install --quiet "torch==2.13.0"
  "$PY" -m pip install --quiet -e ".[dev]"
  # Offline copy of tiny Shakespeare beside the checkout (CI, shared machines): use it, never download.
  if [ -z "${NIMA_DATA_MIRROR:-}" ] && [ -f ../shared/data/tiny_shakespeare/input.txt ]; then
    export NIMA_DATA_MIRROR="$(cd ../shared/data && pwd)"
  fi
}

case "${1:-}" in
  demo)
    setup
    "$PY" scripts/prepare_data.py --dataset tiny_shakespeare --tokenizer char
    "$PY" scripts/train.py --quick_test
    ;;
  test)
    shift
    setup
    "$PY" -m pytest -n "${NIMA_TEST_WORKERS:-auto}" "$@"
    ;;
  *)
    echo "usage: ./run.sh demo | ./run.sh test [pytest options]" >&2
    exit 2
    ;;
esac
