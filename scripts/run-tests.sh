#!/usr/bin/env bash
# Sets up .venv/ and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export BENTOML_DO_NOT_TRACK=true
.venv/bin/ruff check .
# service/ only for now; --follow-imports=silent: errors in the modules it imports are not its own
.venv/bin/mypy service --ignore-missing-imports --follow-imports=silent
.venv/bin/python -m pytest "$@"
