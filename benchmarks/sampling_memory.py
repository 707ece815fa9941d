"""Peak memory of the sampling pass of ``flowad train`` (a uniform sample of at most N rows of a
table streamed in chunks) for a 1M-row and a 10M-row Parquet dataset: it must not grow with the
table.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/sampling_memory.py [--rows 1000000,10000000]
[--max-rows 1000000]``.

Writes each dataset (files of 1M rows: an id and 4 float columns, ~40 bytes a row) under a
temporary folder, then runs the pass ``sample_rows(iter_table(dataset), max_rows)`` in a fresh
process per dataset and prints its peak RSS (``ru_maxrss``), the RSS after imports alone, the
rows kept and the time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PASS = """
import json, resource, sys, time
import pandas, pyarrow.dataset
from pipelines.io.sampling import sample_rows
from pipelines.io.tables import iter_table
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
sample, seen = sample_rows(iter_table(sys.argv[1]), int(sys.argv[2]))
print(json.dumps({"seen": seen, "kept": len(sample), "seconds": time.perf_counter() - start,
                  "imports_kib": before,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
FILE_ROWS = 1_000_000


def write_dataset(root: Path, rows: int) -> None:
    root.mkdir(parents=True)
    for k, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        rng = np.random.default_rng(k)
        columns = {"id": np.arange(start, start + n)}
        columns |= {name: rng.normal(size=n) for name in "abcd"}
        pq.write_table(pa.table(columns), root / f"part-{k:04d}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000")
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flowad-sampling-"))
    print(f"sample of at most {args.max_rows:,} rows")
    for rows in (int(r) for r in args.rows.split(",")):
        data = work / f"rows-{rows}"
        write_dataset(data, rows)
        run = subprocess.run([sys.executable, "-c", PASS, str(data), str(args.max_rows)],
                             capture_output=True, text=True, check=True)
        result = json.loads(run.stdout)
        print(f"{result['seen']:>11,} rows: peak RSS {result['peak_kib'] / 1024:6.0f} MiB "
              f"(after imports {result['imports_kib'] / 1024:.0f} MiB), kept "
              f"{result['kept']:,}, {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
