#!/usr/bin/env bash
# Everything that needs a GPU, in one short run (a session that is lent a device runs this):
# the CUDA tests, then scoring throughput on the GPU (the default detector, exact FFJORD, the
# service through its GPU Scorer, then issue 29's scoring table and the RealNVP and FFJORD
# benches as time allows).
#
# Usage:
#   bash benchmarks/gpu_check.sh              sets up .venv/ first (needs a package registry)
#   bash benchmarks/gpu_check.sh --offline    an air-gapped host whose python3 has CUDA torch:
#                                             installs the wheels of .whl/ (made here by
#                                             scripts/download-gpu-wheels.sh) into /tmp/site
#   add --dry-run to print the steps instead of running them
#
# Offline, GPU_CHECK_PYTHON (default python3), GPU_CHECK_WHEELS (.whl) and GPU_CHECK_SITE
# (/tmp/site) say which interpreter, wheels and install folder.
# Bounded in time: each step has a timeout, and the whole check starts no step once
# GPU_CHECK_BUDGET_S (default 450 s; with the last step's 15 s kill grace, under 8 minutes) is
# spent; a step left out says so. Without CUDA the GPU steps print "no CUDA: skipped".
# Exit status: 0 when no step failed and no required step timed out or was left out (the last
# two benches are extras: cut short or left out, they are reported, not failed).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=online
dry_run=false
for arg in "$@"; do
    case "$arg" in
        --offline) mode=offline ;;
        --dry-run) dry_run=true ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
BATCH=65536
failed=()
summary=()
optional=false  # set around the extras: their time-outs are reported, not failures

# run_step NAME TIMEOUT_S COMMAND...: runs COMMAND under the smaller of TIMEOUT_S and what is
# left of the budget. SIGINT first, so that Python runs its `finally` blocks (bench_service.py
# stops the `bentoml serve` it started in its own session); SIGKILL 15 s later if that hangs.
run_step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - SECONDS))
    if ((left < 20)); then
        echo "== $name: left out, under 20 s of the ${BUDGET_S} s budget left"
        summary+=("left out  $name")
        $optional || failed+=("$name")
        return 0
    fi
    ((limit <= left)) || limit=$left
    echo "== $name (timeout ${limit} s, ${SECONDS} s into the check)"
    if $dry_run; then
        printf '   would run:'; printf ' %q' "$@"; echo
        summary+=("dry run   $name")
        return 0
    fi
    local start=$SECONDS rc=0
    timeout --signal=INT --kill-after=15 "$limit" "$@" || rc=$?
    local took=$((SECONDS - start))
    if ((rc == 0)); then
        summary+=("ok        $name (${took} s)")
    elif ((rc == 124 || rc == 137)) && $optional; then
        summary+=("cut short $name (after ${took} s; an extra)")
    elif ((rc == 124 || rc == 137)); then
        summary+=("TIMED OUT $name (after ${took} s)")
        failed+=("$name")
    else
        summary+=("FAILED    $name (exit $rc, ${took} s)")
        failed+=("$name")
    fi
    return 0
}

export BENTOML_DO_NOT_TRACK=true
# BentoML's model store and config in a temp dir: nothing of this check outlives it.
BENTOML_HOME=$(mktemp -d "${TMPDIR:-/tmp}/flowad-gpu-check-XXXXXX")
export BENTOML_HOME
trap 'rm -rf "$BENTOML_HOME"' EXIT
export PYTHONUNBUFFERED=1  # under `| tee`, lines appear as they are printed

