"""The service's Prometheus metrics (prometheus_client, multiprocess-safe).

Metric objects are created lazily, inside the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR
after importing the service module, and prometheus_client picks its storage at import time.
The labels beyond BentoML's own are the model's tag ``model`` and, split from it, ``model_name``
and ``model_version`` (:class:`ByModel`), plus the bounded ``reason`` of rejections and
``quantile`` of the reference quantiles.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines.io.processes import alive

# 4xx, and the 503s of a scoring that cannot happen now (retry: overloaded, model_changing).
# The admin routes' refusals (admin_disabled, unauthorized, forbidden) are not counted.
REJECTION_REASONS = ("malformed_json", "validation", "schema", "too_large", "empty",
                     "unscorable", "timeout", "encoding", "content_type", "overloaded",
                     "model_changing")
REFERENCE_QUANTILES = (0.5, 0.9, 0.99)
# Score histogram buckets at these calibration quantiles, so each bucket's observed share can
# be compared with the reference share it was built from.
SCORE_BUCKET_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
P_VALUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
MODEL_LABELS = ("model", "model_name", "model_version")


class ByModel:
    """A metric labelled by the model's tag and by its name and version, split from the tag.

    Dashboards and rules follow a model across retrains by ``model_name`` (``sum by
    (model_name)``: one line, whatever version served), and keep versions apart where their
    numbers are not comparable (score distributions, drift) by ``model_version``. Callers pass
    the tag only, as before the split: ``.labels(tag, *other_values)``.

    Arguments:
        metric: a prometheus_client metric whose label names start with ``MODEL_LABELS``.
    """

    def __init__(self, metric: Any) -> None:
        self.metric = metric

    def labels(self, tag: str, *values: str) -> Any:
        name, _, version = tag.partition(":")
        return self.metric.labels(tag, name, version, *values)


@dataclass(frozen=True)
class Metrics:
    records: Any
    anomalies: Any
    zero_density: Any
    rejected: Any
    scores: Any
    p_values: Any
    reference_quantile: Any
    psi: Any
    ks_statistic: Any
    ks_pvalue: Any
    window_anomaly_rate: Any
    target_fpr: Any
    window_records: Any
    model_info: Any
    load_seconds: Any
    load_failures: Any

    def drift_gauges(self) -> tuple[Any, ...]:
        """The gauges of a worker's drift window, one series per model."""
        return (self.psi, self.ks_statistic, self.ks_pvalue, self.window_anomaly_rate,
                self.window_records)


_created: list[Metrics] = []  # this process's metric objects, once created
_creating = threading.Lock()


def metrics(score_buckets: tuple[float, ...]) -> Metrics:
    """The metric objects of this process, created at the first call: prometheus_client
    registers a metric name once per process, so later calls, whatever their buckets, get the
    first model's (a second set would be refused as duplicates).

    Arguments:
        score_buckets: the score histogram's bucket bounds (:func:`score_buckets`).
    """
    with _creating:
        if not _created:
            _created.append(_create(score_buckets))
        return _created[0]


