"""Cross-conformal calibration (pipelines.model.crossconformal) and the contamination rule, checked
against brute-force definitions and simulated FPRs; and a small-table Detector's public
surface under cross-conformal calibration."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import mixed_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import Detector
from pipelines.model.artifact import calibrator_from_dict
from pipelines.model.calibration import (
    Calibrator,
    ContaminationCalibrator,
    SmallCalibrationWarning,
    conformal_threshold,
)
from pipelines.model.crossconformal import (
    FOLDS,
    CrossConformalCalibrator,
    fold_log_likelihoods,
    fold_of_rows,
)


def brute_cross_p_value(fold_scores: list[list[float]], new: list[float]) -> float:
    """Vovk's cross-conformal p-value, by counting."""
    n = sum(len(scores) for scores in fold_scores)
    at_least = sum(sum(s >= new[k] for s in scores) for k, scores in enumerate(fold_scores))
    return (1 + at_least) / (n + 1)


scores_lists = st.lists(st.lists(st.integers(0, 20).map(float), min_size=1, max_size=12),
                        min_size=2, max_size=6)


@settings(max_examples=200, deadline=None)
@given(folds=scores_lists, data=st.data())
def test_p_values_and_verdicts_match_the_definition(folds, data) -> None:
    new = data.draw(st.lists(st.lists(st.integers(-1, 21).map(float), min_size=len(folds),
                                      max_size=len(folds)), min_size=1, max_size=5))
    alpha = data.draw(st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.5]))
    calibrator = CrossConformalCalibrator(alpha).fit(folds)
    expected = [brute_cross_p_value(folds, row) for row in new]
    np.testing.assert_allclose(calibrator.p_values(new), expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(calibrator.predict(new), np.array(expected) <= alpha)
    pooled = sorted(s for fold in folds for s in fold)
    assert calibrator.threshold_ == conformal_threshold(pooled, alpha)
    assert calibrator.n_ == len(pooled)


def test_realised_fpr_is_close_to_alpha_on_exchangeable_data() -> None:
    """5-fold cross-conformal with a simple model (each fold's Gaussian fit of the others,
    score = squared z): over 4000 draws of 60 training rows and one new normal row, the share
    flagged is within the binomial noise of alpha, far below the 2 alpha worst case."""
    rng = np.random.default_rng(0)
    flagged = {0.05: 0, 0.1: 0, 0.2: 0}
    trials = 4000
    for _ in range(trials):
        rows, new = rng.normal(size=60), rng.normal()
        fold = fold_of_rows(60, FOLDS, int(rng.integers(2**31)))
        fold_scores, new_scores = [], []
        for k in range(FOLDS):
            rest = rows[fold != k]
            mean, std = rest.mean(), rest.std()
            fold_scores.append(((rows[fold == k] - mean) / std) ** 2)
            new_scores.append(((new - mean) / std) ** 2)
        for alpha in flagged:
            flagged[alpha] += bool(CrossConformalCalibrator(alpha).fit(fold_scores).predict(
                [new_scores])[0])
    for alpha, count in flagged.items():
        noise = 3 * math.sqrt(alpha * (1 - alpha) / trials)
        assert abs(count / trials - alpha) < noise, (alpha, count / trials)


def test_folds_are_near_equal_and_seeded() -> None:
    fold = fold_of_rows(203, FOLDS, 7)
    assert sorted(np.bincount(fold)) == [40, 40, 41, 41, 41]
    np.testing.assert_array_equal(fold, fold_of_rows(203, FOLDS, 7))
    assert not np.array_equal(fold, fold_of_rows(203, FOLDS, 8))


def test_fold_log_likelihoods_are_each_folds_mixture() -> None:
    per_component = np.random.default_rng(1).normal(size=(6, 4)) * 3
    folds = fold_log_likelihoods(per_component, members_per_fold=2)
    assert folds.shape == (4, 3)
    for k in range(3):
        expected = np.log(np.exp(per_component[2 * k : 2 * k + 2]).mean(axis=0))
        np.testing.assert_allclose(folds[:, k], expected, rtol=1e-12)


def test_calibrators_round_trip_through_strict_json() -> None:
    cross = CrossConformalCalibrator(0.05, members_per_fold=2).fit(
        [np.random.default_rng(k).normal(size=30 + k) for k in range(FOLDS)])
    contamination = ContaminationCalibrator(0.1).fit(np.arange(40.0), np.arange(500.0))
    split = Calibrator(0.05).fit(np.arange(50.0))
    for calibrator in (cross, contamination, split):
        state = json.loads(json.dumps(calibrator.to_dict(), allow_nan=False))
        back = calibrator_from_dict(state)
        assert type(back) is type(calibrator) and back.threshold_ == calibrator.threshold_
        np.testing.assert_array_equal(back.reference_scores_, calibrator.reference_scores_)
    assert calibrator_from_dict(cross.to_dict()).members_per_fold == 2
    with pytest.raises(ValueError, match="inconsistent"):
        calibrator_from_dict({**cross.to_dict(), "threshold": 0.0})
    with pytest.raises(ValueError, match="unknown calibration method 'magic'"):
        calibrator_from_dict({**split.to_dict(), "method": "magic"})


def test_contamination_thresholds_the_training_scores_as_pyod_does() -> None:
    training = np.random.default_rng(2).gamma(2.0, size=1000)
    calibrator = ContaminationCalibrator(0.1).fit(training[:200], training)
    assert calibrator.threshold_ == np.percentile(training, 90)
    assert calibrator.target_fpr is None and calibrator.method == "contamination"
    np.testing.assert_array_equal(calibrator.predict(training), training > np.percentile(
        training, 90))
    np.testing.assert_array_equal(calibrator.p_values(training[:5]),
                                  Calibrator(0.1).fit(training[:200]).p_values(training[:5]))
    with pytest.raises(ValueError, match=r"contamination must be in \(0, 0.5\]"):
        ContaminationCalibrator(0.7).fit(training, training)


# ----------------------------------------------------------------- a small-table detector
@pytest.fixture(scope="module")
def small() -> tuple[Detector, pd.DataFrame]:
    """200 rows at target FPR 0.01: a 40-row split cannot flag (99 needed), so fit calibrates
    cross-conformally on all 200."""
    train = mixed_frame(200, seed=0)
    return Detector(exclude=["id"], train_options={"max_epochs": 4}).fit(train), train


def test_a_table_too_small_for_a_split_is_calibrated_cross_conformally(small) -> None:
    detector, _ = small
    about = detector.describe()
    assert about["calibration"] == {"method": "cross-conformal", "n": 200,
                                    "min_rows_for_target_fpr": 99, "can_flag": True,
                                    "folds": FOLDS}
    assert about["target_fpr"] == 0.01 and about["warnings"] == []
    assert np.isfinite(detector.threshold_)  # a split of 40 rows: +inf
    assert len(detector.flow_.components) == FOLDS * 2
    assert detector.calibration_scores_.shape == (200,)
    assert detector.threshold_ == conformal_threshold(detector.calibration_scores_, 0.01)
    # it flags: a 30x amount is anomalous (a split-calibrated detector flagged nothing)
    odd = mixed_frame(50, seed=3).assign(amount=lambda f: f["amount"] * 30)
    assert detector.predict(odd).mean() > 0.9


def test_the_score_is_the_exact_mixture_and_p_values_are_cross_conformal(small) -> None:
    """Independently of the detector's scoring path: the score is -log of the equal-weight
    mixture of the 10 flows (plus the encoder's log-Jacobian), and the p-value is Vovk's with
    each fold's sub-mixture scoring that fold's training rows."""
    detector, train = small
    new = mixed_frame(40, seed=4)
    x, log_jacobian = detector.encoder_.transform(new.drop(columns="id"))
    with torch.no_grad():
        each = torch.stack([flow.log_prob(torch.as_tensor(x, dtype=torch.float32)).double()
                            for flow in detector.flow_.components]).numpy()
    mixture = np.log(np.exp(each).mean(axis=0)) + log_jacobian
    np.testing.assert_allclose(detector.score_samples(new), mixture, atol=1e-4)
    fold = fold_of_rows(len(train), FOLDS, detector.metrics_["seed"])
    xt, jt = detector.encoder_.transform(train.drop(columns="id"))
    with torch.no_grad():
        each_train = torch.stack([flow.log_prob(torch.as_tensor(xt, dtype=torch.float32))
                                  .double() for flow in detector.flow_.components]).numpy()

    def fold_score(values: np.ndarray, jacobian: np.ndarray, k: int) -> np.ndarray:
        return -(np.log(np.exp(values[2 * k : 2 * k + 2]).mean(axis=0)) + jacobian)

    fold_scores = [fold_score(each_train, jt, k)[fold == k].tolist() for k in range(FOLDS)]
    expected = [brute_cross_p_value(fold_scores, [fold_score(each, log_jacobian, k)[i]
                                                  for k in range(FOLDS)])
                for i in range(len(new))]
    np.testing.assert_allclose(detector.p_values(new), expected, atol=1e-12)
    np.testing.assert_array_equal(detector.predict(new), np.array(expected) <= 0.01)


def test_the_service_surface_works_for_a_cross_conformal_model(small, tmp_path) -> None:
    """verdict_columns, record_verdicts (the records path, bit for bit its frame's), predict,
    p_values, describe, recalibrate, save/load (same p-values), store verification through the
    reference scores, and explanations that sum to the score difference."""
    from pipelines.registry.store import save_detector
    from pipelines.registry.verify import load_verified

    detector, _ = small
    new = mixed_frame(30, seed=5).drop(columns="id")
    verdicts = detector.verdict_columns(new)
    np.testing.assert_array_equal(verdicts["p_value"], detector.p_values(new))
    np.testing.assert_array_equal(verdicts["is_anomaly"], detector.predict(new).astype(bool))
    np.testing.assert_array_equal(verdicts["score"], detector.decision_function(new))
    records = new.to_dict(orient="records")
    for rows in (records[:3], records):  # the NumPy fast path and torch
        got, unknown = detector.record_verdicts(rows)
        assert unknown == {"channel": 0}
        frame_verdicts = detector.verdict_columns(detector.schema.records_frame(rows))
        for name, values in frame_verdicts.items():
            np.testing.assert_array_equal(got[name], values, err_msg=name)
    tag = save_detector(detector, "cross-conformal")
    loaded = load_verified(tag)  # reproduces its reference scores
    np.testing.assert_array_equal(loaded.p_values(new), detector.p_values(new))
    assert loaded.describe()["calibration"] == detector.describe()["calibration"]
    assert loaded.threshold_ == detector.threshold_
    contributions = loaded.explain(new.iloc[:5])
    reference = loaded.decision_function(pd.DataFrame([loaded.explanation_reference()]))
    np.testing.assert_allclose(contributions.sum(axis=1),
                               loaded.decision_function(new.iloc[:5]) - reference, atol=1e-3)
    loaded.recalibrate(0.1)
    assert loaded.describe()["calibration"]["method"] == "cross-conformal"
    assert loaded.threshold_ == conformal_threshold(loaded.calibration_scores_, 0.1)
    np.testing.assert_array_equal(loaded.predict(new), loaded.p_values(new) <= 0.1)


def test_too_few_rows_even_for_cross_conformal_calibration_say_so() -> None:
    frame = mixed_frame(60, seed=6)
    with pytest.warns(SmallCalibrationWarning, match=r"only 60 rows, every one of them "
                      r"calibrating \(cross-conformal\).*at least 99"):
        detector = Detector(exclude=["id"], train_options={"max_epochs": 2}).fit(frame)
    assert detector.predict(frame).sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallCalibrationWarning)
        assert detector.recalibrate(0.05).describe()["calibration"]["can_flag"]


