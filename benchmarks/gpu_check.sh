#!/usr/bin/env bash
# Everything that needs a GPU, in one short run (a session that is lent a device runs this):
# the CUDA tests, then scoring throughput on the GPU next to the CPU.
# Usage: bash benchmarks/gpu_check.sh   (sets up .venv/ first if needed)
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export BENTOML_DO_NOT_TRACK=true
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
.venv/bin/python -m pytest tests/test_gpu.py -q -rs
status=$?
.venv/bin/python benchmarks/bench_realnvp.py --device cuda --dims 8 32 --batch 65536 --steps 100
.venv/bin/python benchmarks/bench_ffjord.py --device cuda --batch 65536 --steps 300 --no-baseline || true
exit $status
