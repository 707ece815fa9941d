"""The scoring methods of a fitted detector (:class:`ScoringMethods`): log-likelihoods,
anomaly scores, p-values and verdicts, from the flow's evaluators
(:mod:`pipelines.model.evaluators`: a record's verdict is the same in any batch); NaN never
leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.utils.validation import check_is_fitted

from flowmodels import Flow, FlowMixture
from pipelines.errors import InputError, SchemaError, UnscorableRecordError
from pipelines.model.calibration import Calibrator, ContaminationCalibrator
from pipelines.model.crossconformal import CrossConformalCalibrator, fold_log_likelihoods
from pipelines.model.evaluators import FlowEvaluators, mixture_log_prob, near_a_boundary
from pipelines.model.frames import fitted_frame
from pipelines.tabular.encoder import TabularEncoder
from pipelines.tabular.schema import Schema

AnyCalibrator = Calibrator | ContaminationCalibrator | CrossConformalCalibrator
# Records checked, encoded and scored at a time in a large call: the encoder's arrays of a
# piece stay in cache (1M records in one piece scored at 0.7-0.8x the rate: benchmarks/README.md).
LARGE_CALL_ROWS = 65_536
T = TypeVar("T")


def in_pieces(frame: pd.DataFrame, score: Callable[[pd.DataFrame], T]) -> list[T]:
    """``score`` of a large call's records in pieces of :data:`LARGE_CALL_ROWS` (each checked,
    encoded and scored before the next); a rejected record is named by its row in ``frame``.

    Arguments:
        frame: the records.
        score: what to compute of a piece.
    """
    if len(frame) <= LARGE_CALL_ROWS:
        return [score(frame)]
    out = []
    for start in range(0, len(frame), LARGE_CALL_ROWS):
        try:
            out.append(score(frame.iloc[start : start + LARGE_CALL_ROWS]))
        except SchemaError as error:
            if error.row is None:
                raise
            raise error.located(row=start + error.row) from error
    return out


def reject_nan(log_likelihood: np.ndarray) -> None:
    """NaN never leaves scoring: it is no verdict, and it breaks calibration and p-values.

    Arguments:
        log_likelihood: per-record log-likelihoods.

    Raises:
        UnscorableRecordError: naming the first NaN row.
    """
    nan = np.flatnonzero(np.isnan(log_likelihood))
    if len(nan):
        raise UnscorableRecordError(int(nan[0]), count=len(nan))


class ScoringMethods:
    """The scoring methods of a fitted :class:`~pipelines.model.detector.Detector`, from its
    encoder, flow and calibrator."""

    encoder_: TabularEncoder
    flow_: Flow | FlowMixture
    calibrator_: AnyCalibrator | None
    feature_names_in_: NDArray[np.object_]
    device_: torch.device
    _evaluators: FlowEvaluators

    # ------------------------------------------------------------------ the records it takes
    @property
    def schema(self) -> Schema:
        """The training schema: each scored column's kind, dtype, range, categories."""
        check_is_fitted(self, "encoder_")
        return self.encoder_.schema_

    @property
    def input_columns(self) -> list[str]:
        """The columns a record must have, in training order (excluded ones not among them:
        a record may carry them or not)."""
        return self.schema.names

    @property
    def text_columns(self) -> list[str]:
        """The categorical input columns: a CSV reader should read them as text (a code
        ``02134`` read as a number is the unseen category ``2134``)."""
        return [spec.name for spec in self.schema.of_kind("categorical")]

    def validate(self, X: pd.DataFrame) -> None:
        """Checks records against the training schema without scoring them.

        Arguments:
            X: records.

        Raises:
            SchemaError: the first problem, naming the column and the row.
        """
        check_is_fitted(self, "encoder_")
        self.encoder_.validate(X)

    def unknown_counts(self, X: pd.DataFrame) -> dict[str, int]:
        """Per categorical column, the values training never saw (scored through the column's
        "unknown" slot). Checks nothing: call it on records :meth:`validate` accepted.

        Arguments:
            X: records.
        """
        check_is_fitted(self, "encoder_")
        return self.encoder_.unknown_counts(X)

    # ------------------------------------------------------------------ scores and verdicts
    def log_likelihood(self, X: pd.DataFrame | ArrayLike) -> NDArray[np.float64]:
        """Exact log-likelihood of each record (nats, raw-data units).

        Arguments:
            X: records with the training columns (a DataFrame, or an array whose columns are
                ``feature_names_in_``).

        Raises:
            SchemaError: a record the encoder rejects (names the column and row).
            UnscorableRecordError: the flow gave a record NaN (never returned; ``-inf``, zero
                density, is).
        """
        frame = self._frame(X)  # first: it checks that the detector is fitted
        return np.concatenate(in_pieces(
            frame, lambda piece: self._log_likelihood(*self.encoder_.transform(piece))))

    def _frame(self, X: pd.DataFrame | ArrayLike) -> pd.DataFrame:
        """``X`` as the encoder takes it (:func:`~pipelines.model.frames.fitted_frame`)."""
        check_is_fitted(self, "flow_")
        return fitted_frame(X, list(self.feature_names_in_), self.encoder_.schema_.names)

    def _log_likelihood(self, x: np.ndarray, log_jacobian: np.ndarray) -> np.ndarray:
        """:meth:`log_likelihood` of encoded records (a few through the fast path: within
        the contract's 1e-4 nats of any other batch's).

        Arguments:
            x: the encoded records.
            log_jacobian: their encoding's log-Jacobian.
        """
        fast = self._evaluators.uses_fast_path(self.flow_, len(x))
        per_component = self._evaluators.log_probs(self.flow_, x, self.device_, fast=fast,
                                                   components=False)
        out = mixture_log_prob(per_component) + log_jacobian
        reject_nan(out)
        return out

    def _judge(self, x: np.ndarray, log_jacobian: np.ndarray, members_per_fold: int | None,
               *, fast: bool) -> tuple[np.ndarray, np.ndarray]:
        """Encoded records' log-likelihoods (NaN not yet rejected), and what the calibrator
        judges them by: their anomaly scores, or under cross-conformal calibration each fold
        model's ``(n, K)`` (:func:`~pipelines.model.crossconformal.fold_log_likelihoods`).

        Arguments:
            x: the encoded records.
            log_jacobian: their encoding's log-Jacobian.
            members_per_fold: the flows of each fold model; None: not cross-conformal.
            fast: take the fast path (``_evaluators.uses_fast_path`` said so).
        """
        per_component = self._evaluators.log_probs(
            self.flow_, x, self.device_, fast=fast, components=members_per_fold is not None)
        log_likelihood = mixture_log_prob(per_component) + log_jacobian
        if members_per_fold is not None:
            fold_ll = fold_log_likelihoods(per_component, members_per_fold)
            return log_likelihood, -(fold_ll + log_jacobian[:, None])
        return log_likelihood, -log_likelihood

    def score_samples(self, X: pd.DataFrame | ArrayLike) -> NDArray[np.float64]:
        """``log p(record)``: higher = more normal (scikit-learn's ``KernelDensity``).

        Arguments:
            X: records, as :meth:`log_likelihood` takes them.
        """
        return self.log_likelihood(X)

    def decision_function(self, X: pd.DataFrame | ArrayLike) -> NDArray[np.float64]:
        """The anomaly score ``-log p(record)``: higher = more anomalous (PyOD); the score the
        threshold, the p-values and the service's ``score`` are on.

        Arguments:
            X: records, as :meth:`log_likelihood` takes them.
        """
        return -self.log_likelihood(X)

    def _calibrator(self) -> AnyCalibrator:
        check_is_fitted(self, "calibrator_")
        if self.calibrator_ is None:
            raise InputError("this detector was fitted with calibration_fraction=0")
        return self.calibrator_

    def _judged(self, x: np.ndarray, log_jacobian: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_judge` by the calibrator, each verdict and p-value the exact evaluator's:
        a record the fast path scored within its tolerance of a decision boundary is scored
        again exactly (:func:`~pipelines.model.evaluators.near_a_boundary`).

        Arguments:
            x: the encoded records.
            log_jacobian: their encoding's log-Jacobian.
        """
        calibrator = self._calibrator()
        members_per_fold = (calibrator.members_per_fold
                            if isinstance(calibrator, CrossConformalCalibrator) else None)
        fast = self._evaluators.uses_fast_path(self.flow_, len(x))
        log_likelihood, judged = self._judge(x, log_jacobian, members_per_fold, fast=fast)
        if fast:
            near = near_a_boundary(judged, calibrator.boundaries())
            if near.any():
                log_likelihood[near], judged[near] = self._judge(
                    x[near], log_jacobian[near], members_per_fold, fast=False)
        reject_nan(log_likelihood)
        return log_likelihood, judged

    def _judged_frame(self, X: pd.DataFrame | ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_judged` of records as :meth:`log_likelihood` takes them."""
        self._calibrator()  # first: a detector without calibration says so
        judged = in_pieces(self._frame(X),
                           lambda piece: self._judged(*self.encoder_.transform(piece)))
        if len(judged) == 1:
            return judged[0]
        return (np.concatenate([log_likelihood for log_likelihood, _ in judged]),
                np.concatenate([scores for _, scores in judged]))

    def p_values(self, X: pd.DataFrame | ArrayLike) -> NDArray[np.float64]:
        """Conformal p-values, in (0, 1]: the share of normal records at least as anomalous
        (small = anomalous); cross-conformal ones under cross-conformal calibration.

        Arguments:
            X: records, as :meth:`log_likelihood` takes them.
        """
        return self._calibrator().p_values(self._judged_frame(X)[1])

    def verdict_columns(self, X: pd.DataFrame | ArrayLike) -> dict[str, np.ndarray]:
        """``score`` (anomaly score, :meth:`decision_function`), ``log_likelihood``,
        ``p_value`` and ``is_anomaly`` (bool) per record, as arrays (what the service answers
        with: building the frame of :meth:`verdicts` would cost it 0.5 ms).

        Arguments:
            X: records, as :meth:`log_likelihood` takes them.
        """
        return self._verdict_columns(*self._judged_frame(X))

    def record_verdicts(
        self, records: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """:meth:`verdict_columns` of JSON-like records, with the unseen categories per column
        (``encoder_.unknown_counts``), from one check and without a frame for a few records:
        bit for bit what the frame ``encoder_.schema_.records_frame(records)`` gets, and the
        same rejections (:meth:`~pipelines.tabular.encoder.TabularEncoder.transform_records`).

        Arguments:
            records: one dict per record, keyed by column name (other keys are ignored).

        Raises:
            SchemaError: as :meth:`log_likelihood`.
        """
        self._calibrator()
        check_is_fitted(self, "flow_")
        x, log_jacobian, unknown = self.encoder_.transform_records(records)
        return self._verdict_columns(*self._judged(x, log_jacobian)), unknown

    def _verdict_columns(self, log_likelihood: np.ndarray, judged: np.ndarray
                         ) -> dict[str, np.ndarray]:
        """The verdict columns of records with these log-likelihoods and :meth:`_judged`."""
        calibrator = self._calibrator()
        return {
            "score": -log_likelihood,
            "log_likelihood": log_likelihood,
            "p_value": calibrator.p_values(judged),
            "is_anomaly": calibrator.predict(judged),
        }

    def verdicts(self, X: pd.DataFrame | ArrayLike) -> pd.DataFrame:
        """``score, log_likelihood, p_value, is_anomaly`` per record, in input order.

        Arguments:
            X: records, as :meth:`log_likelihood` takes them.
        """
        return pd.DataFrame(self.verdict_columns(X), index=getattr(X, "index", None))

    # ------------------------------------------------------------------ what it is
