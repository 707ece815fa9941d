"""The Detector as scikit-learn and PyOD users know an outlier detector: signatures, signs,
labels, fitted attributes, estimator checks, PyOD's own tooling, recalibration."""

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import mixed_frame
from sklearn.base import clone, is_outlier_detector
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipelines import Detector, SchemaError
from pipelines.model.calibration import (
    Calibrator,
    SmallCalibrationWarning,
    conformal_threshold,
    min_calibration_rows,
)

# Tiny flows, a few steps: these tests are about the interface, not the fit.
TINY = {"flow_options": {"members": 1, "n_layers": 2, "hidden": 16},
        "train_options": {"max_steps": 50}}


def tiny(**params: object) -> Detector:
    return Detector(**{**TINY, **params})


@pytest.fixture(scope="module")
def fitted(trained: tuple[Detector, pd.DataFrame]) -> tuple[Detector, pd.DataFrame]:
    return trained


# scikit-learn's checks that do not apply, each with why. Everything else must pass.
NOT_APPLICABLE = {
    "check_outliers_fit_predict": "predict follows PyOD: 1 = anomaly, 0 = normal, not -1/+1",
    "check_outliers_train": "predict follows PyOD (0/1, not -1/+1) and decision_function is "
                            "PyOD's anomaly score (higher = more anomalous), the opposite sign "
                            "of scikit-learn's",
    "check_fit2d_1feature": "fits on 10 rows, too few to train, validate and calibrate: the "
                            "error names the rows (n_samples = 10), not the feature count",
    "check_dtype_object": "object columns are categorical text: a dict in one is rejected as a "
                          "container with a SchemaError (a ValueError naming the column and row), "
                          "not with the TypeError the check expects",
}


@parametrize_with_checks([Detector(device="cpu", **TINY)],
                         expected_failed_checks=lambda estimator: NOT_APPLICABLE)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)  # the checks' tables are small
        check(estimator)


def test_it_is_an_outlier_detector():
    assert is_outlier_detector(Detector())
    assert Detector()._estimator_type == "outlier_detector"  # what PyOD reads
    assert Detector().progress is False


