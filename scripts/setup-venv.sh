#!/usr/bin/env bash
# Creates or updates .venv/ at the repository root. Idempotent: a second run with an unchanged
# pyproject.toml only checks a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.flowad-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) torch==$TORCH_VERSION"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first and pinned: anything that pulls in an unpinned torch would fetch a CUDA build.
    .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
    .venv/bin/python -m pip install --quiet -e ".[dev,spark]"
    echo "$want" > "$stamp"
fi
