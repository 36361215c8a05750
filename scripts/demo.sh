#!/usr/bin/env bash
# The main job: installs lmstream into .venv (with everything its commands need, transformers for
# `lmstream export` included), then runs `lmstream demo` (stream a corpus, train a tokenizer,
# train a tiny model on this CPU, sample from it). Extra arguments go to `lmstream demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec lmstream demo "$@"
