#!/usr/bin/env bash
# The test command: installs lmstream with its dev tools into .venv, then runs the whole suite
# (unit, integration, slow end-to-end, distributed torchrun/gloo, reliability; not the `heavy`
# reliability variants: run those with `bash scripts/test.sh -m heavy`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh dev
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
if [ "$#" -eq 0 ]; then
  set -- -m "not heavy"
fi
# --durations: the 25 slowest tests end the log, so the suite can be kept near its ~15 min aim.
exec python -m pytest -q --timeout=900 --durations=25 "$@"
