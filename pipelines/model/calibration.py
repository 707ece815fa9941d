"""Conformal calibration of anomaly scores (the *calibration* contract, docs/design.md).

Scores are ``-log p(x)``: higher = more anomalous. With ``n`` calibration scores of held-out
normal data and a target false-positive rate ``alpha``, the threshold is the
``ceil((n + 1) * (1 - alpha))``-th smallest calibration score (``+inf`` if that exceeds ``n``)
and a score ``s`` is flagged when ``s > threshold``. The p-value of ``s`` is
``(1 + #{cal >= s}) / (n + 1)``. If calibration and new normal scores are exchangeable, the
false-positive rate is at most ``alpha``, and ``s > threshold`` exactly when ``p(s) <= alpha``.

The sorted calibration scores are kept as the reference distribution for drift monitoring.
A score of ``+inf`` (zero density, under a model saved before values off a column's grid
scored finite: :mod:`pipelines.tabular.support`) is a score like any other here: it ranks above
every finite one, and calibration rows hold such records as often as new ones do. NaN and ``-inf``
are errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Calibrator", "ContaminationCalibrator", "SmallCalibrationWarning", "binomial_interval",
           "cannot_flag_message", "conformal_threshold", "min_calibration_rows", "p_values",
           "rule_change", "small_calibration_message"]

_FORMAT_VERSION = 1


class SmallCalibrationWarning(UserWarning):
    """Too few calibration rows for the target false-positive rate (or at least that share of
    them of zero density): the conformal threshold is +inf, so the detector can never flag a
    record."""


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be strictly between 0 and 1, got {alpha!r}")
    return alpha


def _calibration_scores(scores: ArrayLike) -> NDArray[np.float64]:
    """Calibration scores as a 1-D float64 array; they must be finite and non-empty."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"calibration scores must be 1-D, got shape {s.shape}")
    if s.size == 0:
        raise ValueError("calibration scores are empty")
    bad = np.isnan(s) | (s == -np.inf)
    if bad.any():
        raise ValueError(f"{int(bad.sum())}/{s.size} calibration scores are NaN or -inf")
    return s


