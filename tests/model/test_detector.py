import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, mixed_frame
from scipy.stats import betabinom, norm

from pipelines import Detector, SchemaError
from pipelines.evaluation.protocol import load_npz
from pipelines.model.defaults import default_flow_options


@pytest.fixture(scope="module")
def fitted(trained: tuple[Detector, pd.DataFrame]) -> tuple[Detector, pd.DataFrame]:
    return trained


def test_fit_sets_fitted_attributes_and_scores_are_finite(fitted):
    detector, _ = fitted
    assert detector.metrics_["n_calibration"] == 600
    assert np.isfinite(detector.threshold_)
    frame = mixed_frame(500, seed=1)
    scores = detector.decision_function(frame)
    assert scores.shape == (500,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(detector.score_samples(frame), detector.log_likelihood(frame))
    np.testing.assert_array_equal(scores, -detector.log_likelihood(frame))


def test_verdicts_are_consistent(fitted):
    detector, _ = fitted
    frame = mixed_frame(400, seed=2)
    verdicts = detector.verdicts(frame)
    assert list(verdicts.columns) == ["score", "log_likelihood", "p_value", "is_anomaly"]
    assert ((verdicts.p_value > 0) & (verdicts.p_value <= 1)).all()
    np.testing.assert_array_equal(verdicts.is_anomaly, verdicts.score > detector.threshold_)
    np.testing.assert_array_equal(verdicts.is_anomaly, detector.predict(frame))


def test_scores_do_not_depend_on_batch_or_order(fitted):
    detector, _ = fitted
    frame = mixed_frame(1000, seed=3)
    alone = detector.decision_function(frame.iloc[:5])
    together = detector.decision_function(frame)[:5]
    reversed_ = detector.decision_function(frame.iloc[::-1])[-5:][::-1]
    assert np.abs(alone - together).max() < 1e-4
    assert np.abs(alone - reversed_).max() < 1e-4


def test_anomalies_score_higher_than_normal_records(fitted):
    detector, _ = fitted
    normal = mixed_frame(300, seed=4)
    odd = normal.copy()
    odd["amount"] *= 30
    assert np.mean(detector.decision_function(odd) > detector.decision_function(normal)) > 0.95


def test_realised_fpr_matches_the_target_on_fresh_normal_data():
    train = mixed_frame(12_000, seed=10)
    detector = Detector(target_fpr=0.05, exclude=["id"], train_options=FAST)
    detector.fit(train)
    n_test = 20_000
    flagged = int(detector.predict(mixed_frame(n_test, seed=11)).sum())
    # Conformal theory: with n calibration scores and k = ceil((n+1)(1-alpha)), the mass above
    # the threshold is Beta(n+1-k, k), so the flagged count is beta-binomial.
    # Computed here from first principles, independently of calibration.conformal_fpr_interval.
    n = detector.metrics_["n_calibration"]
    k = int(np.ceil((n + 1) * 0.95))
    low, high = betabinom.interval(0.99, n_test, n + 1 - k, k)
    print(f"realised FPR {flagged / n_test:.4f}, 99% interval [{low / n_test:.4f}, "
          f"{high / n_test:.4f}] (n_cal={n})")
    assert low <= flagged <= high


BENCHMARK_DATASETS = ["2_annthyroid", "4_breastw", "5_campaign", "6_cardio", "20_letter",
                      "23_mammography", "27_PageBlocks", "28_pendigits", "29_Pima",
                      "30_satellite", "31_satimage-2", "32_shuttle", "38_thyroid", "40_vowels"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARK_DATASETS)
def test_every_dataset_kind_trains_without_nonfinite_values(adbench_dir, name):
    """The default configuration, on a short epoch budget."""
    X, y = load_npz(adbench_dir / f"{name}.npz")
    X = X[y == 0][:3000]
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    detector = Detector(train_options={"max_epochs": 3}).fit(frame)
    # two flows; five fold models of two under cross-conformal calibration (4_breastw: 444 rows)
    folds = 5 if detector.calibrator_.method == "cross-conformal" else 1
    assert detector.metrics_["members"] == 2 * folds == len(detector.flow_.components)
    assert all(np.isfinite(h["train_nll"]) and np.isfinite(h["val_nll"])
               for h in detector.history_)
    assert detector.metrics_["recovered_nonfinite"] == 0
    assert np.isfinite(detector.score_samples(frame)).all()


def test_an_atom_of_a_continuous_column_gets_its_mass_per_cell_not_a_spike():
    """Half of ``a`` sits exactly at 0. Dequantised over its cell of width h, the density of
    ``(0, b)`` is ``(0.5 / h + 0.5 phi(0)) phi(b)`` in closed form; without atoms the flow
    piles density onto the point mass, and the log-likelihood there runs away."""
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({"a": np.where(rng.random(n) < 0.5, 0.0, rng.normal(0, 1, n)),
                          "b": rng.normal(0, 1, n)})
    probe = pd.DataFrame({"a": 0.0, "b": [-0.5, 0.0, 0.5]})
    fitted = {share: Detector(atom_share=share, calibration_fraction=0.0,
                              flow_options={"members": 1})  # one flow: a third of the time
              .fit(frame) for share in (0.01, None)}
    h = fitted[0.01].encoder_.atom_width_[0]
    exact = np.log(0.5 / h + 0.5 * norm.pdf(0.0)) + norm.logpdf(probe["b"])
    assert np.abs(fitted[0.01].log_likelihood(probe) - exact).max() < 0.5
    assert (fitted[None].log_likelihood(probe) - exact).min() > 1.5


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["amount"]), "amount"),
        (lambda f: f.assign(surprise=1.0), "surprise"),
        (lambda f: f.assign(amount=f["amount"].astype(object).where(f.index != 3, "abc")),
         "amount"),
        (lambda f: f.assign(ratio=np.where(f.index == 2, np.nan, f["ratio"])), "ratio"),
        (lambda f: f.assign(ratio=np.where(f.index == 2, np.inf, f["ratio"])), "ratio"),
        (lambda f: f.assign(count=pd.Timestamp("2026-01-01")), "count"),
        (lambda f: f.iloc[:0], "empty"),
    ],
    ids=["missing", "unexpected", "string", "nan", "inf", "dtype", "empty"],
)
def test_bad_input_names_the_problem(fitted, mutate, message):
    detector, _ = fitted
    with pytest.raises(SchemaError, match=message):
        detector.score_samples(mutate(mixed_frame(10, seed=5)))


