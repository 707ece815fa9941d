"""Cross-conformal calibration: every training row calibrates, for tables too small to hold out
a calibration split (the *calibration* contract, docs/design.md).

Split-conformal at a target FPR ``alpha`` needs ``ceil(1/alpha) - 1`` held-out rows (99 at 1%,
so ~500 training rows with a 20% split); with fewer its threshold is +inf. Here the rows are
split into ``K`` folds; fold ``k``'s model is trained on the other folds and scores fold ``k``'s
rows, so every row has an out-of-fold score ``s_k(i)``. A new record ``x`` is scored by every
fold's model, ``s_k(x)``, and its p-value is (Vovk, "Cross-conformal predictors", 2015)

    p(x) = (1 + sum_k #{i in fold k : s_k(i) >= s_k(x)}) / (n + 1),

flagged when ``p(x) <= alpha``. The detector's score stays an exact log-likelihood: its flow is
the equal-weight mixture of the fold models (an exact density), while the p-value compares
each fold's model with its own held-out rows.

Guarantee: for a normal record exchangeable with the training rows, the argument of Barber,
Candès, Ramdas and Tibshirani ("Predictive inference with the jackknife+", Annals of
Statistics 2021, Theorem 4: K-fold CV+) applied to these one-class scores gives
``P(p(x) <= alpha) <= 2 alpha + min(2 (1 - 1/K) / (n/K + 1), (1 - K/n) / (K + 1))``; in
practice the rate is close to ``alpha`` (Vovk 2015; measured in benchmarks/README.md, "Small
tables"). One departure from the theorem's conditions: the fold models share one encoder
(scaling, support, categories) fitted on every row, so that their mixture is one density.

``threshold_`` is the split-conformal threshold of the pooled out-of-fold scores (the
``ceil((n+1)(1-alpha))``-th smallest): what a score is compared with for display and drift,
close to but not the rule ``predict`` applies, which needs every fold's score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp

from pipelines.model.calibration import conformal_threshold

FOLDS = 5  # K: the folds of every row, and K times the members in the detector's mixture

__all__ = ["FOLDS", "CrossConformalCalibrator", "fold_log_likelihoods", "fold_of_rows",
           "fold_parts"]


def fold_of_rows(n: int, folds: int, seed: int) -> NDArray[np.intp]:
    """Each row's fold, ``0 .. folds - 1``: a seeded permutation cut into near-equal parts.

    Arguments:
        n: rows.
        folds: ``K``.
        seed: the split's seed.
    """
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.intp)
    for k, rows in enumerate(np.array_split(order, folds)):
        fold[rows] = k
    return fold


def fold_parts(n: int, validation_fraction: float, seed: int
               ) -> tuple[NDArray[np.intp], list[tuple[NDArray[np.intp], NDArray[np.intp]]]]:
    """Each row's fold, and per fold the rows its model trains and validates on: the other
    folds' rows, a seeded ``validation_fraction`` of them held out for early stopping.

    Arguments:
        n: rows.
        validation_fraction: share of a fold model's rows held out for validation.
        seed: the split's seed (fold ``k``'s validation split: ``seed + k``).
    """
    fold = fold_of_rows(n, FOLDS, seed)
    parts = []
    for k in range(FOLDS):
        rest = np.flatnonzero(fold != k)
        order = np.random.default_rng(seed + k).permutation(len(rest))
        n_validation = round(validation_fraction * len(rest))
        parts.append((rest[order[n_validation:]], rest[order[:n_validation]]))
    return fold, parts


def fold_log_likelihoods(per_component: NDArray[np.float64], members_per_fold: int
                         ) -> NDArray[np.float64]:
    """``(n, K)``: each fold model's log-density from the mixture's components, fold-major
    (components ``k * m .. (k + 1) * m - 1`` are fold ``k``'s equal-weight mixture of ``m``).

    Arguments:
        per_component: ``(K * m, n)`` log-densities of the flow's components (before the
            encoder's log-Jacobian).
        members_per_fold: ``m``.
    """
    k_m, n = per_component.shape
    grouped = per_component.reshape(k_m // members_per_fold, members_per_fold, n)
    return (logsumexp(grouped, axis=1) - math.log(members_per_fold)).T


class CrossConformalCalibrator:
    """Cross-conformal p-values and verdicts from each fold's out-of-fold scores.

    ``CrossConformalCalibrator(0.01, members_per_fold=2).fit(fold_scores)`` with one array of
    anomaly scores per fold. Its ``p_values`` and ``predict`` take ``(n, K)`` scores of new
    records, one column per fold model.

    Arguments:
        target_fpr: ``alpha``.
        members_per_fold: flows per fold model (its components in the detector's mixture).
    """

    method = "cross-conformal"
    threshold_: float
    reference_scores_: NDArray[np.float64]
    fold_scores_: list[NDArray[np.float64]]
    n_: int

    def __init__(self, target_fpr: float = 0.01, members_per_fold: int = 1) -> None:
        self.target_fpr = target_fpr
        self.members_per_fold = members_per_fold

    def fit(self, fold_scores: Sequence[ArrayLike]) -> Self:
        """Keeps each fold's sorted out-of-fold scores; sets ``threshold_`` (display, see the
        module docstring), ``reference_scores_`` (all of them, sorted) and ``n_``.

        Arguments:
            fold_scores: per fold, its rows' anomaly scores under its own model.
        """
        self.fold_scores_ = [np.sort(np.asarray(s, dtype=np.float64)) for s in fold_scores]
        if any(s.ndim != 1 or not len(s) or np.isnan(s).any() for s in self.fold_scores_):
            raise ValueError("each fold needs 1-D, non-empty scores without NaN")
        self.reference_scores_ = np.sort(np.concatenate(self.fold_scores_))
        self.n_ = int(self.reference_scores_.size)
        self.threshold_ = conformal_threshold(self.reference_scores_, self.target_fpr)
        return self

    @property
    def folds(self) -> int:
        """``K``."""
        return len(self.fold_scores_)

    def p_values(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Cross-conformal p-values, in ``[1/(n+1), 1]``.

        Arguments:
            scores: ``(n, K)`` anomaly scores of new records under each fold's model.
        """
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != self.folds:
            raise ValueError(f"expected scores of shape (n, {self.folds}), got {s.shape}")
        if np.isnan(s).any():
            raise ValueError(f"{int(np.isnan(s).any(axis=1).sum())} records have NaN scores")
        at_least = sum(len(ref) - np.searchsorted(ref, s[:, k], side="left")
                       for k, ref in enumerate(self.fold_scores_))
        return np.asarray((1.0 + at_least) / (self.n_ + 1.0), dtype=np.float64)

    def boundaries(self) -> list[NDArray[np.float64]]:
        """The scores at which a p-value (and so a verdict) changes, per fold model: its
        out-of-fold scores, sorted (:meth:`p_values` counts them)."""
        return self.fold_scores_

    def predict(self, scores: ArrayLike) -> NDArray[np.bool_]:
        """True where a record is anomalous: its p-value is at most ``target_fpr``.

        Arguments:
            scores: ``(n, K)`` as :meth:`p_values`.
        """
        return self.p_values(scores) <= self.target_fpr

    def recalibrated(self, target_fpr: float) -> CrossConformalCalibrator:
        """The same folds at another target FPR.

        Arguments:
            target_fpr: the new ``alpha``.
        """
        return type(self)(target_fpr, self.members_per_fold).fit(self.fold_scores_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (+inf scores, of models saved before ``pipelines.tabular.support``,
        as "inf")."""
        return {
            "format_version": 1,
            "method": self.method,
            "target_fpr": float(self.target_fpr),
            "members_per_fold": self.members_per_fold,
            "n": self.n_,
            "threshold": self.threshold_ if math.isfinite(self.threshold_) else "inf",
            "fold_scores": [[v if math.isfinite(v) else "inf" for v in s.tolist()]
                            for s in self.fold_scores_],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> CrossConformalCalibrator:
        """Rebuilds a fitted calibrator from :meth:`to_dict`, checking it is consistent.

        Arguments:
            state: what :meth:`to_dict` wrote.
        """
        if state.get("format_version") != 1 or state.get("method") != cls.method:
            raise ValueError(f"not a cross-conformal calibrator state: {state.get('method')!r}")
        calibrator = cls(state["target_fpr"], int(state["members_per_fold"])).fit(
            [[float(v) for v in s] for s in state["fold_scores"]])
        if calibrator.n_ != state["n"] or calibrator.threshold_ != float(state["threshold"]):
            raise ValueError(f"inconsistent calibrator state: stored n={state['n']}, threshold="
                             f"{state['threshold']!r}; recomputed n={calibrator.n_}, "
                             f"threshold={calibrator.threshold_!r}")
        return calibrator

    def __repr__(self) -> str:
        fitted = (f", folds={self.folds}, n_={self.n_}, threshold_={self.threshold_!r}"
                  if hasattr(self, "n_") else "")
        return f"CrossConformalCalibrator(target_fpr={self.target_fpr!r}{fitted})"
