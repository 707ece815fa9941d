"""Score drift: a sliding window of recent scores compared with the calibration reference."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp

# Deciles of the reference: each bin holds ~10% of calibration scores.
PSI_BIN_PROBABILITIES = np.linspace(0.1, 0.9, 9)
PSI_FLOOR = 1e-4  # keeps log(0) out of empty bins


@dataclass(frozen=True)
class DriftStatistics:
    psi: float
    ks_statistic: float
    ks_pvalue: float
    anomaly_rate: float
    n: int


def population_stability_index(reference: np.ndarray, observed: np.ndarray) -> float:
    """PSI = sum over bins of (o - r) * ln(o / r), bins at the reference deciles.

    Common reading: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift.
    """
    # finite edges only: deciles among +inf scores (zero density) are inf or NaN
    with np.errstate(invalid="ignore"):  # inf - inf between two infinite deciles
        edges = np.quantile(reference, PSI_BIN_PROBABILITIES)
    edges = np.unique(edges[np.isfinite(edges)])
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    r = np.histogram(reference, bins)[0] / len(reference)
    o = np.histogram(observed, bins)[0] / len(observed)
    r, o = np.clip(r, PSI_FLOOR, None), np.clip(o, PSI_FLOOR, None)
    return float(np.sum((o - r) * np.log(o / r)))


class DriftWindow:
    """The last ``size`` scores seen by this worker, and their drift against the reference.

    Arguments:
        reference: calibration scores (the reference distribution).
        threshold: the calibrated threshold, for the window's anomaly rate.
        size: window length in records.
    """

    def __init__(self, reference: np.ndarray, threshold: float, size: int) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        self.threshold = threshold
        self.scores: deque[float] = deque(maxlen=size)

    def add(self, scores: np.ndarray) -> None:
        self.scores.extend(np.asarray(scores, dtype=np.float64).tolist())

    def statistics(self) -> DriftStatistics | None:
        """None until the window holds enough scores for the statistics to mean something."""
        if len(self.scores) < 50:
            return None
        window = np.fromiter(self.scores, dtype=np.float64)
        ks = ks_2samp(window, self.reference)
        return DriftStatistics(
            psi=population_stability_index(self.reference, window),
            ks_statistic=float(ks.statistic),
            ks_pvalue=float(ks.pvalue),
            anomaly_rate=float(np.mean(window > self.threshold)),
            n=len(window),
        )
