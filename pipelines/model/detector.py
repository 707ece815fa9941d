"""``Detector``: encoder + flow + conformal calibrator, with scikit-learn's and PyOD's
conventions (``fit`` / ``score_samples`` / ``decision_function`` / ``predict``).

How ``fit`` uses its rows is :mod:`pipelines.model.fitting`; the flow's evaluation,
:mod:`pipelines.model.scoring`; the files of a saved detector, :mod:`pipelines.model.artifact`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from flowmodels import build_flow
from pipelines.errors import InputError, SchemaError
from pipelines.model import defaults, fitting
from pipelines.model.artifact import SavedDetector, read_files, write_files
from pipelines.model.calibration import (
    Calibrator,
    ContaminationCalibrator,
    SmallCalibrationWarning,
    cannot_flag_message,
    min_calibration_rows,
    rule_change,
)
from pipelines.model.crossconformal import FOLDS, CrossConformalCalibrator
from pipelines.model.defaults import DEFAULT_TARGET_FPR
from pipelines.model.device import resolve_device, torch_threads
from pipelines.model.evaluators import FlowEvaluators
from pipelines.model.explain import N_SAMPLES, contributions, reference_values
from pipelines.model.frames import as_frame
from pipelines.model.pyod_api import PyODMethods
from pipelines.model.scoring import AnyCalibrator, reject_nan
from pipelines.model.training import Parallel, default_train_config
from pipelines.tabular.encoder import Scaling, TabularEncoder


class Detector(PyODMethods, OutlierMixin, BaseEstimator):
    """Anomaly detector scoring records by their exact log-likelihood under a normalizing flow.

    ``fit`` splits the rows into train / validation / calibration, fits a
    :class:`~pipelines.tabular.encoder.TabularEncoder` on train, trains a flow by maximum likelihood
    (keeping the weights of the best validation epoch; by default RealNVP is an equal-weight
    mixture of two small flows, :mod:`pipelines.model.defaults`) and calibrates a conformal
    threshold on the calibration rows. When the calibration split is too small for
    ``target_fpr`` it calibrates cross-conformally instead, with every row
    (:mod:`pipelines.model.crossconformal`): ``FOLDS`` fold models, whose equal-weight mixture is
    the flow.

    The conventions of scikit-learn and PyOD, one meaning per name (the *score* contract,
    docs/design.md; :mod:`pipelines.model.scoring`, :mod:`pipelines.model.pyod_api`):
    ``score_samples(X)`` is ``log p(record)``; ``decision_function(X)`` is the anomaly score
    ``-log p(record)``, in the units of the raw data; ``predict(X)`` is 1 for an anomaly, 0
    otherwise; ``predict_proba(X)`` is PyOD's. :meth:`verdicts` gives them at once.

    Arguments:
        model: ``"realnvp"`` or ``"ffjord"``.
        target_fpr: the false-positive rate the threshold guarantees on exchangeable data.
        contamination: PyOD's thresholding rule instead: flag the scores above the
            ``(1 - contamination)`` quantile of the training scores, in (0, 0.5]. No
            false-positive rate is guaranteed; refused with a ``target_fpr`` other than its
            default. p-values stay conformal.
        calibration: ``"split"`` (conformal, on a held-out calibration split), ``"cross"``
            (cross-conformal, every row; ``FOLDS`` times the training and scoring cost) or
            ``"auto"``: cross-conformal when the split has fewer than ``ceil(1/target_fpr) -
            1`` rows, the fewest that can flag (99 at 1%).
        scaling: continuous-column scaling of the encoder (standard, robust or quantile).
        exclude: columns to ignore (ids, timestamps, labels).
        atom_share: continuous values held by at least this share of the training rows are
            dequantised as atoms (:mod:`pipelines.tabular.continuous`); ``None``: off.
        flow_options: overrides of the flow's constructor options.
        train_options: overrides of :class:`~pipelines.model.training.TrainConfig` fields.
        validation_fraction: share of non-calibration rows held out for early stopping.
        calibration_fraction: share of rows held out for the threshold and p-values; 0 skips
            calibration (for benchmarks, which calibrate on a split of their own).
        random_state: seeds the split, initialisation, batching and dequantisation noise
            (through generators of its own: the global torch RNG is neither seeded nor drawn
            from); None or a ``numpy.random.RandomState``: a seed drawn from it at each fit,
            as scikit-learn does (``metrics_["seed"]`` records it).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (an error if CUDA is not available).
        progress: show a progress bar while training.
        n_threads: torch CPU threads while fitting, restored afterwards; None or 0: torch's
            own setting. One by default: the default flows are small, and two threads beside a
            busy process spin (``benchmarks/README.md``). Scoring uses the caller's setting.

    Fitted attributes:
        n_features_in_, feature_names_in_: the columns ``fit`` was given (an array's are named
            ``x0 .. x{d-1}``), excluded ones included.
        n_encoded_features_: the width of the encoded records the flow models.
        threshold_: the threshold on the anomaly score, at the rate the detector was fitted
            (or recalibrated) at, whatever ``set_params`` changed since (+inf: never flags;
            NaN without calibration): the conformal threshold; PyOD's under
            ``contamination``; under cross-conformal calibration the split-conformal threshold
            of the out-of-fold scores, which ``predict`` does not apply (it needs every fold's
            score: :mod:`pipelines.model.crossconformal`).
        calibration_scores_: the calibration rows' anomaly scores, sorted (out-of-fold ones
            under cross-conformal calibration); None without calibration.
        decision_scores_, labels_: PyOD's: the anomaly scores and 0/1 labels of the rows
            ``fit`` was given, in their order (``labels_`` is None without calibration). Not
            saved with the model: they describe the training table.
        encoder_, flow_, calibrator_, flow_options_, train_config_, history_, metrics_,
        reference_records_, reference_scores_, device_: the parts, and what training recorded.
    """

    # PyOD's and older scikit-learn's marker (newer ones read __sklearn_tags__).
    _estimator_type = "outlier_detector"

    def __init__(
        self,
        model: str = "realnvp",
        *,
        target_fpr: float = DEFAULT_TARGET_FPR,
        contamination: float | None = None,
        calibration: str = "auto",
        scaling: Scaling = "standard",
        exclude: tuple[str, ...] | list[str] = (),
        atom_share: float | None = 0.01,
        flow_options: dict[str, Any] | None = None,
        train_options: dict[str, Any] | None = None,
        validation_fraction: float = 0.15,
        calibration_fraction: float = 0.2,
        random_state: int | np.random.RandomState | None = 0,
        device: str = "auto",
        progress: bool = False,
        n_threads: int | None = 1,
    ) -> None:
        self.model = model
        self.target_fpr = target_fpr
        self.contamination = contamination
        self.calibration = calibration
        self.scaling = scaling
        self.exclude = exclude
        self.atom_share = atom_share
        self.flow_options = flow_options
        self.train_options = train_options
        self.validation_fraction = validation_fraction
        self.calibration_fraction = calibration_fraction
        self.random_state = random_state
        self.device = device
        self.progress = progress
        self.n_threads = n_threads

    def __getstate__(self) -> dict[str, Any]:
        # The evaluators are built from the weights (pipelines.model.evaluators): a pickled or
        # deep-copied detector builds its own from its own copy of them. (A copy: the parent's
        # state may be this detector's own __dict__.)
        state = dict(super().__getstate__())
        state.pop("_evaluators", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if hasattr(self, "flow_"):
            self._evaluators = FlowEvaluators(self.flow_)


    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # the encoder imputes missing values (and flags them)
        return tags


    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: pd.DataFrame | ArrayLike,
        y: Any = None,
        *,
        calibration_data: pd.DataFrame | ArrayLike | None = None,
        parallel: Parallel | None = None,
    ) -> Detector:
        """Fits encoder, flow and calibrator on normal records; returns ``self``.

        Arguments:
            X: normal records: a DataFrame, or a 2-D array (columns named ``x0 .. x{d-1}``).
            y: ignored (scikit-learn's signature); leave known anomalies out of ``X``.
            calibration_data: optional separate calibration records; when given, ``X`` is
                only split into train and validation.
            parallel: data-parallel training of the flows (:mod:`pipelines.model.distributed`),
                every process calling ``fit`` on the same records; None: this process alone.

        Raises:
            InputError: a parameter out of its range, or too few rows.
            SchemaError: records the encoder cannot model (naming the column and row).

        Warns:
            SmallCalibrationWarning: too few calibration rows for ``target_fpr`` (or too many
                of zero density): the threshold is +inf and the detector never flags a record.
        """
        seed, device = fitting.check_params(self.get_params())
        with torch_threads(self.n_threads):
            return self._fit(X, calibration_data, parallel, seed, device)

    def _fit(self, X: pd.DataFrame | ArrayLike, calibration_data: pd.DataFrame | ArrayLike | None,
             parallel: Parallel | None, seed: int, device: torch.device) -> Detector:
        """:meth:`fit` under its thread count, with the checked seed and device."""
        start = time.perf_counter()
        given = as_frame(X)
        data = given.reset_index(drop=True)
        if len(data) == 0:
            raise SchemaError("empty input: the training frame has 0 rows")
        absent = [name for name in self.exclude if name not in data.columns]
        if absent:  # a typo would leave the column it meant in the model
            warnings.warn(f"exclude names column(s) {absent} that the data does not have "
                          f"(its columns: {list(map(str, data.columns))})", stacklevel=3)
        split = fitting.plan_split(self.get_params(), len(data), calibration_data is not None, seed)
        calibration = (data.iloc[split.calibration_rows] if calibration_data is None
                       else as_frame(calibration_data, list(data.columns)))
        if not split.cross and len(calibration) == 0 and self.calibration_fraction > 0:
            raise InputError("no calibration rows: pass more data or calibration_data")

        self.feature_names_in_ = np.array(data.columns, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.device_ = device
        # One encoder for every member (their mixture is one density): under cross-conformal
        # calibration it is fitted on every row.
        self.encoder_ = TabularEncoder(
            scaling=self.scaling, exclude=tuple(self.exclude), atom_share=self.atom_share
        ).fit(data if split.cross else data.iloc[split.parts[0][0]], schema_rows=given)
        # Every row is checked before any training, named as the caller knows it (position and
        # index label): the validation and calibration rows are scored later, and an error
        # there would name a row of a random split of the caller's data.
        self.encoder_.validate(given)
        self.n_encoded_features_ = self.encoder_.n_features_out_
        n_train = len(split.parts[0][0])
        self.flow_options_ = {**defaults.default_flow_options(self.model, n_train),
                              **(self.flow_options or {})}
        members_per_part = self.flow_options_.get("members", 1)
        if split.cross:  # the fold models' members, fold-major, in one mixture
            self.flow_options_["members"] = members_per_part * FOLDS
        # A generator of its own: fitting must not reseed, or draw from, the caller's RNG.
        generator = torch.Generator().manual_seed(seed)
        self.flow_ = build_flow(self.model, self.n_encoded_features_, generator=generator,
                                **self.flow_options_)
        self.flow_.to(self.device_)
        config = default_train_config(
            n_train, seed=seed, progress=self.progress,
            **{**defaults.default_train_options(self.model), **(self.train_options or {})})
        self.train_config_ = asdict(config)
        results, validation_nll = fitting.train_parts(
            self.flow_, split, data, self.encoder_, config, members_per_part, parallel, device)
        self.history_ = [{**epoch, "member": k}
                         for k, result in enumerate(results) for epoch in result.history]
        self.flow_.eval()
        # Calibration scores are the exact evaluator's: the fast path's verdicts defer to them.
        self._evaluators = FlowEvaluators(self.flow_, fast=False)
        calibrator = self._calibrate(data, calibration, split, members_per_part,
                                     separate=calibration_data is not None)
        self.metrics_ = {
            **fitting.fit_metrics(split, len(data) if split.cross else len(calibration), results,
                          validation_nll, None if calibrator is None else calibrator.method),
            "seed": seed, "fit_seconds": time.perf_counter() - start}
        self._evaluators = FlowEvaluators(self.flow_)
        self._warn_if_it_cannot_flag(stacklevel=4)  # user -> fit -> _fit -> here
        return self

    def _calibrate(self, data: pd.DataFrame, calibration: pd.DataFrame, split: fitting.Split,
                   members_per_part: int, separate: bool) -> AnyCalibrator | None:
        """Scores the rows ``fit`` was given (``decision_scores_``), fits the calibrator and
        keeps the reference records; returns the calibrator (None without calibration).

        Arguments:
            data: the rows given to ``fit``.
            calibration: the calibration records.
            split: how ``fit`` split the rows.
            members_per_part: flows per fold model.
            separate: the calibration records were given apart from ``data``.
        """
        calibrator: AnyCalibrator | None = None
        self.reference_records_ = self.reference_scores_ = None
        if split.cross and split.fold is not None:  # each row's score under its fold's model
            log_likelihood, fold_scores = self._judge(
                *self.encoder_.transform(data), members_per_part, fast=False)
            reject_nan(log_likelihood)
            self.decision_scores_, evidence = -log_likelihood, fold_scores
            calibrator = CrossConformalCalibrator(self.target_fpr, members_per_part).fit(
                [fold_scores[split.fold == k, k] for k in range(FOLDS)])
            self.reference_records_, self.reference_scores_ = fitting.reference_sample(
                self.schema, data, self.decision_scores_)
        else:
            self.decision_scores_ = evidence = self.decision_function(data)
            if len(calibration):
                scores = (self.decision_function(calibration) if separate
                          else self.decision_scores_[split.calibration_rows])
                calibrator = (Calibrator(target_fpr=self.target_fpr).fit(scores)
                              if self.contamination is None
                              else ContaminationCalibrator(self.contamination).fit(
                                  scores, self.decision_scores_))
                self.reference_records_, self.reference_scores_ = fitting.reference_sample(
                    self.schema, calibration, scores)
        self._set_calibrator(calibrator, evidence)
        return calibrator

    def recalibrate(self, target_fpr: float) -> Detector:
        """Moves the threshold to a new target false-positive rate, from the stored calibration
        scores (no retraining, no data needed); returns ``self``.

        ``target_fpr`` is set as ``set_params`` would set it (a refit or a retrain keeps it),
        and ``threshold_``, ``labels_`` and the p-value reference follow; a detector fitted
        with ``contamination`` becomes a conformal one (``contamination`` is set to None). A
        cross-conformal detector keeps its folds. A detector loaded from the store stops being
        that saved version (its ``tag_`` is dropped): save it to keep it (``flowad
        recalibrate`` does).

        Arguments:
            target_fpr: the new target false-positive rate, in (0, 1).

        Warns:
            SmallCalibrationWarning: as :meth:`fit`.
        """
        new = self._calibrator().recalibrated(target_fpr)
        self.set_params(target_fpr=target_fpr, contamination=None)
        self._set_calibrator(new)
        self.__dict__.pop("tag_", None)
        self._warn_if_it_cannot_flag()
        return self

    def _set_calibrator(self, calibrator: AnyCalibrator | None,
                        training_evidence: np.ndarray | None = None) -> None:
        """Sets ``calibrator_`` and the attributes that follow from it.

        Arguments:
            calibrator: fitted on the calibration scores; None: no calibration.
            training_evidence: what the calibrator's ``predict`` takes of the rows ``fit`` was
                given (their scores; under cross-conformal calibration every fold's), kept for
                ``labels_`` (None: the one kept before, if any; a loaded detector has none).
        """
        if training_evidence is not None:
            self._training_evidence = training_evidence
        self.calibrator_ = calibrator
        if calibrator is None:
            self.threshold_, self.calibration_scores_, self.labels_ = math.nan, None, None
            return
        self.threshold_ = calibrator.threshold_
        self.calibration_scores_ = calibrator.reference_scores_
        evidence = getattr(self, "_training_evidence", None)
        self.labels_ = None if evidence is None else calibrator.predict(evidence).astype(np.int64)

    def _warn_if_it_cannot_flag(self, stacklevel: int = 3) -> None:
        message = self.calibration_warning
        if message:  # stacklevel: the caller of the public method
            warnings.warn(message, SmallCalibrationWarning, stacklevel=stacklevel)

    # ------------------------------------------------------------------ explanations
    def explain(self, X: pd.DataFrame | ArrayLike, *, n_samples: int = N_SAMPLES) -> pd.DataFrame:
        """Each input column's contribution (nats) to each record's anomaly score ``-log p``:
        Shapley values against a typical record, summing to the record's score minus the
        typical record's (:mod:`pipelines.model.explain`).

        Arguments:
            X: records, as :meth:`log_likelihood` takes them.
            n_samples: sampled orderings of the columns per record.

        Returns:
            A frame with the records' index and one column per input column.
        """
        return contributions(self.encoder_, self.flow_, self._frame(X), n_samples=n_samples)

    def explanation_reference(self) -> dict[str, Any]:
        """The typical record :meth:`explain` measures contributions from, one plain value per
        input column (:func:`pipelines.model.explain.reference_values`)."""
        check_is_fitted(self, "encoder_")
        return reference_values(self.encoder_)

    @property
    def calibration_warning(self) -> str | None:
        """Why this detector can never flag a record (too few calibration rows for its target
        FPR, or too many of them of zero density), or None
        (:func:`~pipelines.model.calibration.cannot_flag_message`)."""
        check_is_fitted(self, "calibrator_")
        return None if self.calibrator_ is None else cannot_flag_message(self.calibrator_)

    @property
    def rule_change(self) -> str | None:
        """What ``set_params`` changed of the thresholding rule since ``fit`` (or
        ``recalibrate``), which the threshold does not follow until one of them runs; None
        when nothing did (:func:`~pipelines.model.calibration.rule_change`)."""
        check_is_fitted(self, "calibrator_")
        return rule_change(self.calibrator_, self.target_fpr, self.contamination,
                           default_target_fpr=DEFAULT_TARGET_FPR)

    def describe(self) -> dict[str, Any]:
        """What the detector is, as plain values: what ``GET /model`` and the model store's
        metadata show. ``target_fpr`` (or ``contamination``) and ``threshold`` are what the
        threshold was fitted at, whatever ``set_params`` changed since (``warnings`` says so);
        the threshold is a float, +inf when it can never flag."""
        check_is_fitted(self, "flow_")
        calibrator = self.calibrator_
        alpha = None if calibrator is None else calibrator.target_fpr
        warnings_ = [self.calibration_warning, self.rule_change]
        calibration: dict[str, Any] = {
            "method": None if calibrator is None else calibrator.method,
            "n": 0 if calibrator is None else calibrator.n_,
            "min_rows_for_target_fpr": None if alpha is None else min_calibration_rows(alpha),
            "can_flag": math.isfinite(self.threshold_),
        }
        if isinstance(calibrator, CrossConformalCalibrator):
            calibration["folds"] = calibrator.folds
        return {
            "model_kind": self.model,
            "target_fpr": alpha,
            "contamination": getattr(calibrator, "contamination", None),
            "threshold": self.threshold_,
            "n_features_in": self.n_features_in_,
            "n_encoded_features": self.n_encoded_features_,
            "schema": self.schema.to_dict(),
            # values between these columns' grid points score as off their support
            "grid_columns": self.encoder_.grid_columns,
            "flow_options": self.flow_options_,
            "metrics": self.metrics_,
            "calibration": calibration,
            "warnings": [warning for warning in warnings_ if warning],
        }

    # ------------------------------------------------------------------ files
    def save(self, folder: str | PathLike[str]) -> None:
        """Writes the fitted detector's files into the existing ``folder`` (no pickle;
        :mod:`pipelines.model.artifact`).

        Arguments:
            folder: an existing folder.

        Raises:
            InputError: no calibration, or ``set_params`` changed the thresholding rule since
                ``fit`` (:attr:`rule_change`): the saved parameters would say one rule and the
                threshold another.
        """
        check_is_fitted(self, "flow_")
        if self.calibrator_ is None:
            raise InputError("only a calibrated detector can be saved (calibration_fraction=0)")
        if self.rule_change:
            raise InputError(f"not saved: {self.rule_change}")
        # Extra state (e.g. FFJORD's solver options) is a plain dict, not a tensor.
        weights = {k: v.detach().cpu() if torch.is_tensor(v) else v
                   for k, v in self.flow_.state_dict().items()}
        state = {"params": self.get_params(), "feature_names_in": list(self.feature_names_in_),
                 "flow_options": self.flow_options_, "train_config": self.train_config_,
                 "history": self.history_, "metrics": self.metrics_}
        write_files(Path(folder), SavedDetector(state, self.encoder_, weights, self.calibrator_,
                                                self.reference_records_, self.reference_scores_))

    @classmethod
    def load(cls, folder: str | PathLike[str], *, device: str = "auto") -> Detector:
        """Reads a detector :meth:`save` wrote; it scores bit-identically to the saved one.

        ``decision_scores_`` and ``labels_`` are not saved (they describe the training table).

        Arguments:
            folder: the folder :meth:`save` wrote.
            device: where the flow runs (``"auto"``, ``"cpu"``, ``"cuda"``).

        Raises:
            InputError: files of a newer format than this version of flowad reads.
        """
        saved = read_files(Path(folder))
        state = saved.state
        detector = cls(**{**state["params"], "device": device})
        detector.device_ = resolve_device(device)
        detector.encoder_ = saved.encoder
        schema = saved.encoder.schema_
        names = state["feature_names_in"] or [*schema.names, *schema.exclude]
        detector.feature_names_in_ = np.array(names, dtype=object)
        detector.n_features_in_ = len(names)
        detector.n_encoded_features_ = saved.encoder.n_features_out_
        detector.flow_options_ = state["flow_options"]
        detector.flow_ = build_flow(detector.model, detector.n_encoded_features_,
                                    **detector.flow_options_)
        detector.flow_.load_state_dict(saved.weights)
        detector.flow_.to(detector.device_).eval()
        detector._evaluators = FlowEvaluators(detector.flow_)
        detector._set_calibrator(saved.calibrator)
        detector.train_config_, detector.history_ = state["train_config"], state["history"]
        detector.metrics_ = state["metrics"]
        detector.reference_records_ = saved.reference_records
        detector.reference_scores_ = saved.reference_scores
        return detector
