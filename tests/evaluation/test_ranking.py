"""rankable_scores: infinite scores made finite without changing their order."""

from __future__ import annotations

import numpy as np

from pipelines.evaluation.ranking import rankable_scores


def pairwise_order(scores: np.ndarray) -> np.ndarray:
    """-1 / 0 / +1 for every pair, by comparisons (no subtraction: inf - inf is NaN)."""
    return np.array([[int(a > b) - int(a < b) for b in scores] for a in scores])


def test_order_and_ties_are_kept_and_everything_is_finite() -> None:
    scores = np.array([1e308, np.inf, -1e308, -np.inf, 0.0, np.inf, 1e308, -np.inf])
    ranked = rankable_scores(scores)
    assert np.isfinite(ranked).all()
    finite = np.isfinite(scores)
    assert np.array_equal(ranked[finite], scores[finite])
    assert np.array_equal(pairwise_order(ranked), pairwise_order(scores))


def test_without_a_finite_score_the_order_is_kept() -> None:
    scores = np.array([np.inf, -np.inf, np.inf])
    ranked = rankable_scores(scores)
    assert np.isfinite(ranked).all()
    assert np.array_equal(pairwise_order(ranked), pairwise_order(scores))
