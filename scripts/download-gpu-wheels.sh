#!/usr/bin/env bash
# Downloads, here (where pip reaches PyPI), the wheels that the air-gapped GPU host lacks, into
# .whl/ at the repository root (ignored by git). The device tool copies the working tree, so a
# `run` with carry [".whl"] takes them along; `bash benchmarks/gpu_check.sh --offline` installs
# them there with `pip install --no-index --no-deps --target /tmp/site`.
#
# The host (docs: /work/shared/design.md, "The GPU host") is Python 3.12 with CUDA PyTorch,
# numpy, scipy, pandas, scikit-learn, pyarrow and much more; it lacks bentoml, skops and orjson.
# The list below is their dependency closure minus what the host already has, pinned to the
# versions this project's .venv runs with. Never torch, nvidia-*, triton or numpy/scipy/pandas/
# scikit-learn/pyarrow: the host's own builds must be used.
#
# Usage: bash scripts/download-gpu-wheels.sh [DEST]   (DEST defaults to .whl; PYTHON=... picks
# the interpreter whose pip downloads, default .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

WHEELS=(
    # what the project imports and the host lacks
    bentoml==1.4.40
    skops==0.16.0
    orjson==3.13.0
    # bentoml's needs that the host lacks
    a2wsgi==1.10.10
    aiohttp-asgi-connector==1.2.0
    aiosqlite==0.22.1
    asgiref==3.13.0
    cattrs==23.1.2
    click-option-group==0.5.10
    httpx-ws==0.9.0
    wsproto==1.3.2
    kantoku==0.18.3
    pyzmq==27.3.0
    tornado==6.6.1
    opentelemetry-api==1.45.1
    opentelemetry-sdk==1.45.1
    opentelemetry-instrumentation==0.66b1
    opentelemetry-instrumentation-aiohttp-client==0.66b1
    opentelemetry-instrumentation-asgi==0.66b1
    opentelemetry-semantic-conventions==0.66b1
    opentelemetry-util-http==0.66b1
    pip-requirements-parser==32.0.1
    pydantic==2.14.4
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    python-json-logger==4.2.0
    python-multipart==0.0.34
    rich-toolkit==0.20.6
    schema==0.7.8
    simple-di==0.1.5
    starlette==1.10.0
    tomli-w==1.2.0
    uvicorn==0.54.0
    watchfiles==1.3.0
    tzdata==2026.6
    # skops's need that the host lacks
    prettytable==3.18.0
    wcwidth==0.9.4
    # The host has these, but at versions nobody here has read, and the packages above require
    # recent ones (pydantic-core: typing-extensions>=4.16; bentoml: certifi>=2026.10.19,
    # fsspec>=2025.7; starlette: anyio>=4). All pure Python and backward compatible, so
    # shadowing the host's copies is safe. Not h11: the host's httpcore may pin an older one.
    typing-extensions==4.16.0
    certifi==2026.10.19.post1
    fsspec==2026.9.0
    anyio==4.16.0
)

mkdir -p "$DEST"
for wheel in "${WHEELS[@]}"; do
    # --no-deps: the closure is the list above, by hand, so nothing the host has comes along.
    # The platform tags are those a manylinux x86-64 host with glibc >= 2.28 accepts; pure
    # Python (py3-none-any) wheels match any of them. The grep drops a warning that this
    # machine's pip config causes (local extra indexes that lack the package).
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
        --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 "$wheel" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
done

# What the host already has of the wheels' needs (/work/.library/device/KINDS.md, "Python
# packages already there"): anything else a wheel requires must be in the list above.
HOST_HAS="aiohappyeyeballs aiohttp aiosignal attrs click cloudpickle frozenlist h11 httpcore httpx
idna jinja2 joblib markdown-it-py markupsafe mdurl multidict narwhals numpy nvidia-ml-py packaging
pathspec prometheus-client propcache psutil pygments pyparsing python-dateutil pyyaml rich
scikit-learn scipy threadpoolctl wrapt yarl"

# Checks: one version per package (two wheels of one name stop the whole install on the host),
# nothing stale in DEST, and the closure: every need of every wheel is a wheel or on the host.
"$PYTHON" - "$DEST" "$HOST_HAS" "${WHEELS[@]}" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare python3: pip's own copy
    from pip._vendor.packaging.requirements import Requirement


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


dest, host, wanted = Path(sys.argv[1]), set(sys.argv[2].split()), sys.argv[3:]
listed = {norm(w.split("==")[0]) for w in wanted}
found: dict[str, list[Path]] = {}
for path in sorted(dest.glob("*.whl")):
    found.setdefault(norm(path.name.split("-")[0]), []).append(path)
problems = [f"several versions of {n}" for n, paths in found.items() if len(paths) > 1]
problems += [f"{n} is not in the list (stale? delete it)" for n in found if n not in listed]
problems += [f"{n} was not downloaded" for n in listed if n not in found]
# The host: CPython 3.12 on x86-64 Linux; no extras are installed.
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "extra": ""}
for name, (path, *_) in found.items():
    with zipfile.ZipFile(path) as wheel:
        meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        lines = wheel.read(meta).decode().splitlines()
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if norm(req.name) not in listed | host:
                problems.append(f"{name} needs {req}: neither a wheel nor on the host")
if problems:
    sys.exit("\n".join(f"{dest}: {p}" for p in problems))
print(f"{len(found)} wheels, one version each; all their needs are wheels or on the host")
EOF
du -ch "$DEST"/*.whl | tail -1 |
    sed "s|total|total in $DEST/ (the device tool carries at most 64 MiB with the repo)|"
