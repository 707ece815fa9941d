"""Scoring speed at scale: the default detector against IsolationForest(100), calls of 1k to 1M
rows, fit seconds by table size, and ``flowad score`` end to end on a large Parquet file.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/scoring_scale.py [--parts scoring,fit,e2e]
[--datasets 6_cardio,32_shuttle] [--sizes 1000,10000,100000,1000000] [--rounds 3]
[--e2e-rows 10000000] [--data-dir DIR] [--output FILE.json]`` (the parts run replace
theirs in an existing FILE).

- **scoring**: in-process rows/s of the default ``Detector`` (seed 0, trained on all of the
  dataset's normals, standardised as the protocol standardises them), of
  ``IsolationForest(n_estimators=100)`` and of ``GaussianMixture(8)`` (full covariances, the
  next anchor), each fitted on the same rows; a call scores ``n`` rows drawn with replacement
  from the whole standardised dataset, as a DataFrame ``f0..f{d-1}``. The three sides are
  measured in turn, ``--rounds`` times (A B C A B C ...), each measurement repeating calls for
  at least ``--min-seconds``; medians. Target: flowad >= 1.5x IsolationForest at every size.
- **fit**: seconds of the default ``Detector().fit`` and of ``IsolationForest(100).fit`` on
  1k to 1M rows drawn with replacement from the normals (plus noise of 1e-3 standard
  deviations, so that a drawn table is no grid of the original's values), one measurement
  each; the target is <= 30x on all of ``6_cardio``'s normals (the first row of its table).
- **e2e**: ``flowad score TAG FILE.parquet --output OUT.parquet`` in a child process on a
  Parquet file of ``--e2e-rows`` rows (``6_cardio``-shaped, written once to a temporary
  directory) against a child process that runs IsolationForest through the same read, check,
  chunk and write pipeline (:func:`pipelines.batch.local.score_file` with an adapter whose
  verdicts are IsolationForest's); rows/s and the child's peak RSS, interleaved
  ``--e2e-rounds`` times. Target: >= 1x.

Every process runs one torch / OpenMP thread (``OMP_NUM_THREADS=1`` before numpy loads;
children inherit it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy, torch and scikit-learn load; children too
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from pipelines import Detector
from pipelines.evaluation import protocol

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared/data/adbench"
SEED = 0


def load(data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The dataset standardised on its normals, and its normals."""
    X, y = protocol.load_npz(data_dir / f"{name}.npz")
    scaler = StandardScaler().fit(X[y == 0])
    return scaler.transform(X), scaler.transform(X[y == 0])


def frame(rows: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[f"f{i}" for i in range(rows.shape[1])])


