"""The benchmark protocols, and comparison with bundled results of ten classical detectors.

Two protocols (``PROTOCOLS``). **One-class** (clean training data) reimplements the protocol of
the project's reference script ``baselines.py`` so that a detector run here gets exactly the
metrics that script would give it. For each dataset and seed:

* inliers (``y == 0``) are shuffled with ``numpy.random.default_rng(seed).permutation``;
  ``floor(0.6 n_in)`` train, ``floor(0.2 n_in)`` calibration, the rest are test inliers;
  test = test inliers + all anomalies;
* a StandardScaler fitted on train standardises train, calibration and test;
* the detector is fitted on train only; calibration and test rows are scored with
  ``decision_function`` (higher = more anomalous);
* test metrics: ROC-AUC, average precision, and the realised FPR / TPR at the conformal
  threshold (:func:`pipelines.model.calibration.conformal_threshold`) for alpha in {0.01, 0.05};
  ``fit_s`` = seconds of ``fit``, ``rows_per_s`` = test rows / seconds of scoring the test rows.

**Unsupervised** (contaminated, unlabelled training data, as PyOD and ADBench evaluate):

* ``sklearn.model_selection.train_test_split(arange(n), test_size=0.3, stratify=y,
  random_state=seed)``: a stratified 70 % of all rows (anomalies included, unlabelled) is the
  training part, the other 30 % the test set;
* the training part is shuffled with ``numpy.random.default_rng(seed).permutation``; its last
  ``floor(0.2 n_train)`` rows are the calibration slice, the others are the rows the detector is
  fitted on (so 56 % / 14 % / 30 % of all rows). The slice is held out of ``fit`` because
  in-sample scores are biased low (kNN finds the row itself, a KDE its own kernel); this is also
  what :class:`~pipelines.model.detector.Detector` does with the rows it is given (20 %
  calibration);
* the StandardScaler is fitted on the fitted rows, as in the one-class protocol; ROC-AUC and AP
  as above;
* FPR / TPR: the conformal threshold of the (contaminated) calibration slice at each alpha, and
  the realised FPR on the *test inliers* and TPR on the test anomalies. The anomalies in the
  slice push the threshold up, so the realised FPR is expected below alpha: it measures that
  bias, not a guarantee.

Bundled reference results (``pipelines/data/baselines.csv``, one row per dataset x detector x
seed): IForest, ECOD, COPOD, KNN, LOF, OCSVM, HBOS, PCA (PyOD 3.6.7), GaussianMixture with
BIC-chosen k and KernelDensity with Scott bandwidth (scikit-learn 1.9.1), plus PyOD's batch-mode
ECOD-batch / COPOD-batch; numpy 2.4.6, Python 3.11, seeds 0, 1, 2. Datasets: the 14 "Classical"
tabular sets of ADBench (Han et al., NeurIPS 2022; github.com/Minqi824/ADBench, commit 3dac822),
most of them prepared by ODDS (Rayana 2016, odds.cs.stonybrook.edu). The datasets themselves are
not bundled. The unsupervised protocol's results of the same ten detectors (run by
:mod:`pipelines.evaluation.baselines` through this module) are bundled as
``pipelines/data/baselines-unsupervised.csv``.
"""

from __future__ import annotations

import csv
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from pipelines.model.calibration import conformal_threshold

