"""Scoring: the flow's log-density of encoded records (in batches through torch, a small batch
through the NumPy evaluator of :mod:`pipelines.model.fastpath`; NaN never leaves), and the
scoring methods of a fitted detector (:class:`ScoringMethods`): log-likelihoods, anomaly scores,
p-values and verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.utils.validation import check_is_fitted

from flowmodels import Flow, FlowMixture
from pipelines.errors import InputError, UnscorableRecordError
from pipelines.model.calibration import Calibrator, ContaminationCalibrator
from pipelines.model.crossconformal import CrossConformalCalibrator, fold_log_likelihoods
from pipelines.model.fastpath import SMALL_BATCH_ROWS, FastRealNVP, fast_log_prob
from pipelines.model.frames import fitted_frame
from pipelines.tabular.encoder import TabularEncoder
from pipelines.tabular.schema import Schema

AnyCalibrator = Calibrator | ContaminationCalibrator | CrossConformalCalibrator

# Rows per flow call: the default flow's activations of 4096 rows (4096 x 128 floats) stay in
# cache (rows/s by batch size: benchmarks/README.md).
SCORE_BATCH_ROWS = 4096


def flow_log_prob(flow: Flow | FlowMixture, x: np.ndarray, device: torch.device,
                  fast: FastRealNVP | None, per_component: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None, FastRealNVP | None]:
    """The flow's log-density of encoded records, with ``per_component`` its mixture
    components' ``(K, n)`` too (the mixture's from them, as its ``log_prob`` computes it), and
    the fast path's evaluator to keep for the next call.

    Arguments:
        flow: the detector's flow.
        x: the encoded records.
        device: where the flow runs.
        fast: the evaluator this returned last time, or None.
        per_component: also give each component's log-density.
    """
    if flow.training:  # eval() walks every submodule: 0.2 ms a call, so only when needed
        flow.eval()
    if len(x) <= SMALL_BATCH_ROWS:
        small, fast = fast_log_prob(flow, x, fast, per_component=per_component)
        if small is not None:
            if per_component:
                return FastRealNVP.mixture(small), small, fast
            return small, None, fast
    out = np.empty(len(x), dtype=np.float64)
    mixture = flow if per_component and isinstance(flow, FlowMixture) else None
    components = None if mixture is None else np.empty((len(mixture.components), len(x)))
    with torch.inference_mode():
        for start in range(0, len(x), SCORE_BATCH_ROWS):
            batch = torch.as_tensor(x[start : start + SCORE_BATCH_ROWS], dtype=torch.float32,
                                    device=device)
            rows = slice(start, start + len(batch))
            if mixture is not None and components is not None:
                each = mixture.component_log_probs(batch)
                components[:, rows] = each.double().cpu().numpy()
                out[rows] = FlowMixture.combine(each).double().cpu().numpy()
            else:
                out[rows] = flow.log_prob(batch).double().cpu().numpy()
    return out, components, fast


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
    _fast_flow: FastRealNVP | None

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
        return self._log_likelihood(*self.encoder_.transform(frame))

    def _frame(self, X: pd.DataFrame | ArrayLike) -> pd.DataFrame:
        """``X`` as the encoder takes it (:func:`~pipelines.model.frames.fitted_frame`)."""
        check_is_fitted(self, "flow_")
        return fitted_frame(X, list(self.feature_names_in_), self.encoder_.schema_.names)

    def _log_likelihood(self, x: np.ndarray, log_jacobian: np.ndarray) -> np.ndarray:
        """:meth:`log_likelihood` of encoded records.

        Arguments:
            x: the encoded records.
            log_jacobian: their encoding's log-Jacobian.
        """
        flow, _, self._fast_flow = flow_log_prob(self.flow_, x, self.device_,
                                                 getattr(self, "_fast_flow", None))
        out = flow + log_jacobian
        reject_nan(out)
        return out

    def _fold_log_likelihoods(self, x: np.ndarray, log_jacobian: np.ndarray,
                              members_per_fold: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_log_likelihood` of encoded records, bit for bit, and ``(n, K)`` each fold
        model's log-likelihood (:func:`~pipelines.model.crossconformal.fold_log_likelihoods`),
        from one evaluation of the mixture's components.

        Arguments:
            x: the encoded records.
            log_jacobian: their encoding's log-Jacobian.
            members_per_fold: the flows of each fold model.
        """
        mixture, components, self._fast_flow = flow_log_prob(
            self.flow_, x, self.device_, getattr(self, "_fast_flow", None), per_component=True)
        out = mixture + log_jacobian
        reject_nan(out)
        assert components is not None  # a cross-conformal flow is a mixture
        return out, fold_log_likelihoods(components, members_per_fold) + log_jacobian[:, None]

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
        """Encoded records' log-likelihoods, and what the calibrator judges them by: their
        anomaly scores, or under cross-conformal calibration each fold model's ``(n, K)``.

        Arguments:
            x: the encoded records.
            log_jacobian: their encoding's log-Jacobian.
        """
        calibrator = self._calibrator()
        if isinstance(calibrator, CrossConformalCalibrator):
            log_likelihood, fold_ll = self._fold_log_likelihoods(
                x, log_jacobian, calibrator.members_per_fold)
            return log_likelihood, -fold_ll
        log_likelihood = self._log_likelihood(x, log_jacobian)
        return log_likelihood, -log_likelihood

    def _judged_frame(self, X: pd.DataFrame | ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_judged` of records as :meth:`log_likelihood` takes them."""
        self._calibrator()  # first: a detector without calibration says so
        return self._judged(*self.encoder_.transform(self._frame(X)))

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
