"""Issue 26, item 2: calibration on small tables, split-conformal against cross-conformal.

For each table (the inliers of four ADBench datasets and the normal rows of the bundled
``examples/data/transactions.csv``), each training size (80, 200, 500 rows) and each seed
(0-4): draw that many normal rows to fit on, keep up to 3,000 other normal rows as the test,
fit one detector with ``calibration="split"`` (20% held out) and one with
``calibration="cross"`` (5 folds, every row), and measure the realised FPR on the test rows at
target FPR 0.01, 0.05 and 0.1 (``recalibrate``: same models, other alphas). ``cost`` times
fitting (once) and scoring (medians of interleaved runs) of both kinds of model, one torch
thread.

Run (one torch thread; ~15 min on a loaded 2-core machine)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/small_tables.py run OUT.json
    PYTHONPATH=$PWD .venv/bin/python benchmarks/small_tables.py table OUT.json
    PYTHONPATH=$PWD .venv/bin/python benchmarks/small_tables.py cost

Results: ``benchmarks/README.md``, "Small tables".
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.model.calibration import SmallCalibrationWarning
from pipelines.model.detector import Detector

REPO = Path(__file__).resolve().parents[1]
ADBENCH = REPO.parent / "shared" / "data" / "adbench"
DATASETS = ("38_thyroid", "6_cardio", "23_mammography", "2_annthyroid")
SIZES = (80, 200, 500)
ALPHAS = (0.01, 0.05, 0.1)
SEEDS = range(5)
TEST_ROWS = 3000


def tables() -> dict[str, pd.DataFrame]:
    """Normal rows of each table."""
    out = {}
    for name in DATASETS:
        data = np.load(ADBENCH / f"{name}.npz")
        inliers = data["X"][data["y"] == 0].astype(np.float64)
        out[name] = pd.DataFrame(inliers, columns=[f"f{j}" for j in range(inliers.shape[1])])
    transactions = pd.read_csv(REPO / "examples" / "data" / "transactions.csv",
                               dtype={"channel": "string"})
    out["transactions"] = transactions[transactions["is_fraud"] == 0].drop(
        columns=["transaction_id", "is_fraud"]).reset_index(drop=True)
    return out


def run_one(frame: pd.DataFrame, n: int, seed: int) -> list[dict[str, Any]]:
    """Realised FPRs of both calibrations on one draw of ``n`` training rows."""
    order = np.random.default_rng(seed).permutation(len(frame))
    train = frame.iloc[order[:n]]
    test = frame.iloc[order[n : n + TEST_ROWS]]
    rows = []
    for calibration in ("split", "cross"):
        detector = Detector(calibration=calibration, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallCalibrationWarning)
            detector.fit(train)
            for alpha in ALPHAS:
                detector.recalibrate(alpha)
                rows.append({"n": n, "seed": seed, "calibration": calibration, "alpha": alpha,
                             "n_calibration": detector.calibrator_.n_,
                             "can_flag": bool(np.isfinite(detector.threshold_)),
                             "fpr": float(detector.predict(test).mean()),
                             "n_test": len(test)})
    return rows


def run(out: Path) -> None:
    torch.set_num_threads(1)
    results = []
    for name, frame in tables().items():
        for n in SIZES:
            for seed in SEEDS:
                start = time.perf_counter()
                results += [{"table": name, **row} for row in run_one(frame, n, seed)]
                print(f"{name} n={n} seed={seed}: {time.perf_counter() - start:.1f} s",
                      flush=True)
                out.write_text(json.dumps(results))


def table(path: Path) -> None:
    """Mean realised FPR over tables and seeds (and the largest table's mean), per size,
    target and calibration."""
    frame = pd.DataFrame(json.loads(path.read_text()))
    print("realised FPR on held-out normal rows: mean over 5 tables x 5 seeds "
          "[lowest, highest table mean]; can flag: share of fits with a finite threshold")
    print(f"{'rows':>5} {'target':>7} | {'split-conformal':>28} {'flags':>6} | "
          f"{'cross-conformal':>28} {'flags':>6}")
    for (n, alpha), group in frame.groupby(["n", "alpha"]):
        cells = []
        for calibration in ("split", "cross"):
            part = group[group["calibration"] == calibration]
            by_table = part.groupby("table")["fpr"].mean()
            cells.append(f"{part['fpr'].mean():>8.4f} [{by_table.min():.4f}, "
                         f"{by_table.max():.4f}] {part['can_flag'].mean():>6.0%}")
        print(f"{n:>5} {alpha:>7} | {cells[0]:>35} | {cells[1]:>35}")


def cost() -> None:
    """Scoring time of a split- and a cross-conformal detector fitted on the same 200
    transactions: a 3000-row batch and one record, both verdict paths (frame and records)."""
    torch.set_num_threads(1)
    frame = tables()["transactions"]
    train, test = frame.iloc[:200], frame.iloc[200:3200]
    one = test.iloc[:1].to_dict(orient="records")
    detectors, fit_seconds = {}, {}
    for calibration in ("split", "cross"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallCalibrationWarning)
            start = time.perf_counter()
            detectors[calibration] = Detector(calibration=calibration).fit(train)
            fit_seconds[calibration] = time.perf_counter() - start
    timings: dict[str, dict[str, list[float]]] = {c: {"batch": [], "record": []}
                                                  for c in detectors}
    for _ in range(7):  # interleaved: A B A B
        for calibration, detector in detectors.items():
            start = time.perf_counter()
            detector.verdict_columns(test)
            timings[calibration]["batch"].append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(50):
                detector.record_verdicts(one)
            timings[calibration]["record"].append((time.perf_counter() - start) / 50)
    for calibration, detector in detectors.items():
        batch = np.median(timings[calibration]["batch"])
        record = np.median(timings[calibration]["record"])
        print(f"{calibration:>5}: {len(detector.flow_.components)} flows, fit in "
              f"{fit_seconds[calibration]:.1f} s; "
              f"{len(test) / batch:,.0f} rows/s in a {len(test)}-row batch, "
              f"{record * 1e3:.2f} ms for one record (record path)")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(Path(sys.argv[2]))
    elif sys.argv[1] == "table":
        table(Path(sys.argv[2]))
    else:
        cost()
