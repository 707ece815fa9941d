"""A label-free criterion for choosing detectors (issue 19): does it agree with test ROC-AUC?

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/synthetic_criterion.py [DATASETS]``
(comma-separated names; default all 14; ~4 min on one core).

Per dataset and seed of the one-class protocol, the default detector and the default with its
second mixture member trained on Gaussian-smoothed rows (sigma 0.1, ``sigma_mixture.py``) are
fitted on the training split. The criterion uses only the calibration split (normal rows): the
ROC-AUC of calibration rows against synthetic anomalies made from them by replacing one random
feature with that feature's value in a random training row (a record off the joint structure).
Printed per run as JSON, then the paired differences (smoothed minus default) of the criterion
and of the test ROC-AUC and their correlation.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import torch
from sigma_mixture import DATA, with_second_member_sigma  # this folder: a script's sys.path[0]
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from pipelines.evaluation import protocol
from pipelines.evaluation.benchmark import ProtocolDetector

SIGMAS = (0.0, 0.1)


def synthetic_anomalies(normal: np.ndarray, train: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """Each normal row with one random feature replaced by that feature of a random training
    row; rows that did not change are dropped.

    Arguments:
        normal: the rows to perturb.
        train: where replacement values come from.
        rng: the source of the choices.
    """
    out = normal.copy()
    feature = rng.integers(0, normal.shape[1], len(normal))
    out[np.arange(len(out)), feature] = train[rng.integers(0, len(train), len(out)), feature]
    return out[np.any(out != normal, axis=1)]


def main() -> None:
    torch.set_num_threads(1)
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else sorted(
        (p.stem for p in DATA.glob("*.npz")), key=protocol.dataset_sort_key)
    runs = []
    for name in names:
        X, y = protocol.load_npz(DATA / f"{name}.npz")
        for seed in protocol.SEEDS:
            train, cal, test, y_test = protocol.split(y, seed)
            scaler = StandardScaler().fit(X[train])
            X_train, X_cal, X_test = (scaler.transform(X[i]) for i in (train, cal, test))
            synthetic = synthetic_anomalies(X_cal, X_train, np.random.default_rng(100 + seed))
            labels = np.r_[np.zeros(len(X_cal)), np.ones(len(synthetic))]
            for sigma in SIGMAS:
                with_second_member_sigma(sigma)
                detector = ProtocolDetector("realnvp", seed).fit(X_train)
                scores = np.r_[detector.decision_function(X_cal),
                               detector.decision_function(synthetic)]
                runs.append({"dataset": name, "seed": seed, "sigma": sigma,
                             "criterion": roc_auc_score(labels, scores),
                             "test_auc": roc_auc_score(y_test,
                                                       detector.decision_function(X_test))})
                print(json.dumps(runs[-1]), flush=True)
    table = pd.DataFrame(runs).pivot_table(index=["dataset", "seed"], columns="sigma",
                                           values=["criterion", "test_auc"])
    d_criterion = table["criterion"][SIGMAS[1]] - table["criterion"][SIGMAS[0]]
    d_test = table["test_auc"][SIGMAS[1]] - table["test_auc"][SIGMAS[0]]
    print(f"criterion, smoothed minus default: mean {d_criterion.mean():+.4f}, better in "
          f"{int((d_criterion > 0).sum())} of {len(d_criterion)} runs")
    print(f"test ROC-AUC, smoothed minus default: mean {d_test.mean():+.4f}")
    print(f"correlation of the paired differences: {np.corrcoef(d_criterion, d_test)[0, 1]:.3f}")


if __name__ == "__main__":
    main()
