"""HTTP scoring throughput and latency of ``bentoml serve`` vs in-process ``score_samples``.

Run: ``.venv/bin/python benchmarks/bench_service.py [--requests 200]``. Trains a detector on the
bundled example data into a temporary model store, starts the service on a free port, and
prints records/s with p50/p99 latency for requests of 1, 100 and 1000 records at concurrency 1
and 8, next to in-process ``score_samples`` rows/s measured in the same run: on batches of the
request's size with one torch thread per service worker (the like-for-like reference: a worker
scores each request on its own, with one thread), and in one call on 100k rows (the best the
library does on this machine).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="flowad-bench-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

from pipelines import Detector  # noqa: E402 - BENTOML_HOME must be set first
from pipelines.io.tables import read_table  # noqa: E402
from pipelines.registry.store import save_detector  # noqa: E402

SIZES = (1, 100, 1000)


def rows_per_second(detector: Detector, batch: pd.DataFrame, repeats: int) -> float:
    """In-process ``score_samples`` rows/s over ``repeats`` calls on ``batch``."""
    start = time.perf_counter()
    for _ in range(repeats):
        detector.score_samples(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_session(url: str, body: bytes, n_requests: int) -> tuple[float, float, list[float]]:
    """One client: its own connection, one warm-up request, then ``n_requests`` in a row.
    Returns (start, end, latencies in seconds)."""
    with httpx.Client(timeout=120) as client:
        headers = {"content-type": "application/json"}
        client.post(url, content=body, headers=headers).raise_for_status()
        latencies = []
        start = time.perf_counter()
        for _ in range(n_requests):
            sent = time.perf_counter()
            client.post(url, content=body, headers=headers).raise_for_status()
            latencies.append(time.perf_counter() - sent)
        return start, time.perf_counter(), latencies


def run_load(url: str, body: bytes, n_requests: int, concurrency: int) -> tuple[float, ...]:
    """``concurrency`` independent client processes share ``n_requests``; returns
    (records/s, p50 ms, p99 ms). Processes, not threads: a threaded client's own GIL
    contention capped small-request rates at a fifth of what the server answers."""
    n_records = len(json.loads(body))
    per_client = max(1, n_requests // concurrency)
    with multiprocessing.get_context("fork").Pool(concurrency) as pool:
        sessions = pool.starmap(client_session, [(url, body, per_client)] * concurrency)
    elapsed = max(end for _, end, _ in sessions) - min(start for start, _, _ in sessions)
    ms = np.concatenate([latencies for _, _, latencies in sessions]) * 1000
    return len(ms) * n_records / elapsed, np.percentile(ms, 50), np.percentile(ms, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="requests per cell")
    parser.add_argument("--workers", type=int, default=1, help="FLOWAD_WORKERS")
    parser.add_argument("--scoring", choices=["auto", "local", "scorer"], default="auto",
                        help="FLOWAD_SCORING: score in the front workers or in the Scorer")
    args = parser.parse_args()

    frame = read_table(REPO / "examples/data/transactions.csv")
    frame = frame[frame.is_fraud == 0]
    detector = Detector(exclude=["transaction_id", "is_fraud"],
                        train_options={"max_epochs": 30}).fit(frame)
    tag = save_detector(detector, "bench")
    features = frame.drop(columns=["transaction_id", "is_fraud"])
    big = features.sample(100_000, replace=True, random_state=0).reset_index(drop=True)
    detector.score_samples(big.iloc[:1000])
    torch_threads = torch.get_num_threads()
    big_batch = {}
    for threads in sorted({1, torch_threads}):
        torch.set_num_threads(threads)
        big_batch[threads] = rows_per_second(detector, big, repeats=1)
        print(f"in-process score_samples, one call on 100k rows, torch threads {threads}: "
              f"{big_batch[threads]:,.0f} rows/s")
    # Each worker scores each request on its own with one torch thread: the like-for-like
    # reference is one call per request-sized batch, on as many threads as there are workers.
    torch.set_num_threads(args.workers)
    same_batch = {}
    for size in SIZES:
        same_batch[size] = rows_per_second(detector, features.iloc[:size], 20 + 20_000 // size)
        print(f"in-process score_samples, calls of {size} rows, torch threads {args.workers}: "
              f"{same_batch[size]:,.0f} rows/s")
    torch.set_num_threads(torch_threads)
    best = max(big_batch.values())

    port = free_port()
    env = {**os.environ, "FLOWAD_MODEL": tag, "FLOWAD_SCORING": args.scoring,
           "FLOWAD_WORKERS": str(args.workers)}
    print(f"FLOWAD_SCORING={args.scoring} FLOWAD_WORKERS={args.workers}")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("bentoml")), "serve", ".", "--port", str(port),
         "--host", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("service did not become ready")
            time.sleep(0.5)
        print(f"{'records/request':>16} {'concurrency':>11} {'records/s':>10} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'vs same batch':>13} {'vs 100k best':>12}")
        for size in SIZES:
            body = features.iloc[:size].to_json(orient="records").encode()
            for concurrency in (1, 8):
                n = max(8 * concurrency, args.requests // (4 if size == 1000 else 1))
                rate, p50, p99 = run_load(f"{base}/score", body, n, concurrency)
                print(f"{size:>16} {concurrency:>11} {rate:>10,.0f} {p50:>8.1f} {p99:>8.1f} "
                      f"{rate / same_batch[size]:>12.0%} {rate / best:>12.0%}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