if [ "$mode" = offline ]; then
    # No registry, no `pip install -e`: the host's own python3 (and its CUDA torch, numpy, ...),
    # the carried wheels in $SITE, and the repository itself on PYTHONPATH.
    PY=${GPU_CHECK_PYTHON:-python3}
    BENTOML_SITE=$SITE  # where the service bench finds `bentoml` (bin/bentoml)
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "no wheels in $WHEELS/: run scripts/download-gpu-wheels.sh where pip reaches PyPI," \
            "then carry $WHEELS (the device tool's run: carry [\"$WHEELS\"])" >&2
        $dry_run || exit 2
    fi
    export PYTHONPATH="$SITE:$PWD"
    # The wheels' console scripts (bentoml) land in $SITE/bin; first on PATH.
    export PATH="$SITE/bin:$PATH"
    # --no-deps: the wheel set is the closure already; --upgrade: a rerun replaces, not fails.
    wheel_files=("$WHEELS"/*.whl)
    run_step "install ${#wheel_files[@]} wheels into $SITE" 120 \
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheel_files[@]}"
    if ((${#failed[@]})); then
        echo "the wheels did not install: nothing else can run" >&2
        exit 1
    fi
else
    if $dry_run; then
        echo "== would run: bash scripts/setup-venv.sh"
    else
        bash scripts/setup-venv.sh
    fi
    PY=.venv/bin/python
    BENTOML_SITE=""  # .venv/bin/bentoml, beside .venv/bin/python: nothing to point at
fi

# What runs, and from where: bentoml, skops and orjson must come from $SITE when offline.
run_step "environment" 60 "$PY" -c '
import sys, torch, bentoml, skops, orjson, pipelines, service.settings
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for module in (bentoml, skops, orjson, pipelines):
    print(module.__name__, getattr(module, "__version__", ""), "from", module.__file__)
'
if ! $dry_run && ((${#failed[@]})); then
    echo "the project does not import: nothing else can run" >&2
    exit 1
fi

run_step "CUDA tests" 150 "$PY" -m pytest tests/model/test_gpu.py -q -rs

cuda=false
if $dry_run || timeout 120 "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'
then
    cuda=true
fi
if $cuda; then
    # The default detector (pipelines.Detector(), trained briefly on the GPU) and exact FFJORD,
    # rows/s at batch 65,536, printed next to the H200 targets.
    run_step "default detector and exact FFJORD, GPU rows/s" 150 \
        "$PY" benchmarks/bench_detector_gpu.py --batch "$BATCH"
    # The service through the GPU Scorer, a real `bentoml serve`. bench_service.py starts the
    # `bentoml` beside sys.executable: offline that is $SITE/bin/bentoml (its shebang is the
    # host's python3), so sys.executable points there once the bench is imported. Imported as
    # a module, not run as a file: its client processes get their function by module name.
    # SIGINT is made to raise KeyboardInterrupt even if inherited as ignored, so that a timeout
    # lets the bench stop its server (started in a session of its own, which outlives it).
    run_step "service records/s through the GPU Scorer" 240 "$PY" -c '
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, "benchmarks")
import bench_service
if sys.argv[1]:
    sys.executable = sys.argv[1] + "/bin/python3"
sys.argv = ["benchmarks/bench_service.py", "--scoring", "scorer", "--requests", "40"]
bench_service.main()
' "$BENTOML_SITE"
    # The lower-level benches, as time allows.
    optional=true
    # Issue 29's table (rows per call against IsolationForest on the CPU) with the detector on
    # the GPU; development-suite datasets of 10 and 27 features, as the repository carries them.
    run_step "scoring by rows per call (scoring_scale.py)" 150 "$PY" benchmarks/scoring_scale.py \
        --parts scoring --data-dir benchmarks/data/dev --datasets 22_magic.gamma,12_fault \
        --rounds 1 --min-seconds 0.5
    run_step "RealNVP rows/s" 60 "$PY" benchmarks/bench_realnvp.py --device cuda --dims 8 32 \
        --batch "$BATCH" --steps 100
    run_step "FFJORD rows/s and errors" 120 "$PY" benchmarks/bench_ffjord.py --device cuda \
        --batch "$BATCH" --steps 100 --repeats 2 --no-baseline
    optional=false
else
    echo "== GPU benches: no CUDA: skipped"
    summary+=("skipped   GPU benches (no CUDA)")
fi

echo "== summary ($mode mode, ${SECONDS} s)"
printf '   %s\n' "${summary[@]}"
((${#failed[@]} == 0))
