"""What a front-end worker observes: its Prometheus metrics and its drift window.

Each worker counts the records it scored and the requests it rejected, keeps histograms of
their scores and p-values, and compares its last ``FLOWAD_DRIFT_WINDOW`` scores with the served
model's calibration scores (:mod:`service.drift`), publishing the statistics at most once a
second. A model swap starts a new window and retires the old model's drift series.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from service import metrics as service_metrics
from service.drift import DriftWindow
from service.follower import LoadedModel
from service.metrics import Metrics
from service.scoring import Verdicts

DRIFT_UPDATE_S = 1.0  # a KS test on a full window costs ~1 ms: at most once a second


class Telemetry:
    """The metrics and drift window of one front-end worker.

    Arguments:
        drift_window: scores the drift statistics are computed over (``FLOWAD_DRIFT_WINDOW``).
    """

    def __init__(self, drift_window: int) -> None:
        self.drift_window = drift_window
        self._metrics: Metrics | None = None  # created with the first model's buckets
        self._window: DriftWindow | None = None
        self._window_tag = ""  # the model whose scores the window holds
        self._drift_updated = 0.0
        self._drift_published = False  # whether this window's statistics reached the gauges
        # A swap (the follower's thread) and a request's drift update must not interleave:
        # a late update for the old model would bring its retired series back.
        self._drift_lock = threading.Lock()

    @property
    def metrics(self) -> Metrics:
        """The metric objects; they exist once the first model is loaded (:meth:`on_swap`)."""
        if self._metrics is None:
            raise RuntimeError("no model has been served yet")
        return self._metrics

    def on_swap(self, new: LoadedModel, old: LoadedModel | None) -> None:
        """A new model is served (``old`` None: the first one): a new drift window, the old
        model's drift series retired, the model gauges set."""
        detector = new.detector
        reference = detector.calibration_scores_  # the drift reference: calibration scores
        if reference is None:
            raise ValueError(f"{new.tag} has no calibration scores: it was never fitted")
        # Histogram buckets come from the first model (docs/operations.md, "Monitoring").
        if self._metrics is None:
            self._metrics = service_metrics.metrics(service_metrics.score_buckets(
                np.quantile(reference, service_metrics.SCORE_BUCKET_QUANTILES)
            ))
        m = self._metrics
        with self._drift_lock:
            self._window = DriftWindow(reference, detector.threshold_, self.drift_window)
            self._window_tag = new.tag
            if old is not None and self._drift_published:
                # Retire the old model's drift series, or an alert such as
                # flowad_drift_psi > 0.2 keeps firing for a model no longer served. In
                # multiprocess mode a series cannot be removed (remove() forgets this process's
                # child, not the value in the file the collector reads), so it is set to NaN,
                # which no comparison matches; a worker still serving that model writes a
                # newer value, which wins (livemostrecent).
                for gauge in m.drift_gauges():
                    gauge.labels(old.tag).set(math.nan)
            self._drift_published = False
        if old is not None:
            m.model_info.labels(old.tag).set(0)
        m.model_info.labels(new.tag).set(1)
        m.load_seconds.labels(new.tag).set(new.load_seconds)
        m.target_fpr.labels(new.tag).set(new.flag_rate)
        for q, value in zip(
            service_metrics.REFERENCE_QUANTILES,
            np.quantile(reference, service_metrics.REFERENCE_QUANTILES),
            strict=True,
        ):
            m.reference_quantile.labels(new.tag, str(q)).set(float(value))

    def on_load_failure(self, tag: str) -> None:
        """A model failed to load or verify (reported once per tag by the follower)."""
        if self._metrics is not None:
            self._metrics.load_failures.inc()

    def count_rejection(self, tag: str, reason: str) -> None:
        """Counts a rejected request.

        Arguments:
            tag: the model being served.
            reason: the rejection's reason (``service.metrics.REJECTION_REASONS``).
        """
        self.metrics.rejected.labels(tag, reason).inc()

    def observe(self, verdicts: Verdicts) -> None:
        """Counts a scored request's records and adds their scores to the histograms and the
        drift window (if its model is still the one the window is for)."""
        m, tag, scores = self.metrics, verdicts.tag, verdicts.score.astype(np.float64)
        flagged = int(verdicts.is_anomaly.sum())
        m.records.labels(tag).inc(len(scores))
        if flagged:
            m.anomalies.labels(tag).inc(flagged)
        impossible = verdicts.zero_density()
        if impossible:  # a column's values left the grid training saw: data-quality news
            m.zero_density.labels(tag).inc(impossible)
        service_metrics.observe_many(m.scores.labels(tag), scores)
        service_metrics.observe_many(m.p_values.labels(tag),
                                     verdicts.p_value.astype(np.float64))
        with self._drift_lock:
            window = self._window
            if window is None or tag != self._window_tag:  # scored by a model swapped out
                return
            window.add(scores)
            now = time.monotonic()
            if now - self._drift_updated < DRIFT_UPDATE_S:
                return
            stats = window.statistics()
            if stats is None:
                return
            self._drift_updated, self._drift_published = now, True
            m.psi.labels(tag).set(stats.psi)
            m.ks_statistic.labels(tag).set(stats.ks_statistic)
            m.ks_pvalue.labels(tag).set(stats.ks_pvalue)
            m.window_anomaly_rate.labels(tag).set(stats.anomaly_rate)
            m.window_records.labels(tag).set(stats.n)