def _create(score_buckets: tuple[float, ...]) -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    def gauge(name: str, doc: str,
              mode: Literal["livemostrecent", "livemax"] = "livemostrecent") -> Any:
        return ByModel(Gauge(name, doc, MODEL_LABELS, multiprocess_mode=mode))

    return Metrics(
        records=ByModel(Counter("flowad_records_scored", "Records scored.", MODEL_LABELS)),
        anomalies=ByModel(Counter("flowad_anomalies_flagged", "Records flagged as anomalies.",
                                  MODEL_LABELS)),
        zero_density=ByModel(Counter(
            "flowad_zero_density_records", "Records of zero density (a value between the grid "
            "points of a column training saw only on a grid): score +inf, flagged.",
            MODEL_LABELS)),
        rejected=ByModel(Counter(
            "flowad_requests_rejected", "Requests rejected with a 4xx, or a 503 when they cannot "
            "be scored now (the scorer overloaded, the model being changed).",
            [*MODEL_LABELS, "reason"],
        )),
        scores=ByModel(Histogram(
            "flowad_score", "Anomaly scores (-log p); buckets at calibration quantiles.",
            MODEL_LABELS, buckets=score_buckets,
        )),
        p_values=ByModel(Histogram(
            "flowad_p_value", "Conformal p-values.", MODEL_LABELS, buckets=P_VALUE_BUCKETS
        )),
        reference_quantile=ByModel(Gauge(
            "flowad_reference_score_quantile", "Calibration score quantiles.",
            [*MODEL_LABELS, "quantile"], multiprocess_mode="livemax",
        )),
        psi=gauge("flowad_drift_psi", "Population stability index, window vs reference."),
        ks_statistic=gauge("flowad_drift_ks_statistic", "Two-sample KS statistic."),
        ks_pvalue=gauge("flowad_drift_ks_pvalue", "Two-sample KS p-value."),
        window_anomaly_rate=gauge("flowad_window_anomaly_rate", "Anomaly rate in the window."),
        target_fpr=gauge("flowad_target_fpr", "The share of normal records the model flags: "
                         "its target false-positive rate, or its contamination.",
                         "livemax"),
        window_records=gauge("flowad_drift_window_records", "Records in the drift window."),
        model_info=gauge("flowad_model_info", "1 for the model being served.", "livemax"),
        load_seconds=gauge("flowad_model_load_seconds", "Seconds the model took to load.",
                           "livemax"),
        load_failures=Counter("flowad_model_load_failures", "Models that failed to load."),
    )


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, in one increment per bucket.

    In multiprocess mode each observe writes to a memory-mapped file; 2000 of them per
    1000-record request cost ~10 ms. This reaches the same per-bucket values
    (``Histogram._buckets`` / ``_sum``, as ``observe`` does) with one write per bucket. If a
    future prometheus_client renames them, it falls back to observing one by one.

    An infinite score (a record of zero density) is counted in the ``+Inf`` bucket but left out
    of ``_sum``: one would make the sum infinite for the life of the process, and every mean
    score on the dashboard (``rate(_sum) / rate(_count)``) NaN from then on.
    """
    buckets, total = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if buckets is None or total is None or bounds is None:
        for value in values[np.isfinite(values)]:  # no public way to skip only the sum
            histogram.observe(float(value))
        return
    # observe() puts a value in the first bucket whose upper bound is >= the value
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(buckets, counts[: len(bounds)], strict=True):
        if count:
            bucket.inc(int(count))
    total.inc(float(np.sum(values[np.isfinite(values)])))


def score_buckets(quantile_values: np.ndarray) -> tuple[float, ...]:
    """Strictly increasing finite bucket bounds (ties between quantiles are merged)."""
    finite = [float(v) for v in np.unique(quantile_values) if np.isfinite(v)]
    return (*finite, float("inf"))


def forget_dead_processes(directory: str | None = None) -> list[int]:
    """Removes the live-gauge files of processes that no longer exist; returns their pids.

    In multiprocess mode every process writes its gauges to files named by its pid, and only
    a clean exit removes them: after a ``kill -9`` (or an OOM kill) of a worker, its last
    drift and model gauges would stay in ``/metrics`` for ever. Counters and histograms of dead
    processes are kept, as they must be (totals never go down). Each worker calls this when it
    starts, which is when BentoML replaces a dead one.

    Arguments:
        directory: the multiprocess directory; default ``PROMETHEUS_MULTIPROC_DIR``.
    """
    from prometheus_client import multiprocess

    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return []
    pids = {int(path.stem.rsplit("_", 1)[1])
            for path in Path(directory).glob("gauge_live*_*.db")
            if path.stem.rsplit("_", 1)[1].isdigit()}
    dead = sorted(pid for pid in pids if not alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return dead