__all__ = [
    "ALPHAS", "BASELINE_DETECTORS", "COLUMNS", "PROTOCOLS", "SEEDS", "AnomalyDetector",
    "dataset_name", "evaluate_scores", "load_bundled_baselines", "load_npz", "read_rows",
    "run_protocol", "split", "split_unsupervised", "summarize", "write_rows",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("one-class", "unsupervised")
SEEDS = (0, 1, 2)
ALPHAS = (0.01, 0.05)
_ALPHA_TAGS = ("01", "05")  # column suffixes for ALPHAS
COLUMNS = ["dataset", "detector", "seed", "roc_auc", "ap", "fpr_01", "tpr_01", "fpr_05", "tpr_05",
           "fit_s", "rows_per_s", "info", "error"]
_FLOAT_COLUMNS = ("roc_auc", "ap", "fpr_01", "tpr_01", "fpr_05", "tpr_05", "fit_s", "rows_per_s")
# The ten baselines that are compared and ranked (the bundled CSV also has ECOD-/COPOD-batch,
# whose transductive scoring breaks the protocol; they are left out of the comparison).
BASELINE_DETECTORS = ("IForest", "ECOD", "COPOD", "KNN", "LOF", "OCSVM", "HBOS", "PCA", "GMM",
                      "KDE")
_BUNDLED_CSV = {"one-class": Path(__file__).resolve().parent / "data" / "baselines.csv",
                "unsupervised": Path(__file__).resolve().parent / "data"
                / "baselines-unsupervised.csv"}

Row = dict[str, Any]


class AnomalyDetector(Protocol):
    """What ``run_protocol`` needs: ``fit`` on rows, ``decision_function`` higher = anomalous."""

    def fit(self, X: NDArray[np.float64], /) -> object: ...

    def decision_function(self, X: NDArray[np.float64], /) -> ArrayLike: ...


# ----------------------------------------------------------------------------- data and splits
def load_npz(path: str | os.PathLike[str]) -> tuple[NDArray[np.float64], NDArray[np.int_]]:
    """``X`` as float64 and ``y`` as 0/1 ints (1 = anomaly) from an ADBench ``.npz`` file."""
    with np.load(path, allow_pickle=False) as z:
        X = np.asarray(z["X"], dtype=np.float64)
        y = (np.asarray(z["y"]).ravel() != 0).astype(int)
    return X, y


def dataset_name(path: str | os.PathLike[str]) -> str:
    """File name without directory and extension, e.g. ``38_thyroid``."""
    return Path(path).stem


def split(y: ArrayLike, seed: int) -> tuple[NDArray[np.int_], NDArray[np.int_],
                                            NDArray[np.int_], NDArray[np.int_]]:
    """``(train_idx, cal_idx, test_idx, y_test)``: 60/20/20 of the shuffled inliers (floor
    sizes); test = test inliers followed by all anomalies."""
    y = np.asarray(y)
    inliers = np.flatnonzero(y == 0)
    anomalies = np.flatnonzero(y == 1)
    perm = np.random.default_rng(seed).permutation(inliers)
    n_in = len(inliers)
    n_train, n_cal = (6 * n_in) // 10, (2 * n_in) // 10  # integer floor, no float rounding
    train, cal, test_in = perm[:n_train], perm[n_train:n_train + n_cal], perm[n_train + n_cal:]
    test = np.concatenate([test_in, anomalies])
    y_test = np.concatenate([np.zeros(len(test_in), int), np.ones(len(anomalies), int)])
    return train, cal, test, y_test


def split_unsupervised(y: ArrayLike, seed: int) -> tuple[NDArray[np.int_], NDArray[np.int_],
                                                         NDArray[np.int_], NDArray[np.int_]]:
    """``(fit_idx, cal_idx, test_idx, y_test)`` of the unsupervised protocol: a stratified
    70/30 train/test split of all rows, then the last ``floor(0.2 n_train)`` of the shuffled
    train rows for calibration (see the module docstring)."""
    y = np.asarray(y)
    train, test = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y,
                                   random_state=seed)
    perm = np.random.default_rng(seed).permutation(train)
    n_fit = len(perm) - (2 * len(perm)) // 10
    return perm[:n_fit], perm[n_fit:], test, y[test]


def _check_protocol(kind: str) -> None:
    if kind not in PROTOCOLS:
        raise ValueError(f"unknown protocol {kind!r}; choose one of {PROTOCOLS}")


# ----------------------------------------------------------------------------- one run
def _finite(scores: ArrayLike, what: str) -> NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    bad = ~np.isfinite(s)
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())}/{len(s)} non-finite {what} scores")
    return s


def evaluate_scores(y_test: ArrayLike, test_scores: ArrayLike,
                    cal_scores: ArrayLike) -> dict[str, float]:
    """ROC-AUC, AP and conformal FPR/TPR at each alpha in ``ALPHAS``.

    Raises FloatingPointError if any score is not finite (the run then counts as failed).
    """
    y = np.asarray(y_test).ravel()
    s_cal = _finite(cal_scores, "calibration")
    s_test = _finite(test_scores, "test")
    out = {"roc_auc": float(roc_auc_score(y, s_test)),
           "ap": float(average_precision_score(y, s_test))}
    for alpha, tag in zip(ALPHAS, _ALPHA_TAGS, strict=True):
        flagged = s_test > conformal_threshold(s_cal, alpha)
        out[f"fpr_{tag}"] = float(flagged[y == 0].mean())
        out[f"tpr_{tag}"] = float(flagged[y == 1].mean())
    return out


