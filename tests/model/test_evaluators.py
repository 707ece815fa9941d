"""pipelines.model.evaluators: a record's verdict and p-value do not depend on the batch it comes
in (ties with calibration scores included), scoring changes nothing and is safe from many
threads, and a flow changed after fitting is scored by its own module."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import mixed_frame

from flowmodels import FFJORD
from pipelines import Detector
from pipelines.model.evaluators import FAST_TOLERANCE, FlowEvaluators, near_a_boundary
from pipelines.model.fastpath import SMALL_BATCH_ROWS


@pytest.fixture(scope="module")
def detector() -> Detector:
    """A split-conformal detector whose calibration rows are known (``calibration``)."""
    return Detector(exclude=["id"], flow_options={"members": 2, "hidden": 32},
                    train_options={"max_epochs": 2}, calibration="split", target_fpr=0.05,
                    ).fit(mixed_frame(800), calibration_data=mixed_frame(120, seed=3))


def one_by_one(detector: Detector, frame, method: str) -> np.ndarray:
    return np.concatenate([getattr(detector, method)(frame.iloc[[i]])
                           for i in range(len(frame))])


@pytest.mark.parametrize("method", ["predict", "p_values"])
def test_calibration_records_tie_their_own_scores_in_any_batch(detector: Detector,
                                                               method: str) -> None:
    """Each calibration record scores exactly its calibration score in a large batch; alone
    it goes through the fast path, whose score differs by rounding, and would fall on either
    side of its own score (and of the threshold, one of them) without the exact re-score."""
    calibration = mixed_frame(120, seed=3)
    batch = getattr(detector, method)(calibration)
    assert detector._evaluators.uses_fast_path(detector.flow_, 1)
    np.testing.assert_array_equal(one_by_one(detector, calibration, method), batch)
    for size in (2, 7, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1, 50):
        parts = [getattr(detector, method)(calibration.iloc[start : start + size])
                 for start in range(0, len(calibration), size)]
        np.testing.assert_array_equal(np.concatenate(parts), batch)


def test_a_cross_conformal_verdict_is_the_same_in_any_batch() -> None:
    """200 rows at target FPR 0.01: cross-conformal; its training rows are its calibration
    rows, each within a hair of its own fold score."""
    frame = mixed_frame(200, seed=6)
    detector = Detector(exclude=["id"], flow_options={"hidden": 16}, random_state=6,
                        train_options={"max_epochs": 2}).fit(frame)
    assert detector.calibrator_.method == "cross-conformal"
    batch = detector.p_values(frame)
    np.testing.assert_array_equal(one_by_one(detector, frame.iloc[:60], "p_values"), batch[:60])
    np.testing.assert_array_equal(one_by_one(detector, frame.iloc[:60], "predict"),
                                  detector.predict(frame)[:60])


def test_scores_agree_within_the_contract_alone_and_in_a_large_batch(detector: Detector
                                                                     ) -> None:
    """The *determinism* contract across the two paths: within 1e-4 nats."""
    frame = mixed_frame(500, seed=7)
    batch = detector.log_likelihood(frame)
    alone = one_by_one(detector, frame.iloc[:40], "log_likelihood")
    np.testing.assert_allclose(alone, batch[:40], rtol=0, atol=1e-4)
    # beyond the fast path's batches, bit for bit (the frozen evaluator pads small batches)
    for size in (SMALL_BATCH_ROWS + 1, 100, 499):
        np.testing.assert_array_equal(detector.log_likelihood(frame.iloc[:size]), batch[:size])


def test_one_detector_scored_from_eight_threads_gives_the_serial_results(detector: Detector
                                                                         ) -> None:
    frame = mixed_frame(600, seed=9)
    batches = [frame.iloc[start : start + size]
               for size in (1, 3, SMALL_BATCH_ROWS, 40, 300) for start in range(0, 120, size)]
    serial = [detector.verdict_columns(batch) for batch in batches]
    state = {name: copy.deepcopy(value) for name, value in vars(detector).items()
             if name != "_evaluators"}
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(detector.verdict_columns, batches * 3))
    for expected, got in zip(serial * 3, threaded, strict=True):
        for column in expected:
            np.testing.assert_array_equal(got[column], expected[column])
    after = {name: value for name, value in vars(detector).items() if name != "_evaluators"}
    assert after.keys() == state.keys()  # scoring set no attribute
    for key in ("threshold_", "decision_scores_", "reference_scores_"):
        np.testing.assert_array_equal(after[key], state[key])


def test_a_flow_changed_after_fitting_is_scored_by_its_module(detector: Detector) -> None:
    detector = copy.deepcopy(detector)  # builds its own evaluators from its own weights
    record = mixed_frame(3, seed=8).iloc[[0]]
    before = detector.log_likelihood(record)
    with torch.no_grad():
        next(detector.flow_.parameters()).add_(0.5)
    assert not detector._evaluators.uses_fast_path(detector.flow_, 1)
    moved = detector.log_likelihood(record)
    x, log_jacobian = detector.encoder_.transform(record)
    with torch.inference_mode():
        expected = detector.flow_.log_prob(torch.as_tensor(x, dtype=torch.float32))
    assert abs(moved[0] - before[0]) > 1e-3
    np.testing.assert_allclose(moved, expected.double().numpy() + log_jacobian,
                               rtol=1e-6, atol=1e-5)
    with torch.no_grad():
        next(detector.flow_.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        detector.log_likelihood(record)


def test_ffjord_has_no_frozen_form_or_fast_path() -> None:
    evaluators = FlowEvaluators(FFJORD(3).eval())
    assert evaluators.frozen is None and evaluators.fast is None


def test_near_a_boundary_against_every_pair() -> None:
    rng = np.random.default_rng(0)
    edges = [np.sort(np.append(rng.normal(0, 10, 50), [np.inf])), np.sort(rng.normal(0, 10, 30))]
    scores = np.column_stack([rng.normal(0, 10, 400), rng.normal(0, 10, 400)])
    scores[:40, 0] = edges[0][:40] + rng.uniform(-2e-5, 2e-5, 40)  # ties, nearly
    scores[40] = [np.inf, 0.0]
    absolute, relative = FAST_TOLERANCE
    expected = [not np.isfinite(row).all()
                or any(np.abs(row[k] - edges[k]).min() <= absolute + relative * abs(row[k])
                       for k in range(2))
                for row in scores]
    np.testing.assert_array_equal(near_a_boundary(scores, edges), expected)
    assert near_a_boundary(scores, edges)[:40].sum() >= 30
