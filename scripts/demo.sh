#!/usr/bin/env bash
# The main job: set up .venv/, train a detector on the bundled example transactions (labelled
# frauds left out), save it to the model store and score the file with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export BENTOML_DO_NOT_TRACK=true
DATA=examples/data/transactions.csv
mkdir -p out
TAG=$(.venv/bin/flowad train "$DATA" --name flowad-detector --exclude transaction_id \
      --label is_fraud --target-fpr 0.01 | tail -n 1)
echo "saved model $TAG"
.venv/bin/flowad score "$TAG" "$DATA" --output out/transactions-scored.csv
.venv/bin/flowad evaluate "$TAG" "$DATA" --label is_fraud --report-dir out/report > /dev/null
echo "evaluation report: out/report/metrics.json and PNG plots"
