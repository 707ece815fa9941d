"""Conformal calibration checked against brute-force definitions and simulated FPR."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from pipelines.model.calibration import Calibrator, binomial_interval, conformal_threshold, p_values

# alpha = m / 100 exactly; 0.18 and 0.41 are values where float arithmetic gets k wrong.
PERCENTS = [1, 5, 10, 18, 41, 50, 90]


def brute_threshold(scores: list[float], percent: int) -> float:
    """Definition with integer arithmetic: k = least integer >= (n+1)(1 - percent/100), then
    the least calibration value that at least k scores do not exceed."""
    n = len(scores)
    k = next(k for k in range(1, n + 2) if 100 * k >= (n + 1) * (100 - percent))
    if k > n:
        return math.inf
    return min(v for v in scores if sum(x <= v for x in scores) >= k)


def brute_p_value(cal: list[float], s: float) -> float:
    return (1 + sum(c >= s for c in cal)) / (len(cal) + 1)


def test_threshold_matches_definition_with_and_without_ties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(1, 120))
        raw = rng.normal(size=n)
        scores = np.round(raw * 3) if trial % 2 else raw  # every other trial: many ties
        for percent in PERCENTS:
            got = conformal_threshold(scores, percent / 100)
            assert got == brute_threshold(scores.tolist(), percent), (n, percent)


@pytest.mark.parametrize(("percent", "n"), [(41, 99), (18, 149), (18, 249), (19, 299)])
def test_threshold_exact_where_float_arithmetic_fails(percent: int, n: int) -> None:
    scores = np.arange(n, dtype=float)  # k-th smallest = k - 1
    assert conformal_threshold(scores, percent / 100) == brute_threshold(scores.tolist(), percent)


@pytest.mark.parametrize(("alpha", "n_inf", "n_max"), [(0.01, 98, 99), (0.05, 18, 19)])
def test_threshold_infinite_when_too_few_scores(alpha: float, n_inf: int, n_max: int) -> None:
    # n + 1 < 1/alpha: no calibration score is high enough to guarantee FPR <= alpha.
    assert conformal_threshold(np.arange(n_inf, dtype=float), alpha) == math.inf
    assert conformal_threshold(np.arange(n_max, dtype=float), alpha) == n_max - 1
    cal = Calibrator(alpha).fit(np.arange(n_inf, dtype=float))
    assert cal.threshold_ == math.inf
    assert not cal.predict(np.array([1e300, math.inf])).any()


def test_p_values_match_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        cal = rng.integers(0, 8, size=int(rng.integers(1, 40))).astype(float)
        new = np.concatenate([rng.integers(-1, 10, size=30).astype(float),
                              [-math.inf, math.inf], cal[:3]])  # exact ties with cal included
        got = p_values(cal, new)
        want = [brute_p_value(cal.tolist(), s) for s in new]
        assert got.tolist() == want
        assert np.all((got > 0) & (got <= 1))
        np.testing.assert_array_equal(Calibrator(0.1).fit(cal).p_values(new), got)


@settings(max_examples=150, deadline=None)
@given(cal=st.lists(st.integers(-5, 5), min_size=1, max_size=60),
       new=st.lists(st.integers(-7, 7), min_size=1, max_size=20),
       percent=st.sampled_from(PERCENTS))
def test_flagged_exactly_when_p_value_at_most_alpha(cal: list[int], new: list[int],
                                                     percent: int) -> None:
    alpha = percent / 100
    c = Calibrator(alpha).fit(np.array(cal, float))
    s = np.array(new, float)
    np.testing.assert_array_equal(c.predict(s), c.p_values(s) <= alpha)


@settings(max_examples=100, deadline=None)
@given(cal=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
       a=st.floats(-2e6, 2e6), b=st.floats(-2e6, 2e6))
def test_p_values_decrease_with_score(cal: list[float], a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    p_lo, p_hi = p_values(cal, [lo, hi])
    assert 1 / (len(cal) + 1) <= p_hi <= p_lo <= 1


def test_realised_fpr_on_fresh_exchangeable_data() -> None:
    """1000 calibrations on n = 500 normal scores, alpha = 0.05. For continuous scores the true
    exceedance probability P(S > t) of a fresh score has mean exactly (n + 1 - k) / (n + 1)
    = 25/501 <= alpha; 1000 repetitions resolve it to ~0.0007, a third of one rank (1/501), so
    an off-by-one threshold fails. Realised FPRs on fresh data stay in binomial intervals."""
    rng = np.random.default_rng(2024)
    n_cal, n_test, alpha, reps = 500, 2000, 0.05, 1000
    exceed, realised, outside = [], [], 0
    for _ in range(reps):
        t = Calibrator(alpha).fit(rng.normal(size=n_cal)).threshold_
        q = float(norm.sf(t))  # exact P(score > t) for a fresh N(0, 1) score
        fpr = float(np.mean(rng.normal(size=n_test) > t))
        lo, hi = binomial_interval(n_test, q, level=0.999)
        outside += not lo <= fpr <= hi
        exceed.append(q)
        realised.append(fpr)
    se = np.std(exceed) / math.sqrt(reps)
    assert np.mean(exceed) <= alpha + 2 * se  # marginal guarantee: E[P(S > t)] <= alpha
    assert abs(np.mean(exceed) - 25 / 501) <= 3 * se
    assert np.mean(realised) <= alpha + 0.002
    assert outside <= 5  # about 1 expected at level 0.999


def test_binomial_interval_covers() -> None:
    rng = np.random.default_rng(3)
    lo, hi = binomial_interval(1000, 0.05, level=0.99)
    assert lo < 0.05 < hi and hi - lo < 0.05
    k = rng.binomial(1000, 0.05, size=20_000) / 1000
    assert np.mean((k >= lo) & (k <= hi)) >= 0.99
    with pytest.raises(ValueError):
        binomial_interval(0, 0.05)


def test_round_trip_is_bit_identical_through_strict_json() -> None:
    rng = np.random.default_rng(4)
    scores = np.concatenate([rng.normal(size=300) * 1e3, [0.1 + 0.2, 5e-324, -1e300, 1 / 3]])
    cal = Calibrator(0.05).fit(scores)
    text = json.dumps(cal.to_dict(), allow_nan=False)
    back = Calibrator.from_dict(json.loads(text))
    assert back.reference_scores_.dtype == np.float64
    np.testing.assert_array_equal(back.reference_scores_.view(np.uint64),
                                  np.sort(scores).view(np.uint64))
    assert back.threshold_ == cal.threshold_ and back.n_ == cal.n_ == scores.size
    probe = rng.normal(size=50) * 1e3
    np.testing.assert_array_equal(back.p_values(probe), cal.p_values(probe))


def test_infinite_threshold_round_trips() -> None:
    cal = Calibrator(0.01).fit(np.arange(10.0))
    state = json.loads(json.dumps(cal.to_dict(), allow_nan=False))
    assert state["threshold"] == "inf"
    assert Calibrator.from_dict(state).threshold_ == math.inf


@pytest.mark.parametrize("n_infinite", [1, 3, 30])
def test_zero_density_calibration_scores_are_scores_like_any_other(n_infinite: int) -> None:
    """+inf (a calibration record off its column's grid) ranks above every finite score: the
    threshold and p-values follow the definitions, and state round-trips through strict JSON."""
    rng = np.random.default_rng(n_infinite)
    scores = np.concatenate([rng.normal(size=97), np.full(n_infinite, math.inf)])
    for percent in (1, 5, 41):
        cal = Calibrator(percent / 100).fit(scores)
        assert cal.threshold_ == brute_threshold(scores.tolist(), percent)
    probe = np.array([-1.0, 0.0, 2.5, 1e300, math.inf])
    expected = [brute_p_value(scores.tolist(), s) for s in probe]
    np.testing.assert_allclose(cal.p_values(probe), expected, rtol=0, atol=1e-15)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict(), allow_nan=False)))
    np.testing.assert_array_equal(back.reference_scores_, cal.reference_scores_)
    assert back.threshold_ == cal.threshold_


def test_from_dict_rejects_inconsistent_state() -> None:
    state = Calibrator(0.05).fit(np.arange(100.0)).to_dict()
    with pytest.raises(ValueError, match="inconsistent"):
        Calibrator.from_dict({**state, "threshold": 1.0})
    with pytest.raises(ValueError, match="format_version"):
        Calibrator.from_dict({**state, "format_version": 99})


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [1.0, -math.inf], [[1.0, 2.0]]])
def test_rejects_bad_calibration_scores(bad: list) -> None:
    with pytest.raises(ValueError):
        Calibrator().fit(bad)
    with pytest.raises(ValueError):
        conformal_threshold(bad, 0.05)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, math.nan])
def test_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="target_fpr"):
        Calibrator(alpha).fit([1.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        conformal_threshold([1.0, 2.0], alpha)


def test_unfitted_and_nan_scores() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        Calibrator().predict([1.0])
    cal = Calibrator(0.1).fit(np.arange(50.0))
    with pytest.raises(ValueError, match="NaN"):
        cal.predict([1.0, math.nan])
    with pytest.raises(ValueError, match="NaN"):
        cal.p_values([math.nan])
