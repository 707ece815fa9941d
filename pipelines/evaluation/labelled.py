"""A saved detector evaluated on labelled records (``flowad evaluate``): its scores, metrics
and plots, and the columns that contributed most to the flagged records' scores."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from pipelines.evaluation.report import write_report
from pipelines.model.detector import Detector

EXPLAINED_FLAGGED = 1000  # flagged records explained for the plot (~1-3 ms each)


def evaluate_detector(detector: Detector, records: pd.DataFrame, y: np.ndarray,
                      report_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Scores ``records``, explains the most anomalous flagged ones (a bounded number) and
    writes the report into ``report_dir``; returns its metrics.

    Arguments:
        detector: the detector.
        records: the records, without the label column.
        y: their labels, 1 for an anomaly.
        report_dir: the report's folder (``metrics.json`` and plots).
    """
    scores = detector.decision_function(records)
    n_flagged = int((scores > detector.threshold_).sum())
    flagged = np.argsort(-scores)[: min(n_flagged, EXPLAINED_FLAGGED)]
    contributions = detector.explain(records.iloc[flagged])
    return write_report(report_dir, y, scores, detector.threshold_, detector.history_,
                        contributions)
