"""What ``POST /score?explain=true`` costs, and what it costs other clients.

Run: ``.venv/bin/python benchmarks/explain_cost.py [--columns 7,50,200] [--rounds 3]``.

1. In process: milliseconds per explained record of the default detector (two flows) at each
   column count, in batches of 10 records (one torch thread).
2. Against ``bentoml serve`` (one worker, local scoring, default limits) on a model of the
   largest column count: the seconds of an explained request as large as the work budget
   (``FLOWAD_MAX_EXPLAIN_WORK``) allows, and the latency of single-record plain ``/score``
   requests sent one after another by another client meanwhile, next to their latency with no
   explanation running. Before explanations had a thread of their own, a plain request waited
   for the whole explanation.

The models are trained for a few epochs only (the cost of explaining does not depend on the fit)
on correlated Gaussian columns, in a temporary model store.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="flowad-explain-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

from pipelines import Detector  # noqa: E402 - BENTOML_HOME must be set first
from pipelines.registry.promotion import promote  # noqa: E402
from pipelines.registry.store import save_detector  # noqa: E402
from service.explaining import explain_work  # noqa: E402

BUDGET = 50_000  # FLOWAD_MAX_EXPLAIN_WORK's default (service/settings.py)


def table(columns: int, rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(columns, columns)) / columns**0.5
    return pd.DataFrame(rng.normal(size=(rows, columns)) @ mixing,
                        columns=[f"c{i}" for i in range(columns)])


def fitted(columns: int) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Detector(train_options={"max_epochs": 3}).fit(table(columns, 1000))


def in_process_ms(detector: Detector, columns: int, rounds: int) -> float:
    """Median milliseconds per record of explaining 10 records."""
    batch = table(columns, 10, seed=1)
    detector.explain(batch)  # warm up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        detector.explain(batch)
        times.append((time.perf_counter() - start) / len(batch) * 1000)
    return float(np.median(times))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_latencies(client: httpx.Client, url: str, body: bytes, stop: threading.Event,
                    out: list[float]) -> None:
    """Single-record plain requests one after another until ``stop``; their seconds."""
    while not stop.is_set():
        start = time.perf_counter()
        client.post(url, content=body, headers={"content-type": "application/json"})
        out.append(time.perf_counter() - start)


def served(detector_name: str, columns: int, rounds: int) -> None:
    port = free_port()
    env = {**os.environ, "FLOWAD_MODEL": detector_name, "FLOWAD_WORKERS": "1",
           "FLOWAD_SCORING": "local", "FLOWAD_RELOAD_INTERVAL": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("bentoml")), "serve", ".", "--port", str(port),
         "--host", "127.0.0.1"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=300) as explain_client, httpx.Client(timeout=300) as plain:
            for _ in range(240):
                try:
                    if plain.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            n_records = BUDGET // explain_work(1, columns)
            records = json.loads(table(columns, n_records, seed=2).to_json(orient="records"))
            one = json.dumps(records[:1]).encode()
            headers = {"content-type": "application/json"}
            quiet: list[float] = []
            for _ in range(50):
                start = time.perf_counter()
                plain.post(f"{base}/score", content=one, headers=headers)
                quiet.append(time.perf_counter() - start)
            alone = []
            for _ in range(rounds):
                start = time.perf_counter()
                explain_client.post(f"{base}/score?explain=true",
                                    content=json.dumps(records).encode(), headers=headers)
                alone.append(time.perf_counter() - start)
            explained, during, statuses = [], [], []
            for _ in range(rounds):
                stop, latencies = threading.Event(), []
                thread = threading.Thread(target=plain_latencies,
                                          args=(plain, f"{base}/score", one, stop, latencies))
                start = time.perf_counter()
                thread.start()
                answer = explain_client.post(f"{base}/score?explain=true",
                                             content=json.dumps(records).encode(),
                                             headers=headers)
                explained.append(time.perf_counter() - start)
                stop.set()
                thread.join()
                statuses.append(answer.status_code)
                during += latencies
            print(f"\nbentoml serve, {columns} columns, one worker, local scoring:")
            print(f"  explained request of {n_records} records ({explain_work(n_records, columns)}"
                  f" flow evaluations, budget {BUDGET}): median {np.median(alone):.2f} s alone, "
                  f"{np.median(explained):.2f} s beside the plain client, over {rounds} rounds "
                  f"(statuses {statuses})")
            print(f"  single-record plain /score, quiet: p50 {np.median(quiet) * 1000:.1f} ms, "
                  f"max {max(quiet) * 1000:.1f} ms ({len(quiet)} requests)")
            print(f"  single-record plain /score during the explanations: p50 "
                  f"{np.median(during) * 1000:.1f} ms, p99 {np.quantile(during, 0.99) * 1000:.1f}"
                  f" ms, max {max(during) * 1000:.1f} ms ({len(during)} requests)")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--columns", default="7,50,200",
                        help="column counts, comma-separated; the service runs the largest")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = sorted(int(c) for c in args.columns.split(","))
    print("in process, default detector (two flows), batches of 10 records, one thread:")
    detector = None
    for columns in widths:
        detector = fitted(columns)
        print(f"  {columns:4d} columns: {in_process_ms(detector, columns, args.rounds):7.1f} ms "
              f"per explained record ({explain_work(1, columns)} flow evaluations)")
    name = "explain-cost"
    promote(save_detector(detector, name))
    served(name, widths[-1], args.rounds)


if __name__ == "__main__":
    main()