def _new_scores(scores: ArrayLike) -> NDArray[np.float64]:
    """Scores to test: +-inf are meaningful (zero / infinite density), NaN is not."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    nan = np.isnan(s)
    if nan.any():
        raise ValueError(f"{int(nan.sum())}/{s.size} scores are NaN")
    return s


def _rank_k(n: int, alpha: float) -> int:
    # Fraction(str(alpha)) takes alpha as the decimal the user wrote: float arithmetic gets k
    # wrong for e.g. alpha = 0.41, n = 99 ((n + 1) * (1 - 0.41) = 59.00000000000001).
    return math.ceil((n + 1) * (1 - Fraction(str(alpha))))


def min_calibration_rows(alpha: float) -> int:
    """The fewest calibration scores whose conformal threshold at ``alpha`` is finite:
    ``ceil((n + 1)(1 - alpha)) <= n`` exactly when ``n >= ceil(1/alpha) - 1``.

    Arguments:
        alpha: the target false-positive rate, in (0, 1).
    """
    alpha = _check_alpha(alpha)
    return math.ceil(1 / Fraction(str(alpha))) - 1


def conformal_threshold(scores: ArrayLike, alpha: float) -> float:
    """The ``ceil((n+1)(1-alpha))``-th smallest score, or ``+inf`` if that rank exceeds ``n``."""
    alpha = _check_alpha(alpha)
    s = _calibration_scores(scores)
    k = _rank_k(s.size, alpha)
    if k > s.size:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


def _p_values_sorted(sorted_ref: NDArray[np.float64], scores: NDArray[np.float64]) -> NDArray:
    n = sorted_ref.size
    # side="left" gives #{ref < s}, so n - that = #{ref >= s}, ties counted as the definition says.
    n_ge = n - np.searchsorted(sorted_ref, scores, side="left")
    return (1.0 + n_ge) / (n + 1.0)


def p_values(reference_scores: ArrayLike, scores: ArrayLike) -> NDArray[np.float64]:
    """Conformal p-values ``(1 + #{ref >= s}) / (n + 1)``, in ``[1/(n+1), 1]``."""
    ref = np.sort(_calibration_scores(reference_scores))
    return _p_values_sorted(ref, _new_scores(scores))


def binomial_interval(n: int, p: float, level: float = 0.99) -> tuple[float, float]:
    """Central ``level`` interval of the proportion ``K / n`` for ``K ~ Binomial(n, p)``.

    Used to judge a realised false-positive rate on ``n`` normal records against its nominal
    rate ``p``.
    """
    from scipy.stats import binom  # scipy comes with scikit-learn; imported lazily (slow import)

    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    _check_alpha(level, "level")
    lo, hi = binom.interval(level, n, p)
    return float(lo) / n, float(hi) / n


def conformal_fpr_interval(
    n_test: int, n_cal: int, alpha: float, level: float = 0.99
) -> tuple[float, float]:
    """Central ``level`` interval of the realised FPR of a conformal threshold.

    With ``n_cal`` calibration scores and k = ceil((n_cal+1)(1-alpha)), the probability mass
    above the threshold is Beta(n_cal+1-k, k) on exchangeable data, so the number of ``n_test``
    fresh normal records above it is beta-binomial. This accounts for both the calibration
    draw and the test draw (a plain binomial interval ignores the first).
    """
    from scipy.stats import betabinom

    k = _rank_k(n_cal, alpha)
    if k > n_cal:
        return 0.0, 0.0  # threshold is +inf: nothing is ever flagged
    lo, hi = betabinom.interval(level, n_test, n_cal + 1 - k, k)
    return float(lo) / n_test, float(hi) / n_test


class Calibrator:
    """Conformal threshold and p-values from calibration scores of normal data.

    ``Calibrator(target_fpr=0.01).fit(cal_scores)`` sets ``threshold_``, ``reference_scores_``
    (sorted float64) and ``n_``. All reference scores are kept (not quantiles), so p-values are
    exact and ``to_dict`` / ``from_dict`` round-trips bit for bit.
    """

    method = "conformal"
    threshold_: float
    reference_scores_: NDArray[np.float64]
    n_: int

    def __init__(self, target_fpr: float = 0.01) -> None:
        self.target_fpr = target_fpr

    def fit(self, cal_scores: ArrayLike) -> Self:
        """Store the sorted calibration scores and compute the conformal threshold."""
        alpha = _check_alpha(self.target_fpr, "target_fpr")
        ref = np.sort(_calibration_scores(cal_scores))
        self.reference_scores_ = ref
        self.n_ = int(ref.size)
        k = _rank_k(self.n_, alpha)
        self.threshold_ = math.inf if k > self.n_ else float(ref[k - 1])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "reference_scores_"):
            raise RuntimeError("Calibrator is not fitted; call fit(cal_scores) first")

    def boundaries(self) -> list[NDArray[np.float64]]:
        """The scores at which a p-value or a verdict changes (the reference scores and the
        threshold), sorted: one array, as :meth:`p_values` takes one score per record."""
        self._check_fitted()
        return [np.sort(np.append(self.reference_scores_, self.threshold_))]

    def p_values(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Conformal p-values of ``scores`` against the reference scores."""
        self._check_fitted()
        return _p_values_sorted(self.reference_scores_, _new_scores(scores))

    def predict(self, scores: ArrayLike) -> NDArray[np.bool_]:
        """True where a score is anomalous (``score > threshold_``)."""
        self._check_fitted()
        return _new_scores(scores) > self.threshold_

    def recalibrated(self, target_fpr: float) -> Calibrator:
        """A conformal calibrator of the same scores at another target FPR.

        Arguments:
            target_fpr: the new ``alpha``.
        """
        self._check_fitted()
        return Calibrator(target_fpr).fit(self.reference_scores_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (strict JSON: an infinite threshold is written as the string "inf")."""
        self._check_fitted()
        return {
            "format_version": _FORMAT_VERSION,
            "method": self.method,
            "target_fpr": float(self.target_fpr),
            "n": self.n_,
            "threshold": "inf" if math.isinf(self.threshold_) else self.threshold_,
            # Python floats: json writes them with repr, which round-trips float64 exactly;
            # +inf (zero density) as the string "inf", as the threshold.
            "reference_scores": [s if math.isfinite(s) else "inf"
                                 for s in self.reference_scores_.tolist()],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Calibrator:
        """Rebuild a fitted Calibrator from ``to_dict`` output, checking it is consistent."""
        version = state.get("format_version")
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported calibrator format_version {version!r}")
        cal = cls(target_fpr=state["target_fpr"]).fit(
            [float(s) for s in state["reference_scores"]])
        # Refitting recomputes the threshold; a mismatch means the state was edited or corrupted.
        if cal.n_ != state["n"] or cal.threshold_ != float(state["threshold"]):
            raise ValueError(
                f"inconsistent calibrator state: stored n={state['n']}, "
                f"threshold={state['threshold']!r}; recomputed n={cal.n_}, "
                f"threshold={cal.threshold_!r}"
            )
        return cal

    def __repr__(self) -> str:
        fitted = f", n_={self.n_}, threshold_={self.threshold_!r}" if hasattr(self, "n_") else ""
        return f"Calibrator(target_fpr={self.target_fpr!r}{fitted})"


class ContaminationCalibrator(Calibrator):
    """PyOD's thresholding rule: flag the scores above the ``(1 - contamination)`` quantile of
    the training scores (``numpy.percentile``, as ``BaseDetector._process_decision_scores``).
    No false-positive rate is guaranteed: the training scores are in-sample and may hold
    anomalies, so the share of normal records flagged is whatever it turns out to be. The
    p-values stay conformal, against the calibration scores (``p <= contamination`` is not
    this rule's verdict).

    Arguments:
        contamination: the share of training rows to flag, in (0, 0.5] as in PyOD.
    """

    method = "contamination"

    def __init__(self, contamination: float = 0.1) -> None:
        super().__init__(target_fpr=None)  # type: ignore[arg-type]
        self.contamination = contamination

    def fit(self, cal_scores: ArrayLike, training_scores: ArrayLike | None = None) -> Self:
        """Keeps the calibration scores (p-values) and thresholds the training scores.

        Arguments:
            cal_scores: the calibration rows' anomaly scores.
            training_scores: the anomaly scores of every row given to fit.
        """
        if not 0.0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination!r}")
        self.reference_scores_ = np.sort(_calibration_scores(cal_scores))
        self.n_ = int(self.reference_scores_.size)
        if training_scores is None:
            raise ValueError("contamination thresholds the training scores: pass them")
        training = _calibration_scores(training_scores)
        self.threshold_ = float(np.percentile(training, 100 * (1 - self.contamination)))
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state; the threshold is stored (the training scores are not)."""
        self._check_fitted()
        return {
            "format_version": _FORMAT_VERSION,
            "method": self.method,
            "contamination": float(self.contamination),
            "n": self.n_,
            "threshold": self.threshold_ if math.isfinite(self.threshold_) else "inf",
            "reference_scores": [s if math.isfinite(s) else "inf"
                                 for s in self.reference_scores_.tolist()],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ContaminationCalibrator:
        """Rebuilds a fitted calibrator from :meth:`to_dict`.

        Arguments:
            state: what :meth:`to_dict` wrote.
        """
        if state.get("format_version") != _FORMAT_VERSION or state.get("method") != cls.method:
            raise ValueError(f"not a contamination calibrator state: {state.get('method')!r}")
        calibrator = cls(state["contamination"])
        calibrator.reference_scores_ = np.sort(_calibration_scores(
            [float(s) for s in state["reference_scores"]]))
        calibrator.n_ = int(calibrator.reference_scores_.size)
        calibrator.threshold_ = float(state["threshold"])
        if calibrator.n_ != state["n"]:
            raise ValueError(f"inconsistent calibrator state: stored n={state['n']}, "
                             f"recomputed n={calibrator.n_}")
        return calibrator

    def __repr__(self) -> str:
        fitted = f", n_={self.n_}, threshold_={self.threshold_!r}" if hasattr(self, "n_") else ""
        return f"ContaminationCalibrator(contamination={self.contamination!r}{fitted})"


def rule_change(calibrator: Any, target_fpr: float, contamination: float | None, *,
                default_target_fpr: float) -> str | None:
    """What a detector's parameters now say of its thresholding rule that its fitted
    calibrator does not (``set_params`` after ``fit``), with what to do; None when they agree.

    Arguments:
        calibrator: the fitted calibrator, or None.
        target_fpr: the detector's ``target_fpr`` parameter.
        contamination: its ``contamination`` parameter.
        default_target_fpr: ``target_fpr``'s default (the value it has beside contamination).
    """
    if calibrator is None:
        return None
    fitted = getattr(calibrator, "contamination", None)
    if fitted is None and contamination is None and target_fpr == calibrator.target_fpr:
        return None
    if fitted is not None and contamination == fitted and target_fpr == default_target_fpr:
        return None
    was = (f"contamination {fitted:g}" if fitted is not None
           else f"target FPR {calibrator.target_fpr:g}")
    now = (f"contamination {contamination}" if contamination is not None
           else f"target_fpr {target_fpr}")
    return (f"the threshold was fitted at {was}, the parameters now say {now}: call "
            f"recalibrate({target_fpr}) or refit to apply them")


def small_calibration_message(n: int, target_fpr: float, *, cross: bool = False) -> str:
    """Why a detector with ``n`` calibration rows cannot flag anything at ``target_fpr``, and
    what to do.

    Arguments:
        n: calibration rows.
        target_fpr: the target false-positive rate.
        cross: cross-conformal calibration, on every training row.
    """
    need = min_calibration_rows(target_fpr)
    if cross:
        return (f"only {n} rows, every one of them calibrating (cross-conformal): a target FPR "
                f"of {target_fpr:g} needs at least {need} (ceil(1/alpha) - 1), so no record is "
                f"ever flagged. Fit on {need} or more rows, or use a target FPR of at least "
                f"{1 / (n + 1):.3g} (1/(n+1))")
    return (f"only {n} calibration rows: a conformal threshold at target FPR {target_fpr:g} "
            f"needs at least {need} (ceil(1/alpha) - 1), so the threshold is +inf and no record "
            f"is ever flagged. Fit on more rows (or pass calibration_data with {need} or more, "
            f"or raise calibration_fraction), or use a target FPR of at least "
            f"{1 / (n + 1):.3g} (1/(n+1)) with these rows")


def cannot_flag_message(calibrator: Any) -> str | None:
    """Why a fitted calibrator can never flag a record (too few calibration rows for its target
    FPR, or too many of them of zero density), or None when it can.

    Arguments:
        calibrator: a fitted calibrator (split, cross-conformal or contamination).
    """
    if math.isfinite(calibrator.threshold_):
        return None
    n, alpha = calibrator.n_, calibrator.target_fpr
    if alpha is not None and n < min_calibration_rows(alpha):
        return small_calibration_message(n, alpha, cross=calibrator.method == "cross-conformal")
    impossible = int(np.isposinf(calibrator.reference_scores_).sum())
    return (f"{impossible} of {n} calibration rows have zero density (a value between the "
            f"grid points of a column that training saw only on a grid, under a model "
            f"saved before such values scored finite), at least the target FPR {alpha:g} of "
            f"them, so the threshold is +inf and no record is ever flagged. Retrain it")
