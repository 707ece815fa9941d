"""PyOD's probability and confidence of an anomaly score, as ``pyod.models.base.BaseDetector``
defines them (``predict_proba``, ``predict_confidence``): :class:`PyODMethods`, which
:class:`~pipelines.model.detector.Detector` inherits.

PyOD computes both from the training scores (``decision_scores_``). Here the *reference* scores
take their place: the calibration scores (held out of training; out-of-fold under
cross-conformal calibration), which are saved with the model (the training scores are not, so a
loaded model answers as the fitted one) and which new normal records resemble, where training
scores are in-sample.

* ``linear``: the reference's min-max scaling of the score, clipped to [0, 1] (PyOD's
  default). An anomaly probability above 0.5 is a score past the middle of the reference's
  range, not a verdict.
* ``unify``: ``erf((s - mean) / (std * sqrt(2)))`` clipped to [0, 1], with the reference's mean
  and standard deviation (Kriegel et al., "Interpreting and unifying outlier scores", SDM 2011).
* ``conformal`` (flowad's): ``1 - p`` with ``p`` the conformal p-value, the share of normal
  records scoring below (``1 - p >= 1 - target_fpr`` exactly when a conformal verdict flags).
* confidence (Perini, Vercruyssen and Davis, "Quantifying the confidence of anomaly detectors
  in their example-wise predictions", ECML PKDD 2020): how likely the verdict stays the same
  under another draw of the reference, ``1 - Binom(n, q).cdf(n - int(n * rate))`` with
  ``q = (1 + #{ref <= s}) / (2 + n)``, for a flagged record, and its complement otherwise;
  ``rate`` is the share the threshold was fitted to flag (target FPR or contamination).

Non-finite reference scores (zero density, under models saved before ``pipelines.tabular.support``)
are left out of the scaling statistics; a score of +inf is then a probability of 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import erf
from scipy.stats import binom
from sklearn.preprocessing import MinMaxScaler

from pipelines.errors import InputError
from pipelines.model.scoring import ScoringMethods

PROBA_METHODS = ("linear", "unify", "conformal")
_LARGEST = float(np.finfo(np.float64).max) / 4


def anomaly_probability(scores: NDArray[np.float64], reference: NDArray[np.float64],
                        method: str) -> NDArray[np.float64]:
    """PyOD's outlier probability of each score, ``linear`` or ``unify``.

    Arguments:
        scores: anomaly scores (higher = more anomalous).
        reference: the reference scores (see the module docstring).
        method: ``"linear"`` or ``"unify"``.
    """
    finite = reference[np.isfinite(reference)]
    if method == "linear":
        scaler = MinMaxScaler().fit(finite.reshape(-1, 1))
        # scikit-learn refuses infinity: +inf, zero density, is beyond every finite score
        capped = np.clip(scores, -_LARGEST, _LARGEST).reshape(-1, 1)
        with np.errstate(over="ignore"):
            return scaler.transform(capped).ravel().clip(0, 1)
    if method == "unify":
        return erf((scores - finite.mean()) / (finite.std() * np.sqrt(2))).clip(0, 1)
    raise InputError(f"method must be one of {PROBA_METHODS}, got {method!r}")


def prediction_confidence(scores: NDArray[np.float64], reference: NDArray[np.float64],
                          rate: float, flagged: NDArray[np.bool_]) -> NDArray[np.float64]:
    """PyOD's ``predict_confidence``: how likely each verdict stays the same (see the module
    docstring).

    Arguments:
        scores: anomaly scores of the records.
        reference: the reference scores.
        rate: the share of records the threshold was fitted to flag.
        flagged: each record's verdict.
    """
    n = len(reference)
    below = np.searchsorted(np.sort(reference), scores, side="right")  # #{ref <= s}
    posterior = (1 + below) / (2 + n)
    confidence = 1 - binom.cdf(n - int(n * rate), n, posterior)
    return np.where(flagged, confidence, 1 - confidence)


class PyODMethods(ScoringMethods):
    """``predict``, ``predict_proba`` and ``predict_confidence`` of a fitted
    :class:`~pipelines.model.detector.Detector`, from its ``_judged_frame`` (log-likelihoods and
    what its calibrator judges) and its calibrator (the reference scores and the rate its
    threshold flags)."""

    def predict(self, X: pd.DataFrame | ArrayLike, return_confidence: bool = False
                ) -> NDArray[np.int64] | tuple[NDArray[np.int64], NDArray[np.float64]]:
        """1 where a record is an anomaly, else 0 (PyOD's labels, not scikit-learn's -1/+1):
        its p-value is at most the target FPR (split-conformal: equivalently its anomaly score
        is above ``threshold_``); under ``contamination``, its score is above ``threshold_``.

        Arguments:
            X: records, as :meth:`log_likelihood` takes them.
            return_confidence: also return :meth:`predict_confidence` (PyOD's signature).
        """
        log_likelihood, judged = self._judged_frame(X)
        flagged = self._calibrator().predict(judged)
        if return_confidence:
            return flagged.astype(np.int64), self._confidence(-log_likelihood, flagged)
        return flagged.astype(np.int64)



    def predict_proba(self, X: ArrayLike, method: str = "linear", return_confidence: bool = False
                      ) -> NDArray[np.float64] | tuple[NDArray[np.float64], NDArray[np.float64]]:
        """PyOD's two columns, (normal, anomaly): the anomaly column is the record's outlier
        probability by ``method``: ``"linear"`` (PyOD's default), ``"unify"``, or
        ``"conformal"``, one minus the p-value (the normal column is then the p-value). None is
        a posterior probability; ``predict`` is the verdict.

        Arguments:
            X: records, as ``Detector.log_likelihood`` takes them.
            method: ``"linear"``, ``"unify"`` or ``"conformal"``.
            return_confidence: also return :meth:`predict_confidence` (PyOD's signature).
        """
        if method not in PROBA_METHODS:
            raise InputError(f"method must be one of {PROBA_METHODS}, got {method!r}")
        log_likelihood, judged = self._judged_frame(X)
        calibrator = self._calibrator()
        if method == "conformal":
            p = calibrator.p_values(judged)
            proba = np.column_stack([p, 1.0 - p])
        else:  # PyOD's order of operations: the anomaly column, then 1 minus it
            anomaly = anomaly_probability(-log_likelihood, calibrator.reference_scores_, method)
            proba = np.column_stack([1.0 - anomaly, anomaly])
        if return_confidence:
            return proba, self._confidence(-log_likelihood, calibrator.predict(judged))
        return proba

    def predict_confidence(self, X: ArrayLike) -> NDArray[np.float64]:
        """PyOD's confidence in each verdict of ``predict``: how likely it stays the same under
        another draw of the calibration rows, in [0, 1].

        Arguments:
            X: records, as ``Detector.log_likelihood`` takes them.
        """
        log_likelihood, judged = self._judged_frame(X)
        return self._confidence(-log_likelihood, self._calibrator().predict(judged))

    def _confidence(self, scores: NDArray[np.float64], flagged: NDArray[np.bool_]
                    ) -> NDArray[np.float64]:
        """:func:`prediction_confidence` at the rate the threshold was fitted to flag (the
        target FPR, or the contamination)."""
        calibrator = self._calibrator()
        rate = getattr(calibrator, "contamination", None) or calibrator.target_fpr
        return prediction_confidence(scores, calibrator.reference_scores_, rate, flagged)
