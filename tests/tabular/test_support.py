"""No accepted record scores +inf (the *discrete columns* contract): the support of discrete
and binary columns and the finite, normalised score of a value off it
(pipelines.tabular.support)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from pipelines import Detector
from pipelines.errors import SchemaError
from pipelines.model.calibration import SmallCalibrationWarning
from pipelines.tabular.encoder import TabularEncoder

TINY = {"flow_options": {"members": 1, "n_layers": 2, "hidden": 16},
        "train_options": {"max_steps": 40}, "target_fpr": 0.1}
KINDS = ("constant", "binary", "sparse_pair", "grid", "levels", "continuous", "bool", "text")


def column(kind: str, n: int, rng: np.random.Generator, step: float, start: float) -> np.ndarray:
    """``n`` training values of one column of ``kind``."""
    if kind == "constant":
        return np.full(n, start)
    if kind == "binary":
        return start + step * rng.integers(0, 2, n)
    if kind == "sparse_pair":  # the issue's case: poisson(0.01) * 2, {0, 2} seen
        return 2.0 * np.minimum(rng.poisson(0.05, n), 1)
    if kind == "grid":
        return start + step * rng.integers(0, 3 + int(rng.integers(0, 6)), n)
    if kind == "levels":
        return rng.choice(np.round(start + step * np.sort(rng.random(5)) * 7, 3), n)
    if kind == "continuous":
        return start + step * rng.normal(size=n)
    if kind == "bool":
        return rng.random(n) < 0.3
    return rng.choice(["a", "b", "c", "d"], n)


@st.composite
def tables(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training table of 2-4 columns of any kind, and new records whose numeric values are
    training values, values between them or beyond them, in any column."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    n = draw(st.integers(40, 160))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    train = {"x": rng.normal(size=n)}
    for j, kind in enumerate(kinds):
        step = draw(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 10.0]))
        start = draw(st.sampled_from([-7.0, 0.0, 1.0, 1000.0]))
        train[f"{kind}{j}"] = column(kind, n, rng, step, start)
    train = pd.DataFrame(train)
    new = train.sample(8, replace=True, random_state=int(rng.integers(2**31))).reset_index(
        drop=True)
    for name in train.columns:
        if train[name].dtype.kind != "f" and train[name].dtype.kind not in "iu":
            continue
        values = train[name].to_numpy(dtype=float)
        spread = max(float(np.ptp(values)), 1.0)
        new[name] = new[name].astype(float)
        for row in draw(st.lists(st.integers(0, 7), max_size=4)):
            new.loc[row, name] = draw(st.one_of(
                st.sampled_from(values.tolist()),
                st.floats(values.min() - 3 * spread, values.max() + 3 * spread),
                st.sampled_from(values.tolist()).map(lambda v: v + 0.5),
                st.integers(-50, 50).map(float)))
    return train, new


@settings(max_examples=300, deadline=None)
@given(table=tables())
def test_no_accepted_record_gets_an_infinite_log_jacobian(table) -> None:
    """The encoder's part of the score: finite for every record the checks accept."""
    train, new = table
    encoder = TabularEncoder().fit(train)
    try:
        encoded, log_jacobian = encoder.transform(new)
    except SchemaError:
        return  # rejected (out of range, a third value of a bool column): a 4xx, not a score
    assert np.isfinite(log_jacobian).all() and np.isfinite(encoded).all()
    assert np.array_equal(encoder.transform_records(new.to_dict(orient="records"))[1],
                          log_jacobian)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables())
def test_no_accepted_record_scores_inf(table) -> None:
    """The whole score -log p of a fitted detector (flow and encoder): finite for every record
    it accepts, on the frame and the records paths."""
    train, new = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        detector = Detector(**TINY).fit(train)
    try:
        scores = detector.decision_function(new)
    except SchemaError:
        return
    assert np.isfinite(scores).all()
    verdicts, _ = detector.record_verdicts(new.to_dict(orient="records"))
    assert np.isfinite(verdicts["score"]).all()


def test_the_issues_sparse_pair_count_scores_one_finite():
    """The issue's minimal case: count = poisson(0.01) * 2 beside a normal column, 540 rows.
    {0, 2} is no grid, so 1 lies between the two levels seen: finite, scored worse than both,
    and ROC-AUC takes the scores."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(size=540), "count": rng.poisson(0.01, 540) * 2})
    assert set(train["count"]) == {0, 2}
    detector = Detector(target_fpr=0.05, train_options={"max_epochs": 5}).fit(train)
    assert detector.describe()["grid_columns"] == {}
    test = pd.DataFrame({"x": [0.0, 0.0, 0.0, 0.0], "count": [0, 2, 1, 3]})
    scores = detector.decision_function(test)
    assert np.isfinite(scores).all()
    assert scores[2] > max(scores[0], scores[1]) and scores[3] > scores[1]
    labels = np.array([0, 0, 1, 1])
    assert roc_auc_score(labels, scores) == 1.0


@pytest.mark.parametrize("value", [2.2, 4.9, 6.0])
def test_levels_off_any_grid_score_values_between_them_finite_and_worse(value):
    """The issue's other case: levels {0, 1, 2, 3, 4, 5.5} are on no grid (5.5), so a value
    between or beyond them is off the support like a value between grid points: finite, and
    worse than its nearest level (before, 2.2 was scored in 2's cell, as normal as 2)."""
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"x": rng.normal(size=600),
                          "level": rng.choice([0, 1, 2, 3, 4, 5.5], 600)})
    detector = Detector(target_fpr=0.05, train_options={"max_epochs": 5}).fit(train)
    nearest = min([0, 1, 2, 3, 4, 5.5], key=lambda level: abs(level - value))
    scores = detector.decision_function(pd.DataFrame({"x": [0.0, 0.0],
                                                      "level": [nearest, value]}))
    assert np.isfinite(scores).all() and scores[1] > scores[0] + 1.0


def test_levels_seen_once_make_a_value_between_them_likelier():
    """eps is the Good-Turing mass of unseen values for levels, (n1 + 1/2) / (n + 1) with n1
    the levels seen once, and Krichevsky-Trofimov's 1 / (2 (n + 1)) on a grid: a column whose
    rare levels were seen once is likelier to take new values than a 0/1 flag. A column of few
    values most of them seen once is no discrete column: 80 rows of a continuous reading with
    an atom show 12 values once (it was put on its levels, and its new values flagged)."""
    rng = np.random.default_rng(3)
    codes = np.r_[[0.0, 0.7, 3.1], np.repeat([1.0, 1.5, 2.25, 4.0], 19)]
    atom = np.r_[np.round(rng.uniform(0, 10, 12), 2), np.full(68, 5.5)]
    train = pd.DataFrame({"x": rng.normal(size=79), "code": codes,
                          "flag": rng.integers(0, 2, 79), "count": rng.poisson(3, 79),
                          "reading": atom[:79]})
    encoder = TabularEncoder().fit(train)
    kinds = {spec.name: spec.kind for spec in encoder.schema_.columns}
    assert kinds == {"x": "continuous", "code": "discrete", "flag": "binary",
                     "count": "discrete", "reading": "continuous"}
    assert encoder.on_grid_.tolist() == [False, False, True]  # code, flag, count
    np.testing.assert_allclose(encoder.support_.mass, [3.5 / 80, 0.5 / 80, 0.5 / 80],
                               rtol=1e-15)
