#!/usr/bin/env bash
# Sets up .venv/ and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export BENTOML_DO_NOT_TRACK=true
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