def _run_one(row: Row, make_detector: Callable[[int], AnomalyDetector], seed: int,
             Xtr: NDArray[np.float64], Xcal: NDArray[np.float64], Xte: NDArray[np.float64],
             y_te: NDArray[np.int_]) -> None:
    """Fit, time and score one detector, filling ``row`` as far as it gets before any error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detectors' convergence chatter; failures raise
        det = make_detector(seed)
        t0 = time.perf_counter()
        det.fit(Xtr)
        row["fit_s"] = time.perf_counter() - t0
        s_cal = det.decision_function(Xcal)
        t0 = time.perf_counter()
        s_te = det.decision_function(Xte)
        row["rows_per_s"] = len(Xte) / max(time.perf_counter() - t0, 1e-9)
    row["info"] = str(getattr(det, "info_", ""))
    row.update(evaluate_scores(y_te, s_te, s_cal))  # all metrics or none


def run_protocol(X: ArrayLike, y: ArrayLike, make_detector: Callable[[int], AnomalyDetector], *,
                 seeds: Iterable[int] = SEEDS, name: str = "dataset",
                 detector: str = "flowad", kind: str = "one-class") -> Iterator[Row]:
    """Yield one row (keys ``COLUMNS``) per seed for ``make_detector(seed)`` on ``(X, y)``.

    A run that raises, or gives any non-finite score, yields NaN metrics with the message in
    ``error`` (``fit_s`` / ``rows_per_s`` are kept when measured), as the reference script does.

    Arguments:
        X, y: the dataset (``y == 1`` for anomalies).
        make_detector: a fresh detector for a seed.
        seeds: one run per seed.
        name, detector: the ``dataset`` and ``detector`` of the rows.
        kind: the protocol, ``"one-class"`` or ``"unsupervised"`` (module docstring).
    """
    _check_protocol(kind)
    splitter = split if kind == "one-class" else split_unsupervised
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    for seed in seeds:
        tr, cal, te, y_te = splitter(y, seed)
        sc = StandardScaler().fit(X[tr])
        # Transform each split on its own, exactly as the reference script does.
        Xtr, Xcal, Xte = sc.transform(X[tr]), sc.transform(X[cal]), sc.transform(X[te])
        row: Row = dict.fromkeys(COLUMNS, np.nan)
        row.update(dataset=name, detector=detector, seed=int(seed), info="", error="")
        try:
            _run_one(row, make_detector, int(seed), Xtr, Xcal, Xte, y_te)
        except Exception as e:  # one failed run must not stop the benchmark
            log.warning("%s / %s / seed %s failed", name, detector, seed, exc_info=True)
            row["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:500]
        yield row


# ----------------------------------------------------------------------------- CSV I/O
def read_rows(csv_path: str | os.PathLike[str]) -> list[Row]:
    """Rows of a results CSV: metrics as floats (NaN for blank/nan), seed as int."""
    with open(csv_path, newline="") as f:
        rows: list[Row] = list(csv.DictReader(f))
    for r in rows:
        for k in _FLOAT_COLUMNS:
            r[k] = float(r[k]) if r[k] not in ("", "nan", "NaN") else np.nan
        r["seed"] = int(r["seed"])
    return rows


def write_rows(csv_path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows with the ``COLUMNS`` header (floats keep full precision via repr)."""
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: float(r[k]) if k in _FLOAT_COLUMNS else r[k] for k in COLUMNS})


def load_bundled_baselines(kind: str = "one-class") -> list[Row]:
    """The bundled reference rows of the classical detectors under protocol ``kind`` (see the
    module docstring)."""
    _check_protocol(kind)
    return read_rows(_BUNDLED_CSV[kind])


# ----------------------------------------------------------------------------- summary
def _fmt(v: float, nd: int = 3) -> str:
    return "NaN" if v is None or np.isnan(v) else f"{v:.{nd}f}"


def dataset_sort_key(name: str) -> tuple[int, str]:
    head = name.split("_")[0]  # ADBench names start with a number: sort 2_ before 10_
    return (int(head) if head.isdigit() else 10**6, name)


def _seed_means(df: pd.DataFrame, key: str, dsets: Sequence[str],
                dets: Sequence[str]) -> pd.DataFrame:
    """Dataset x detector table of means over seeds; NaN if any seed failed or none ran."""
    m = df.groupby(["dataset", "detector"])[key].agg(lambda s: float(np.mean(s.to_numpy(float))))
    return m.unstack().reindex(index=list(dsets), columns=list(dets))


def _metric_table(M: pd.DataFrame) -> list[str]:
    """Per-dataset rows (bold best), mean over datasets, mean rank (ties averaged, failed last)."""
    dets = list(M.columns)
    lines = ["| dataset | " + " | ".join(dets) + " |", "|---" * (len(dets) + 1) + "|"]
    for ds, m in M.iterrows():
        v = m.to_numpy(float)
        best = np.nanmax(v) if np.isfinite(v).any() else np.nan
        cells = [f"**{_fmt(x)}**" if x == best else _fmt(x) for x in v]
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    means = []
    for det in dets:
        c = M[det].to_numpy(float)
        ok = ~np.isnan(c)
        s = _fmt(float(c[ok].mean())) if ok.any() else "NaN"
        means.append(s if ok.all() else f"{s} ({int(ok.sum())}/{len(c)})")
    lines.append("| **mean over datasets** | " + " | ".join(means) + " |")
    # A failed run (NaN) ranks below every finite value; equal values share their mean rank.
    ranks = M.fillna(-np.inf).rank(axis=1, ascending=False, method="average").mean(axis=0)
    lines.append("| **mean rank** (1 = best) | " + " | ".join(_fmt(r, 2) for r in ranks) + " |")
    return [*lines, ""]


