"""Microseconds per call of scoring a few JSON records: the frame path vs the records path.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/record_path.py [--rounds 7]``. Trains the
example detector (``examples/data/transactions.csv``, labelled frauds left out, id and label
excluded, as ``scripts/demo.sh`` does; fewer training steps, which change no scoring cost), then
times what ``POST /score`` does in its worker for requests of 1 to 4096 records parsed from JSON:

* frame: ``pd.DataFrame.from_records``, ``Detector.verdict_columns`` and
  ``TabularEncoder.unknown_counts`` (the service before the records path);
* records: ``Detector.record_verdicts`` with the frame-free path allowed at every size (the
  library takes it up to ``RECORD_PATH_ROWS`` records), to show where it stops paying.

Rounds interleave the two paths and the sizes; the table gives medians over rounds, one torch
thread (docs/design.md, "Measuring").
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines import Detector
from pipelines.io.labels import parse_labels
from pipelines.io.tables import read_table
from pipelines.tabular import encoder

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "data" / "transactions.csv"
SIZES = (1, 4, 16, 64, 256, 1024, 4096)


def train() -> tuple[Detector, list[dict[str, Any]]]:
    """The example detector and every example record as parsed JSON (id and label dropped)."""
    frame = read_table(EXAMPLE_DATA)
    normal = frame[parse_labels(frame, "is_fraud") == 0]
    detector = Detector(target_fpr=0.01, exclude=["transaction_id", "is_fraud"], progress=False,
                        train_options={"max_steps": 200}).fit(normal)
    features = frame.drop(columns=["transaction_id", "is_fraud"])
    return detector, json.loads(features.to_json(orient="records"))


def per_call_us(call: Callable[[], object], seconds: float) -> float:
    """Mean microseconds per call over about ``seconds`` of calls."""
    call()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        n += 1
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3, help="timed per path, size, round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    detector, records = train()
    limit = encoder.RECORD_PATH_ROWS
    encoder.RECORD_PATH_ROWS = max(SIZES)  # time the records path at every size
    schema, rng = detector.encoder_.schema_, np.random.default_rng(0)
    requests = {n: [records[i] for i in rng.choice(len(records), n, replace=False)]
                for n in SIZES}

    def frame_path(batch: list[dict[str, Any]]) -> object:
        frame = schema.records_frame(batch)
        return detector.verdict_columns(frame), detector.encoder_.unknown_counts(frame)

    for n, batch in requests.items():  # the two paths agree before they are timed
        (old, old_unknown), (new, new_unknown) = frame_path(batch), detector.record_verdicts(batch)
        assert old_unknown == new_unknown
        for column, values in old.items():
            np.testing.assert_array_equal(values, new[column], err_msg=f"{column}, {n} records")

    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for n, batch in requests.items():
            for path, call in (("frame", lambda b=batch: frame_path(b)),
                               ("records", lambda b=batch: detector.record_verdicts(b))):
                times.setdefault((path, n), []).append(per_call_us(call, args.seconds))
    print(f"us per call, medians of {args.rounds} interleaved rounds (records path used by the "
          f"library up to RECORD_PATH_ROWS = {limit})")
    print(f"{'records':>8} {'frame':>9} {'records':>9} {'ratio':>6}")
    for n in SIZES:
        old, new = (float(np.median(times[path, n])) for path in ("frame", "records"))
        print(f"{n:>8} {old:>9.0f} {new:>9.0f} {old / new:>6.2f}")


if __name__ == "__main__":
    main()
