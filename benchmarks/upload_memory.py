"""Peak memory of a ``/score_file`` upload against the size of the file.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/upload_memory.py [--rows 100000,1000000]``.

Trains a quick one-flow detector on the bundled example data (``benchmarks/soak.py`` does the
set-up), serves it with one front-end worker, then uploads CSV files of increasing row counts
(rows resampled from the example data) while sampling the worker's RSS every 20 ms. Prints, per
file: its size, the worker's RSS before, its peak during the request, the growth, the growth as
a share of the file, the time and the answer. Memory should grow with the rows of the response
(about 25 bytes of verdicts per row) and not with the file (before the fix, the upload sat in
memory about four times over: a 500 MiB file peaked at 2.6 GB).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.soak import Config, free_port, served, train_versions, wait_ready, worker_id

MIB = 2**20


def peak_rss(process: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    """Keeps ``peak[0]`` at the highest RSS of ``process`` until ``stop`` is set."""
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.02)


def front_worker(server_pid: int) -> psutil.Process:
    for process in psutil.Process(server_pid).children(recursive=True):
        if worker_id(process.cmdline()) is not None:
            return process
    raise RuntimeError("no front-end worker found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,300000,1000000",
                        help="comma-separated row counts of the uploaded files")
    args = parser.parse_args()
    cfg = Config(quick=True, workers=1)
    _, _, records = train_versions(cfg)
    work = Path(tempfile.mkdtemp(prefix="flowad-upload-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"{'rows':>9} {'file MiB':>9} {'RSS before':>11} {'peak':>8} {'growth':>8} "
          f"{'growth/file':>12} {'seconds':>8}  answer")
    with served(cfg, port, work / "serve.log") as server:
        wait_ready(base, server)
        worker = front_worker(server.pid)
        for rows in (int(r) for r in args.rows.split(",")):
            path = work / f"upload-{rows}.csv"
            records.sample(rows, replace=True, random_state=rows).to_csv(path, index=False)
            before = worker.memory_info().rss
            peak, stop = [before], threading.Event()
            sampler = threading.Thread(target=peak_rss, args=(worker, stop, peak), daemon=True)
            sampler.start()
            start = time.perf_counter()
            with open(path, "rb") as file:
                response = httpx.post(f"{base}/score_file", timeout=600,
                                      files={"file": (path.name, file, "text/csv")})
            seconds = time.perf_counter() - start
            stop.set()
            sampler.join()
            size = path.stat().st_size
            answer = (f"{response.status_code}, n={response.json()['n']}"
                      if response.status_code == 200 else
                      f"{response.status_code}: {response.text[:100]}")
            growth = peak[0] - before
            print(f"{rows:>9} {size / MIB:>9.1f} {before / MIB:>10.0f}M {peak[0] / MIB:>7.0f}M "
                  f"{growth / MIB:>7.0f}M {growth / size:>12.2f} {seconds:>8.1f}  {answer}")
    print(f"server log and files: {work}")


if __name__ == "__main__":
    main()