def test_an_all_nan_column_is_rejected_at_fit():
    frame = mixed_frame(200).assign(broken=np.nan)
    with pytest.raises(SchemaError, match="broken"):
        Detector(exclude=["id"]).fit(frame)


def test_default_flow_options_grow_realnvp_from_200k_rows_and_mix_two_flows():
    small = {"n_layers": 6, "hidden": 128, "depth": 1, "activation": "relu", "members": 2}
    assert default_flow_options("realnvp", 199_999) == small
    assert default_flow_options("realnvp", 200_000) == {**small, "n_layers": 8, "hidden": 256}
    assert default_flow_options("ffjord", 1_000) == {}



@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_row_given_to_fit_is_training_data_for_the_schema(seed):
    """Missing values, or values between the others' grid points, that all fall in the rows
    fit holds out for validation and calibration are part of the training data: they must not
    make fit reject its own input, whatever the split."""
    from pipelines.model.fitting import split_rows

    frame = mixed_frame(600, seed=3).drop(columns=["id"]).astype({"count": float})
    _, validation, calibration = split_rows(len(frame), (0.15, 0.2), seed)
    held_out = [*validation[:1], *calibration[:2]]
    frame.loc[held_out, "amount"] = np.nan
    frame.loc[held_out, "count"] += 0.5
    detector = Detector(random_state=seed, train_options={"max_epochs": 2}).fit(frame)
    schema = {spec.name: spec for spec in detector.encoder_.schema_.columns}
    assert schema["amount"].n_missing_train == 3 and schema["count"].step == 0.5
    assert np.isfinite(detector.decision_function(frame.loc[held_out])).all()
    assert np.isfinite(detector.metrics_["val_nll"])


def test_a_bad_training_value_is_named_by_the_callers_row():
    frame = mixed_frame(600, seed=3).drop(columns=["id"]).set_axis(range(1000, 1600))
    frame.iloc[300, frame.columns.get_loc("amount")] = np.inf
    with pytest.raises(SchemaError, match=r"column 'amount', row 300 \(index label 1300\): inf"):
        Detector(train_options={"max_epochs": 2}).fit(frame)


def test_calibration_data_off_the_grid_calibrates_with_finite_scores(tmp_path):
    """Separate calibration records whose ``count`` is between two training counts score at
    the nearest count with a finite penalty: they calibrate like any others (before: +inf), and
    the model saves, loads and verifies."""
    from pipelines.registry.verify import verify_detector

    frame = mixed_frame(900, seed=3).drop(columns=["id"])
    calibration = mixed_frame(120, seed=4).drop(columns=["id"]).astype({"count": float})
    calibration.loc[:1, "count"] += 0.5
    detector = Detector(train_options={"max_epochs": 3}).fit(frame,
                                                              calibration_data=calibration)
    assert np.isfinite(detector.calibration_scores_).all()
    off, rounded = calibration.iloc[:2], calibration.iloc[:2].assign(
        count=lambda f: f["count"] - 0.5)
    assert np.all(detector.decision_function(off) > detector.decision_function(rounded) + 1)
    detector.save(tmp_path)
    loaded = Detector.load(tmp_path)
    verify_detector(loaded)
    np.testing.assert_array_equal(loaded.calibration_scores_, detector.calibration_scores_)
    assert loaded.threshold_ == detector.threshold_


def test_calibration_rows_off_the_grid_leave_a_detector_that_can_flag():
    """10 of 120 calibration rows between two counts, above the target FPR 0.05: they made the
    threshold +inf (zero density); now they score finite and the detector can flag. A model
    saved before, with +inf calibration scores, still says why it cannot."""
    from pipelines.model.calibration import Calibrator, SmallCalibrationWarning

    frame = mixed_frame(600, seed=3).drop(columns=["id"])
    calibration = mixed_frame(120, seed=4).drop(columns=["id"]).astype({"count": float})
    calibration.loc[:9, "count"] += 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallCalibrationWarning)
        detector = Detector(target_fpr=0.05, train_options={"max_epochs": 2}).fit(
            frame, calibration_data=calibration)
    assert np.isfinite(detector.threshold_) and detector.describe()["calibration"]["can_flag"]
    legacy = np.r_[detector.calibration_scores_[10:], np.full(10, np.inf)]
    detector._set_calibrator(Calibrator(0.05).fit(legacy))
    assert detector.threshold_ == np.inf
    assert "10 of 120 calibration rows have zero density" in detector.describe()["warnings"][0]


@pytest.mark.parametrize(("n_threads", "during"), [(1, 1), (None, 2)])
def test_fit_trains_on_its_thread_count_and_restores_the_callers(monkeypatch, n_threads, during):
    import torch

    import pipelines.model.fitting as fitting

    seen = []
    original = fitting.train_flow

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(fitting, "train_flow", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Detector(n_threads=n_threads, train_options={"max_epochs": 1},
                 calibration="split").fit(mixed_frame(300, seed=0))
        assert seen == [during, during] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
