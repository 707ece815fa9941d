"""Issue 19, target 4: can a declared contamination share fix the conformal threshold's bias
under the unsupervised protocol?

The calibration slice of the unsupervised protocol holds anomalies, so its conformal threshold
sits too high and the realised FPR on test inliers falls below alpha. A user who knows (or
guesses, as PyOD's ``contamination=0.1`` does) the anomaly share ``p`` could drop the
``ceil(p n)`` highest calibration scores before taking the conformal quantile. That is right
only if every calibration anomaly scores above the inliers' threshold; this measures what it
gives when they do not.

Run (one thread; ~4 min on one core per training setting)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/contaminated_calibration.py TRIM_SHARE OUT.json
    PYTHONPATH=$PWD .venv/bin/python benchmarks/contaminated_calibration.py summarize OUT.json

``TRIM_SHARE`` is the training's trimmed-likelihood share (0: the default). Results:
``results/unsupervised/calibration/``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from pipelines.evaluation import protocol
from pipelines.model.calibration import conformal_threshold
from pipelines.model.detector import Detector

DATA = Path(__file__).resolve().parents[2] / "shared/data/adbench"


def run_one(X: np.ndarray, y: np.ndarray, seed: int, trim_share: float) -> dict[str, Any]:
    """Realised FPR / TPR at alpha 0.01 and 0.05 of the plain threshold and of thresholds from
    the calibration slice trimmed by 0.1 and by the true anomaly share of the training part."""
    train, cal, test, y_test = protocol.split_unsupervised(y, seed)
    scaler = StandardScaler().fit(X[train])
    options = {"train_options": {"trim_share": trim_share}} if trim_share else {}
    detector = Detector("realnvp", random_state=seed, calibration_fraction=0.0, **options)
    detector.fit(scaler.transform(X[train]))
    cal_scores = np.sort(detector.decision_function(scaler.transform(X[cal])))
    test_scores = detector.decision_function(scaler.transform(X[test]))
    p_true = float(y[train].mean())
    record: dict[str, Any] = {"seed": seed, "p_true": p_true,
                              "auc": roc_auc_score(y_test, test_scores)}
    for alpha in (0.01, 0.05):
        for name, share in (("plain", 0.0), ("p0.1", 0.1), ("ptrue", p_true)):
            kept = cal_scores[: len(cal_scores) - math.ceil(share * len(cal_scores))]
            threshold = conformal_threshold(kept, alpha)
            record[f"fpr{alpha}_{name}"] = float(np.mean(test_scores[y_test == 0] > threshold))
            record[f"tpr{alpha}_{name}"] = float(np.mean(test_scores[y_test == 1] > threshold))
    return record


def run(trim_share: float, output: Path) -> None:
    torch.set_num_threads(1)
    records = []
    for path in sorted(DATA.glob("*.npz"), key=lambda p: protocol.dataset_sort_key(p.stem)):
        X, y = protocol.load_npz(path)
        for seed in protocol.SEEDS:
            records.append({"dataset": path.stem, **run_one(X, y, seed, trim_share)})
            output.write_text(json.dumps(records))
            print(records[-1], flush=True)


def summarize(path: Path) -> str:
    runs = pd.DataFrame(json.loads(path.read_text()))
    columns = ["p_true", *(f"{metric}0.05_{name}" for name in ("plain", "p0.1", "ptrue")
                           for metric in ("fpr", "tpr"))]
    per_dataset = runs.groupby("dataset")[columns].mean()
    return (per_dataset.round(3).to_string() + "\n\nmean over datasets:\n"
            + per_dataset.mean().round(4).to_string() + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "summarize":
        print(summarize(Path(sys.argv[2])))
    else:
        run(float(sys.argv[1]), Path(sys.argv[2]))
