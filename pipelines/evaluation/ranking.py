"""Anomaly scores as scikit-learn's ranking metrics take them (finite)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def rankable_scores(scores: ArrayLike) -> NDArray[np.float64]:
    """``scores`` with ``+inf`` (a record of zero density, e.g. a value off its column's grid)
    just above the largest finite score and ``-inf`` just below the smallest: the same order,
    ties included, so ROC-AUC and average precision are unchanged, and finite, which
    scikit-learn's metrics require.

    Arguments:
        scores: anomaly scores, not NaN.
    """
    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    # the next float beyond: strictly outside every finite score, however large it is
    return np.clip(s, np.nextafter(low, -np.inf), np.nextafter(high, np.inf))
