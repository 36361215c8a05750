#!/usr/bin/env bash
# Create (or reuse) .venv in the project root and install lmstream into it, editable.
#   bash scripts/setup-env.sh            # the package
#   bash scripts/setup-env.sh dev        # plus the dev tools (pytest, pytest-timeout, ruff)
# PyTorch: LMSTREAM_TORCH picks the torch requirement installed first (default torch==2.13.0,
# the CPU build these machines keep on local disk). GPU users: install the CUDA build of torch
# into the venv first (https://pytorch.org/get-started/locally/); an importable torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "${LMSTREAM_TORCH:-torch==2.13.0}"
fi
if [ "${1:-}" = "dev" ]; then
  python -m pip install -q -e ".[dev]"
else
  python -m pip install -q -e .
fi