@pytest.mark.parametrize(("params", "method"), [
    ({"calibration": "split"}, "conformal"), ({}, "cross-conformal"),
    ({"target_fpr": 0.05}, "conformal"), ({"calibration": "cross", "target_fpr": 0.05},
                                          "cross-conformal")])
def test_auto_calibrates_cross_conformally_only_when_the_split_cannot_flag(params, method):
    """200 rows: a 40-row split reaches 0.05 (19 needed), not 0.01 (99 needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        detector = Detector(train_options={"max_steps": 20}, flow_options={"members": 1},
                            **params).fit(mixed_frame(200, seed=1).drop(columns="id"))
    assert detector.calibrator_.method == method


def test_a_dozen_rows_are_too_few_for_folds_so_auto_keeps_the_split():
    """Five folds of 12 rows leave one validation row per fold model: ``auto`` keeps the
    split (which trains, and says it cannot flag); asking for ``cross`` says why not."""
    frame = mixed_frame(12, seed=2).drop(columns="id")
    with pytest.warns(SmallCalibrationWarning):
        detector = Detector(train_options={"max_steps": 5}).fit(frame)
    assert detector.calibrator_.method == "conformal"
    with pytest.raises(ValueError, match="too few rows to train and validate: n_samples = 12"):
        Detector(calibration="cross", train_options={"max_steps": 5}).fit(frame)
