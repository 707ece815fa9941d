"""service.drift: PSI and the drift window with scores of zero density (+inf)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from service.drift import DriftWindow, population_stability_index


def psi_by_definition(reference: np.ndarray, observed: np.ndarray) -> float:
    """Bins at the reference's finite deciles, the first open to -inf and the last to +inf
    (closed), shares floored at 1e-4, PSI = sum (o - r) ln(o / r); counted value by value."""
    with np.errstate(invalid="ignore"):
        deciles = [np.quantile(reference, q) for q in np.linspace(0.1, 0.9, 9)]
    finite = sorted({d for d in deciles if np.isfinite(d)})
    bins = [-np.inf, *finite, np.inf]
    total = 0.0
    for i in range(len(bins) - 1):
        last = i == len(bins) - 2

        def share(x: np.ndarray, lo: float = bins[i], hi: float = bins[i + 1],
                  last: bool = last) -> float:
            inside = [(v >= lo) and (v < hi or (last and v <= hi)) for v in x]
            return max(sum(inside) / len(x), 1e-4)

        r, o = share(reference), share(observed)
        total += (o - r) * np.log(o / r)
    return total


def test_infinite_scores_fall_in_the_top_bin_and_keep_the_statistics_finite() -> None:
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.normal(size=200), np.full(30, np.inf)])
    observed = np.concatenate([rng.normal(size=200), np.full(5, np.inf)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert population_stability_index(reference, rng.permutation(reference)) == 0.0
        psi = population_stability_index(reference, observed)
        window = DriftWindow(reference, threshold=2.0, size=500)
        window.add(observed)
        statistics = window.statistics()
    assert psi == pytest.approx(psi_by_definition(reference, observed), rel=1e-12)
    assert statistics is not None and statistics.psi == psi
    assert statistics.anomaly_rate == np.mean(observed > 2.0)
