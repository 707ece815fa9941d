#!/usr/bin/env bash
# The main job: set up .venv/, train a detector on the bundled example transactions (labelled
# frauds left out), score the file with it, then serve it on http://127.0.0.1:3000
# (or on the port in $PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export BENTOML_DO_NOT_TRACK=true
PORT=${PORT:-3000}
DATA=examples/data/transactions.csv
mkdir -p out
TAG=$(.venv/bin/flowad train "$DATA" --name flowad-detector --exclude transaction_id \
      --label is_fraud --target-fpr 0.01 | tail -n 1)
echo "saved model $TAG"
.venv/bin/flowad promote "$TAG"
.venv/bin/flowad score "$TAG" "$DATA" --output out/transactions-scored.csv
.venv/bin/flowad evaluate "$TAG" "$DATA" --label is_fraud --report-dir out/report > /dev/null
echo "evaluation report: out/report/metrics.json and PNG plots"
cat <<CURL

Serving on http://127.0.0.1:$PORT (Ctrl-C stops). Try, from another shell:

curl -s -X POST http://127.0.0.1:$PORT/score -H 'content-type: application/json' -d '[
  {"amount": 42.5, "hour": 14, "items": 2, "channel": "web", "is_weekend": false,
   "account_age_days": 420, "distance_km": 3.1},
  {"amount": 4800, "hour": 3, "items": 1, "channel": "web", "is_weekend": false,
   "account_age_days": null, "distance_km": 2200}]'
curl -s http://127.0.0.1:$PORT/model
curl -s http://127.0.0.1:$PORT/metrics | grep ^flowad_

CURL
# FLOWAD_MODEL (default flowad-detector) follows that name's production model.
exec .venv/bin/bentoml serve . --host 127.0.0.1 --port "$PORT"
