#!/usr/bin/env bash
# Sets up .venv/ and runs the whole test suite (ruff, mypy, pytest). The fast tier for the
# inner loop: bash scripts/run-tests.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export BENTOML_DO_NOT_TRACK=true
.venv/bin/ruff check .
.venv/bin/mypy  # pipelines, flowmodels and service ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest "$@"