def rows_per_second(score: Callable[[], object], n_rows: int, min_seconds: float) -> float:
    """Rows/s of ``score`` (on ``n_rows`` rows), repeated for at least ``min_seconds``."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or calls == 0:
        score()
        calls += 1
    return calls * n_rows / elapsed


def scoring(args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """The scoring table of one dataset."""
    everything, normals = load(args.data_dir, name)
    train = frame(normals)
    detector = Detector(random_state=SEED, progress=False).fit(train)
    forest = IsolationForest(n_estimators=100, n_jobs=1, random_state=SEED).fit(normals)
    mixture = GaussianMixture(8, random_state=SEED).fit(normals)
    rng = np.random.default_rng(SEED)
    rows = []
    for n in args.sizes:
        calls = frame(everything[rng.integers(0, len(everything), n)])
        values = calls.to_numpy()
        sides: dict[str, Callable[[], object]] = {
            "flowad": lambda calls=calls: detector.decision_function(calls),
            "iforest": lambda values=values: forest.score_samples(values),
            "gmm": lambda values=values: mixture.score_samples(values),
        }
        measured: dict[str, list[float]] = {side: [] for side in sides}
        for round_ in range(args.rounds):
            for side, call in sides.items():
                measured[side].append(rows_per_second(call, n, args.min_seconds))
            print(f"  {name} {n:>9,} rows, round {round_ + 1}/{args.rounds}: "
                  + ", ".join(f"{side} {v[-1]:,.0f}/s" for side, v in measured.items()),
                  flush=True)
        median = {side: statistics.median(v) for side, v in measured.items()}
        rows.append({"dataset": name, "rows": n,
                     **{f"{side}_rows_per_s": v for side, v in median.items()},
                     "flowad_over_iforest": median["flowad"] / median["iforest"]})
    return rows


def fit_table(args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """Fit seconds of the default detector and of IsolationForest, by table size."""
    _, normals = load(args.data_dir, name)
    rng = np.random.default_rng(SEED)
    rows = []
    for n in [len(normals), *args.fit_sizes]:
        drawn = (normals if n == len(normals) else normals[rng.integers(0, len(normals), n)]
                 + rng.normal(0, 1e-3, (n, normals.shape[1])))
        start = time.perf_counter()
        detector = Detector(random_state=SEED, progress=False).fit(frame(drawn))
        flowad = time.perf_counter() - start
        start = time.perf_counter()
        IsolationForest(n_estimators=100, n_jobs=1, random_state=SEED).fit(drawn)
        forest = time.perf_counter() - start
        rows.append({"dataset": name, "rows": n, "flowad_s": flowad, "iforest_s": forest,
                     "ratio": flowad / forest,
                     "epochs": len(detector.history_) // detector.metrics_["members"]})
        print(f"  fit {name} {n:>9,} rows: flowad {flowad:.1f} s, IsolationForest "
              f"{forest:.2f} s ({flowad / forest:.0f}x)", flush=True)
    return rows


# ----------------------------------------------------------------------------- end to end
class ForestVerdicts:
    """IsolationForest behind the detector surface :func:`score_file` uses, so that it is read,
    checked, chunked and written exactly as the detector's verdicts are."""

    def __init__(self, detector: Detector, forest: IsolationForest) -> None:
        self.schema, self.input_columns = detector.schema, detector.input_columns
        self.forest = forest
        self.threshold = float(np.quantile(-forest.score_samples(
            detector.reference_records_[detector.input_columns].to_numpy()), 0.99))

    def verdicts(self, records: pd.DataFrame) -> pd.DataFrame:
        score = -self.forest.score_samples(records.to_numpy(dtype=np.float64))
        return pd.DataFrame({"score": score, "log_likelihood": -score, "p_value": np.nan,
                             "is_anomaly": score > self.threshold}, index=records.index)