def summarize(rows: Sequence[Mapping[str, Any]],
              baseline_rows: Sequence[Mapping[str, Any]] | None = None,
              kind: str = "one-class") -> str:
    """Markdown comparison of ``rows`` (our detectors) with the ten baselines.

    Baselines default to the bundled results of protocol ``kind`` and are restricted to the
    (dataset, seed) pairs in ``rows``, so every detector is compared on the same splits; with no
    ``rows`` the baselines are summarised alone. Cells are means over seeds; ranks are per
    dataset. A dataset without baseline results ranks the baselines last there, like failed
    runs.
    """
    if baseline_rows is None:
        baseline_rows = load_bundled_baselines(kind)
    ours = pd.DataFrame(list(rows), columns=COLUMNS)
    base = pd.DataFrame(list(baseline_rows), columns=COLUMNS)
    base = base[base["detector"].isin(BASELINE_DETECTORS)]
    our_dets = list(dict.fromkeys(ours["detector"]))
    clash = set(our_dets) & set(base["detector"])
    if clash:
        raise ValueError(f"detector names {sorted(clash)} clash with baseline names; rename")
    if len(ours):
        covered = pd.MultiIndex.from_frame(ours[["dataset", "seed"]])
        base = base[pd.MultiIndex.from_frame(base[["dataset", "seed"]]).isin(covered)]
    df = pd.concat([ours, base], ignore_index=True) if len(ours) else base
    for k in _FLOAT_COLUMNS:
        df[k] = df[k].astype(float)
    dets = our_dets + [d for d in BASELINE_DETECTORS if d in set(base["detector"])]
    dsets = sorted(df["dataset"].unique(), key=dataset_sort_key)
    seeds = sorted(int(s) for s in df["seed"].unique())

    lines = ["# Benchmark summary", "", f"Protocol: {kind}.", "",
             f"{len(dsets)} datasets, seeds {seeds}. Cells are means over seeds (NaN if a run "
             "failed); bold = best on the dataset. Means over datasets skip NaN (count shown); "
             "ranks are per dataset on the seed means, ties averaged, a failed run ranked last.",
             ""]
    for key, label in (("roc_auc", "ROC-AUC"), ("ap", "average precision")):
        lines += [f"## Mean {label} per dataset (test split)", ""]
        lines += _metric_table(_seed_means(df, key, dsets, dets))

    lines += ["## Conformal thresholds: realised test FPR vs alpha", "",
              "Means over all datasets and seeds that ran.", "",
              "| detector | mean abs(FPR-0.01) | mean FPR@0.01 | mean TPR@0.01 | "
              "mean abs(FPR-0.05) | mean FPR@0.05 | mean TPR@0.05 |", "|---" * 7 + "|"]
    for det in dets:
        ok = df[(df["detector"] == det) & df["fpr_05"].notna()]
        f1, t1, f5, t5 = (ok[k].to_numpy(float) for k in ("fpr_01", "tpr_01", "fpr_05", "tpr_05"))
        stats = [np.abs(f1 - 0.01).mean(), f1.mean(), t1.mean(),
                 np.abs(f5 - 0.05).mean(), f5.mean(), t5.mean()] if len(ok) else [np.nan] * 6
        cells = (_fmt(v, nd) for v, nd in zip(stats, (4, 4, 3, 4, 4, 3), strict=True))
        lines.append(f"| {det} | " + " | ".join(cells) + " |")

    lines += ["", "## Cost", "",
              "Fit seconds summed over datasets (each a mean over seeds); median test-scoring "
              "rows/s over all runs. Timings of our rows and the bundled ones come from "
              "different machines or loads.", "",
              "| detector | total fit s | median rows/s |", "|---|---|---|"]
    fit = _seed_means(df, "fit_s", dsets, dets)
    for det in dets:
        rps = df.loc[df["detector"] == det, "rows_per_s"].dropna().to_numpy(float)
        median = float(np.median(rps)) if len(rps) else np.nan
        lines.append(f"| {det} | {_fmt(float(np.nansum(fit[det])), 2)} | {_fmt(median, 0)} |")

    errors = df[df["error"].fillna("").astype(str) != ""]
    lines += ["", "## Errors", ""]
    lines += [f"- {r.dataset} / {r.detector} / seed {r.seed}: {r.error}"
              for r in errors.itertuples()] or ["None."]
    return "\n".join(lines) + "\n"