def test_fit_takes_y_positionally_and_returns_self():
    frame = mixed_frame(400, seed=1)
    detector = tiny(exclude=["id"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        assert detector.fit(frame, np.zeros(len(frame))) is detector


def test_signs_labels_and_probabilities(fitted):
    detector, _ = fitted
    frame = mixed_frame(300, seed=2)
    odd = frame.assign(amount=frame["amount"] * 30)
    log_p = detector.score_samples(frame)
    np.testing.assert_array_equal(log_p, detector.log_likelihood(frame))
    np.testing.assert_array_equal(detector.decision_function(frame), -log_p)
    # score_samples: higher = more normal; decision_function: higher = more anomalous.
    assert np.mean(detector.score_samples(odd) < log_p) > 0.95
    labels = detector.predict(pd.concat([frame, odd]))
    assert labels.dtype.kind == "i" and set(np.unique(labels)) <= {0, 1}
    assert labels[len(frame):].mean() > 0.9 and labels[: len(frame)].mean() < 0.2
    proba = detector.predict_proba(frame, method="conformal")
    p = detector.p_values(frame)
    np.testing.assert_array_equal(proba, np.column_stack([p, 1 - p]))
    np.testing.assert_array_equal(detector.predict(frame), (p <= detector.target_fpr).astype(int))
    verdicts = detector.verdicts(frame)
    np.testing.assert_array_equal(verdicts["is_anomaly"].astype(int), detector.predict(frame))


def test_fitted_attributes_describe_the_input_columns(fitted):
    detector, train = fitted
    assert detector.n_features_in_ == train.shape[1] == len(detector.feature_names_in_)
    assert list(detector.feature_names_in_) == list(train.columns)
    assert detector.input_columns == [c for c in train.columns if c != "id"]
    assert detector.n_encoded_features_ > detector.n_features_in_  # one-hot, missing flags
    # PyOD's: scores and labels of the rows fit was given, in their order.
    np.testing.assert_allclose(detector.decision_scores_, detector.decision_function(train))
    np.testing.assert_array_equal(detector.labels_,
                                  (detector.decision_scores_ > detector.threshold_).astype(int))
    n_cal = detector.metrics_["n_calibration"]
    assert detector.calibration_scores_.shape == (n_cal,)
    assert detector.threshold_ == conformal_threshold(detector.calibration_scores_, 0.05)


def test_arrays_and_non_string_column_names():
    X = np.random.default_rng(0).normal(size=(600, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        from_array = tiny().fit(X)
        from_frame = tiny().fit(pd.DataFrame(X))  # integer column names
    assert list(from_array.feature_names_in_) == ["x0", "x1", "x2"]
    assert list(from_frame.feature_names_in_) == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(from_array.decision_function(X),
                                  from_frame.decision_function(pd.DataFrame(X)))
    np.testing.assert_array_equal(from_array.decision_function(X),
                                  from_array.decision_function(pd.DataFrame(X)))
    with pytest.raises(ValueError, match="X has 2 features, but Detector is expecting 3"):
        from_array.decision_function(X[:, :2])


def test_fit_leaves_the_global_torch_rng_alone_and_is_reproducible():
    frame = mixed_frame(600, seed=3)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        first = tiny(exclude=["id"], random_state=7).fit(frame)
        assert torch.equal(torch.get_rng_state(), state)  # neither reseeded nor drawn from
        second = clone(first).fit(frame)
    np.testing.assert_array_equal(first.decision_function(frame), second.decision_function(frame))


@pytest.mark.parametrize(("params", "error", "message"), [
    ({"target_fpr": 0}, ValueError, r"target_fpr must be in \(0, 1\), got 0"),
    ({"target_fpr": 1.5}, ValueError, "target_fpr must be in"),
    ({"model": "maf"}, ValueError, "model must be 'realnvp' or 'ffjord', got 'maf'"),
    ({"validation_fraction": 0}, ValueError, "validation_fraction must be in"),
    ({"calibration_fraction": 1.0}, ValueError, "calibration_fraction must be in"),
    ({"validation_fraction": 0.5, "calibration_fraction": 0.5}, ValueError, "leave rows"),
    ({"exclude": "id"}, TypeError, r"write exclude=\['id'\]"),
    ({"n_threads": -1}, ValueError, "n_threads must be None or an integer >= 0"),
    ({"flow_options": {"members": 0}}, ValueError, r"flow_options\['members'\] must be"),
])
def test_bad_parameters_fail_before_training_and_name_themselves(monkeypatch, params, error,
                                                                 message):
    import pipelines.model.fitting

    trained = []
    monkeypatch.setattr(pipelines.model.fitting, "train_flow", lambda *a, **k: trained.append(a))
    with pytest.raises(error, match=message):
        Detector(**params, train_options={"max_epochs": 1}).fit(mixed_frame(300, seed=3))
    assert not trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_says_so():
    with pytest.raises(ValueError, match="device='cuda', but CUDA is not available here"):
        tiny(device="cuda").fit(mixed_frame(300, seed=3))


def test_random_state_none_or_a_generator_draws_a_seed_as_scikit_learn_does():
    frame = mixed_frame(400, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        drawn = [tiny(exclude=["id"], random_state=np.random.RandomState(5)).fit(frame)
                 for _ in range(2)]
        seeded = tiny(exclude=["id"], random_state=drawn[0].metrics_["seed"]).fit(frame)
        unseeded = tiny(exclude=["id"], random_state=None).fit(frame)
    assert drawn[0].metrics_["seed"] == np.random.RandomState(5).randint(2**31 - 1)
    np.testing.assert_array_equal(seeded.decision_function(frame),
                                  drawn[0].decision_function(frame))
    assert isinstance(unseeded.metrics_["seed"], int)


def test_n_threads_zero_keeps_torchs_setting(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        tiny(exclude=["id"], n_threads=0).fit(mixed_frame(300, seed=3))
    assert seen == []


def test_excluding_a_column_the_data_lacks_warns():
    with pytest.warns(UserWarning, match=r"exclude names column\(s\) \['ID'\] that the data"):
        tiny(exclude=["id", "ID"]).fit(mixed_frame(400, seed=3))


def test_a_small_calibration_split_warns_with_the_minimum_rows():
    frame = mixed_frame(130, seed=4)  # 26 calibration rows, as in the wine example
    with pytest.warns(SmallCalibrationWarning, match=r"only 26 calibration rows.*at least 99"
                      ) as caught:
        detector = tiny(exclude=["id"], target_fpr=0.01, calibration="split").fit(frame)
    assert caught[0].filename == __file__  # points at the caller's line, not flowad's
    assert min_calibration_rows(0.01) == 99
    assert math.isinf(detector.threshold_) and detector.predict(frame).sum() == 0
    about = detector.describe()
    assert about["calibration"] == {"method": "conformal", "n": 26,
                                    "min_rows_for_target_fpr": 99, "can_flag": False}
    assert "at least 99" in about["warnings"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallCalibrationWarning)  # enough rows: no warning
        assert detector.recalibrate(0.05).describe()["warnings"] == []


def test_recalibrate_moves_the_threshold_without_retraining(fitted):
    original, _ = fitted
    detector = copy.deepcopy(original)
    weights = [p.detach().clone() for p in detector.flow_.parameters()]
    frame = mixed_frame(400, seed=5)
    scores = detector.decision_function(frame)
    assert detector.recalibrate(0.2) is detector
    assert detector.target_fpr == 0.2
    assert detector.threshold_ == conformal_threshold(detector.calibration_scores_, 0.2)
    assert detector.threshold_ < original.threshold_
    assert all(torch.equal(a, b) for a, b in zip(weights, detector.flow_.parameters(),
                                                 strict=True))
    np.testing.assert_array_equal(detector.decision_function(frame), scores)
    np.testing.assert_array_equal(detector.predict(frame), (scores > detector.threshold_))
    assert 0.1 < detector.predict(frame).mean() < 0.3


def test_pyod_tutorial_lines_run_unchanged_but_the_class():
    """PyOD's README example (generate_data, standardizer, fit, labels_, decision_scores_,
    predict, decision_function, predict_proba, evaluate_print), with flowad's Detector."""
    from pyod.utils.data import evaluate_print, generate_data
    from pyod.utils.utility import standardizer
    from sklearn.metrics import roc_auc_score

    X_train, X_test, y_train, y_test = generate_data(
        n_train=1000, n_test=500, n_features=4, contamination=0.1, random_state=42)
    X_train_norm, X_test_norm = standardizer(X_train, X_test)

    clf_name = "flowad"
    clf = Detector(target_fpr=0.1, flow_options={"members": 1}, train_options={"max_steps": 300})
    clf.fit(X_train_norm)

    y_train_pred = clf.labels_  # binary labels (0: inliers, 1: outliers)
    y_train_scores = clf.decision_scores_  # raw outlier scores
    y_test_pred = clf.predict(X_test_norm)  # outlier labels (0 or 1)
    y_test_scores = clf.decision_function(X_test_norm)  # outlier scores
    y_test_proba = clf.predict_proba(X_test_norm)  # outlier probability

    evaluate_print(clf_name, y_train, y_train_scores)
    evaluate_print(clf_name, y_test, y_test_scores)

    assert y_train_pred.shape == y_train.shape and y_test_pred.shape == y_test.shape
    assert y_test_proba.shape == (len(X_test), 2)
    np.testing.assert_allclose(y_test_proba.sum(axis=1), 1.0)
    assert roc_auc_score(y_test, y_test_scores) > 0.9
    assert roc_auc_score(y_train, y_train_scores) > 0.9


# --------------------------------------------------------------------------- PyOD parity
class PyODOf:
    """PyOD's own BaseDetector methods (predict_proba, predict_confidence) run on a flowad
    detector's scores, with the calibration scores in the place of PyOD's training scores
    (what flowad documents it does): the reference its parity is checked against."""

    def __new__(cls, detector: Detector, contamination: float):
        from pyod.models.base import BaseDetector

        class Scores(BaseDetector):
            def __init__(self, contamination: float) -> None:
                super().__init__(contamination=contamination)

            def fit(self, X, y=None):
                return self

            def decision_function(self, X):
                return detector.decision_function(X)

        pyod = Scores(contamination=contamination)
        pyod.decision_scores_ = detector.calibration_scores_
        pyod.threshold_ = detector.threshold_
        pyod.labels_ = (pyod.decision_scores_ > pyod.threshold_).astype(int)
        pyod._mu, pyod._sigma = pyod.decision_scores_.mean(), pyod.decision_scores_.std()
        pyod._classes = 2  # what PyOD's fit sets (_set_n_classes without labels)
        return pyod


def test_predict_proba_and_confidence_are_pyods(fitted):
    """linear (PyOD's default), unify, and the confidence of predict, as PyOD computes them;
    the conformal version is a named method. On normal data the linear anomaly probability
    rarely passes 0.5 (1 - p-value, the old default, averaged 0.5 and flagged half)."""
    detector, _ = fitted
    frame = pd.concat([mixed_frame(300, seed=2),
                       mixed_frame(20, seed=3).assign(amount=lambda f: f["amount"] * 30)])
    pyod = PyODOf(detector, contamination=detector.target_fpr)
    for method in ("linear", "unify"):
        np.testing.assert_allclose(detector.predict_proba(frame, method=method),
                                   pyod.predict_proba(frame, method=method), rtol=1e-12)
    np.testing.assert_array_equal(detector.predict_proba(frame),
                                  detector.predict_proba(frame, method="linear"))
    np.testing.assert_allclose(detector.predict_confidence(frame),
                               pyod.predict_confidence(frame), rtol=1e-12)
    labels, confidence = detector.predict(frame, return_confidence=True)
    np.testing.assert_array_equal(labels, pyod.predict(frame))
    np.testing.assert_array_equal(confidence, detector.predict_confidence(frame))
    proba, confidence = detector.predict_proba(frame, return_confidence=True)
    np.testing.assert_array_equal(proba, detector.predict_proba(frame))
    np.testing.assert_array_equal(confidence, detector.predict_confidence(frame))
    assert (detector.predict_proba(frame[:300])[:, 1] > 0.5).mean() < 0.1
    assert (detector.predict_proba(frame[:300], method="conformal")[:, 1] > 0.5).mean() > 0.3
    with pytest.raises(ValueError, match="method must be one of"):
        detector.predict_proba(frame, method="softmax")


def test_contamination_is_pyods_thresholding_rule():
    """The (1 - contamination) quantile of the training scores, as PyOD thresholds: labels_,
    predict and the confidence follow it; p-values stay conformal; describe() says which rule
    the threshold is (no target FPR); it saves and loads."""
    from pipelines.registry.store import save_detector
    from pipelines.registry.verify import load_verified

    frame = mixed_frame(600, seed=6)
    detector = tiny(exclude=["id"], contamination=0.1).fit(frame)
    assert detector.threshold_ == np.percentile(detector.decision_scores_, 90)
    np.testing.assert_array_equal(detector.labels_,
                                  detector.decision_scores_ > detector.threshold_)
    assert detector.labels_.mean() == pytest.approx(0.1, abs=0.002)
    new = mixed_frame(200, seed=7)
    scores = detector.decision_function(new)
    np.testing.assert_array_equal(detector.predict(new), scores > detector.threshold_)
    np.testing.assert_array_equal(detector.p_values(new), Calibrator(0.1).fit(
        detector.calibration_scores_).p_values(scores))
    np.testing.assert_allclose(detector.predict_confidence(new),
                               PyODOf(detector, 0.1).predict_confidence(new), rtol=1e-12)
    about = detector.describe()
    assert about["target_fpr"] is None and about["contamination"] == 0.1
    assert about["calibration"]["method"] == "contamination"
    loaded = load_verified(save_detector(detector, "contaminated"))
    assert loaded.threshold_ == detector.threshold_ and loaded.contamination == 0.1
    np.testing.assert_array_equal(loaded.predict(new), detector.predict(new))
    loaded.recalibrate(0.05)  # back to a conformal threshold
    assert loaded.contamination is None and loaded.describe()["target_fpr"] == 0.05
    assert loaded.threshold_ == conformal_threshold(loaded.calibration_scores_, 0.05)


@pytest.mark.parametrize(("params", "message"), [
    ({"contamination": 0.1, "target_fpr": 0.05},
     r"contamination=0.1 and target_fpr=0.05 are two thresholding rules: pass one"),
    ({"contamination": 0.7}, r"contamination must be in \(0, 0.5\]"),
    ({"contamination": 0.1, "calibration": "cross"}, "calibration='cross'"),
    ({"calibration": "jackknife"}, "calibration must be one of"),
])
def test_bad_thresholding_parameters_fail_before_training(monkeypatch, params, message):
    import pipelines.model.fitting

    trained = []
    monkeypatch.setattr(pipelines.model.fitting, "train_flow", lambda *a, **k: trained.append(a))
    with pytest.raises(ValueError, match=message):
        tiny(**params).fit(mixed_frame(300, seed=3))
    assert not trained


def test_set_params_after_fit_leaves_describe_and_threshold_agreeing(fitted, tmp_path):
    """describe() reports the FPR the threshold was fitted at, and says that the parameter
    now differs; saving refuses until recalibrate (or a refit) applies it."""
    detector = copy.deepcopy(fitted[0])
    threshold = detector.threshold_
    detector.set_params(target_fpr=0.2)
    about = detector.describe()
    assert about["target_fpr"] == 0.05 and about["threshold"] == threshold
    assert detector.threshold_ == conformal_threshold(detector.calibration_scores_, 0.05)
    assert any("fitted at target FPR 0.05, the parameters now say target_fpr 0.2" in warning
               for warning in about["warnings"])
    with pytest.raises(ValueError, match=r"not saved: the threshold was fitted at target FPR "
                                         r"0.05.*recalibrate\(0.2\)"):
        detector.save(tmp_path)
    detector.recalibrate(0.2)
    assert detector.describe()["target_fpr"] == 0.2 and detector.describe()["warnings"] == []
    detector.save(tmp_path)


def test_a_frame_without_an_array_fitted_detectors_columns_says_why():
    X = np.random.default_rng(0).normal(size=(600, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        detector = tiny().fit(X)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    with pytest.raises(SchemaError, match=r"missing column\(s\): 'x0', 'x1', 'x2': this "
                                          r"detector was fitted on an array, whose columns are "
                                          r"named x0 \.\. x2"):
        detector.decision_function(frame)
    np.testing.assert_array_equal(detector.decision_function(frame.to_numpy()),
                                  detector.decision_function(X))
