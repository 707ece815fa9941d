"""Rows per second of ``flowad score --engine spark`` on Spark ``local[2]`` next to the local
engine on the same Parquet dataset, and the Spark Python workers' peak memory.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/spark_scoring.py [--rows 2000000]``.

Writes a dataset of ``--rows`` rows (4 numeric columns and an id, 8 files in two ``day=``
partitions) under a temporary folder, trains the default detector briefly (a two-flow RealNVP
mixture; scoring cost does not depend on how long it trained), then scores the dataset into
Parquet: once with the local engine in this process with one torch thread, and twice with
Spark (two single-threaded Python workers, on a session started beforehand whose start-up is
printed separately): the first job pays for starting the Python workers, importing flowad and
loading the model, the second reuses them. The ratio is the second job's rows/s over the local
engine's.
Memory: the peak RSS of each Spark Python worker process (the ``pyspark.daemon`` and its
forked workers, sampled every 50 ms) and of the JVM.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="flowad-bench-"))

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from typer.testing import CliRunner

from pipelines.batch import spark
from pipelines.cli import app
from pipelines.model.detector import Detector
from pipelines.registry.store import save_detector

MIB = 2**20


def records(n: int, start: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame({"id": np.arange(start, start + n), "a": a,
                         "b": 0.5 * a + rng.normal(size=n), "c": np.exp(rng.normal(size=n)),
                         "d": rng.poisson(3, size=n).astype(np.float64)})


def write_dataset(root: Path, rows: int, files: int = 8) -> None:
    per_file = rows // files
    for k in range(files):
        folder = root / f"day={k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(records(per_file, k * per_file, seed=k),
                                     preserve_index=False)
        pq.write_table(table, folder / f"part-{k}.parquet")


def watch_workers(stop: threading.Event, peaks: dict[int, tuple[str, int]]) -> None:
    """Keeps the peak RSS of every process below this one (JVM, Python workers)."""
    me = psutil.Process()
    while not stop.is_set():
        for process in me.children(recursive=True):
            try:
                name = "jvm" if "java" in process.name() else "python worker"
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            peaks[process.pid] = (name, max(rss, peaks.get(process.pid, (name, 0))[1]))
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="flowad-spark-bench-"))
    data = work / "records"
    write_dataset(data, args.rows)
    tag = save_detector(Detector(exclude=["id", "day"], train_options={"max_steps": 200})
                        .fit(records(20_000, 0, seed=99)), "spark-bench")

    start = time.perf_counter()
    result = CliRunner().invoke(app, ["score", tag, str(data), "--output",
                                      str(work / "local.parquet")])
    local_seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output

    start = time.perf_counter()
    session = spark.session("local[2]", "flowad-bench")
    session.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - start
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=watch_workers, args=(stop, peaks), daemon=True)
    watcher.start()
    seconds = []
    for run in ("cold", "warm"):
        start = time.perf_counter()
        spark.write_scored(spark.score(spark.read(session, str(data)), tag),
                           str(work / f"spark-{run}.parquet"))
        seconds.append(time.perf_counter() - start)
    cold_seconds, spark_seconds = seconds
    stop.set()
    watcher.join()
    session.stop()
    assert pq.ParquetDataset(work / "spark-warm.parquet").read().num_rows == args.rows

    local_rate, spark_rate = args.rows / local_seconds, args.rows / spark_seconds
    print(f"rows: {args.rows:,} ({len(list(data.rglob('*.parquet')))} Parquet files), "
          f"cpus: {os.cpu_count()}")
    print(f"local engine (1 torch thread): {local_seconds:6.1f} s  {local_rate:9,.0f} rows/s")
    print(f"spark local[2], first job:     {cold_seconds:6.1f} s  "
          f"{args.rows / cold_seconds:9,.0f} rows/s (Python workers start, import flowad and "
          f"load the model; session start {startup:.1f} s, not included)")
    print(f"spark local[2], second job:    {spark_seconds:6.1f} s  {spark_rate:9,.0f} rows/s "
          f"(workers and model reused)")
    print(f"ratio spark (second job) / local: {spark_rate / local_rate:.2f}")
    workers = sorted(rss for name, rss in peaks.values() if name == "python worker")
    jvm = [rss for name, rss in peaks.values() if name == "jvm"]
    print(f"peak RSS per Spark Python worker process (MiB): "
          f"{', '.join(f'{rss / MIB:.0f}' for rss in workers)}")
    if jvm:
        print(f"peak RSS of the JVM (driver + executor): {max(jvm) / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