def forest_child(model_dir: str, data: str, output: str) -> None:
    """The IsolationForest side of ``e2e``: run in a child process, prints rows and peak RSS."""
    import pickle

    from pipelines.batch.local import score_file
    from pipelines.io.writer import TableWriter

    with open(Path(model_dir) / "forest.pkl", "rb") as f:
        adapter = pickle.load(f)
    with TableWriter(output) as writer:
        n, _ = score_file(adapter, data, writer, chunk_rows=50_000, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": n, "max_rss_kib": peak}))


FLOWAD_CHILD = """
import json, resource, runpy, sys
sys.argv = ["flowad", "score", sys.argv[1], sys.argv[2], "--output", sys.argv[3]]
try:
    runpy.run_module("pipelines.cli", run_name="__main__")
except SystemExit as done:
    if done.code:
        raise
print(json.dumps({"max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def write_parquet(path: Path, everything: np.ndarray, n: int) -> None:
    rng = np.random.default_rng(SEED)
    names = [f"f{i}" for i in range(everything.shape[1])]
    with pq.ParquetWriter(path, pa.schema([(c, pa.float64()) for c in names])) as writer:
        for start in range(0, n, 1_000_000):
            rows = everything[rng.integers(0, len(everything), min(1_000_000, n - start))]
            writer.write_table(pa.Table.from_arrays(list(rows.T), names=names))


def end_to_end(args: argparse.Namespace) -> list[dict[str, Any]]:
    import pickle

    from pipelines.registry.store import save_detector

    name = args.datasets[0]
    everything, normals = load(args.data_dir, name)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")
        detector = Detector(random_state=SEED, progress=False).fit(frame(normals))
        tag = save_detector(detector, "scale-bench")
        forest = IsolationForest(n_estimators=100, n_jobs=1, random_state=SEED).fit(normals)
        with open(Path(tmp) / "forest.pkl", "wb") as f:
            pickle.dump(ForestVerdicts(detector, forest), f)
        data = Path(tmp) / "table.parquet"
        print(f"  writing {args.e2e_rows:,} rows to {data} ...", flush=True)
        write_parquet(data, everything, args.e2e_rows)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        commands = {
            "flowad": [sys.executable, "-c", FLOWAD_CHILD, tag, str(data),
                       str(Path(tmp) / "flowad.parquet")],
            "iforest": [sys.executable, __file__, "--forest-child", tmp, str(data),
                        str(Path(tmp) / "iforest.parquet")],
        }
        measured: dict[str, list[tuple[float, float]]] = {side: [] for side in commands}
        for round_ in range(args.e2e_rounds):
            for side, command in commands.items():
                start = time.perf_counter()
                done = subprocess.run(command, env=env, check=True, capture_output=True,
                                      text=True)
                elapsed = time.perf_counter() - start
                rss = json.loads(done.stdout.strip().splitlines()[-1])["max_rss_kib"] / 1024
                measured[side].append((args.e2e_rows / elapsed, rss))
                print(f"  e2e round {round_ + 1}: {side} {args.e2e_rows / elapsed:,.0f} rows/s, "
                      f"peak RSS {rss:,.0f} MiB", flush=True)
    median = {side: (statistics.median(r for r, _ in v), max(m for _, m in v))
              for side, v in measured.items()}
    return [{"dataset": name, "rows": args.e2e_rows,
             "flowad_rows_per_s": median["flowad"][0], "flowad_peak_rss_mib": median["flowad"][1],
             "iforest_rows_per_s": median["iforest"][0],
             "iforest_peak_rss_mib": median["iforest"][1],
             "flowad_over_iforest": median["flowad"][0] / median["iforest"][0]}]


# ----------------------------------------------------------------------------- report
def markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:,.3g}" if isinstance(v, float) and v < 100
                                       else f"{v:,.0f}" if isinstance(v, float)
                                       else f"{v:,}" if isinstance(v, int) else str(v)
                                       for v in row.values()) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="scoring,fit,e2e")
    parser.add_argument("--datasets", default="6_cardio,32_shuttle")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--fit-sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--e2e-rows", type=int, default=10_000_000)
    parser.add_argument("--e2e-rounds", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--forest-child", nargs=3, metavar=("DIR", "DATA", "OUTPUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.parts = args.parts.split(",")
    args.datasets = args.datasets.split(",")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.fit_sizes = [int(s) for s in args.fit_sizes.split(",") if s]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    if args.forest_child:
        forest_child(*args.forest_child)
        return
    tables: dict[str, list[dict[str, Any]]] = {}
    if "scoring" in args.parts:
        tables["scoring"] = [row for name in args.datasets for row in scoring(args, name)]
    if "fit" in args.parts:
        tables["fit"] = [row for name in args.datasets[:1] for row in fit_table(args, name)]
    if "e2e" in args.parts:
        tables["e2e"] = end_to_end(args)
    for part, rows in tables.items():
        print(f"\n## {part}\n\n{markdown(rows)}")
    if args.output:  # the parts of this run replace theirs in an earlier run's file
        earlier = json.loads(args.output.read_text()) if args.output.exists() else {}
        args.output.write_text(json.dumps({**earlier, **tables}, indent=2) + "\n")


if __name__ == "__main__":
    main()
