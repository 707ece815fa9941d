"""Explanations: completeness against the detector's own scores, exactness against closed forms
and Captum's exhaustive Shapley values, and finding the column that made a record anomalous."""

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import ShapleyValues
from conftest import mixed_frame
from torch import nn

from pipelines import Detector, TabularEncoder
from pipelines.model.explain import contributions, reference_record, top_columns, top_contributions
from pipelines.tabular.columnwise import column_log_jacobians, feature_sources


@pytest.fixture(scope="module", params=["standard", "quantile"])
def mixed(request) -> Detector:
    """Every column kind, missing values; quantile scaling has per-record log-Jacobians."""
    return Detector(exclude=["id"], scaling=request.param, train_options={"max_steps": 300},
                    progress=False).fit(mixed_frame(2000))


def test_contributions_sum_to_the_score_minus_the_reference_score(mixed):
    data = mixed_frame(300, seed=7)
    explained = mixed.explain(data)
    assert list(explained.columns) == list(mixed.encoder_.feature_names_in_)
    assert explained.index.equals(data.index)
    # the detector's normal scoring path, independent of the explanation's
    reference_score = mixed.decision_function(reference_record(mixed.encoder_))
    expected = mixed.decision_function(data) - reference_score
    np.testing.assert_allclose(explained.sum(axis=1), expected, rtol=0, atol=1e-3)


def test_the_reference_is_a_typical_record(mixed):
    reference = reference_record(mixed.encoder_)
    assert reference.notna().all(axis=None)
    assert mixed.decision_function(reference)[0] < np.median(mixed.calibrator_.reference_scores_)
    # a record that is the reference has nothing to explain
    np.testing.assert_allclose(mixed.explain(reference).to_numpy(), 0.0, atol=1e-6)


def test_the_log_jacobian_splits_by_column(mixed):
    data = mixed_frame(50, seed=3)
    by_column = column_log_jacobians(mixed.encoder_, data)
    assert by_column.shape == (50, mixed.encoder_.n_features_in_)
    np.testing.assert_allclose(by_column.sum(axis=1), mixed.encoder_.transform(data)[1],
                               rtol=1e-12, atol=1e-9)


@pytest.mark.slow
def test_sampled_values_are_close_to_exhaustive_ones_and_batch_independent(mixed):
    data = mixed_frame(20, seed=11)
    encoder = mixed.encoder_
    x = torch.as_tensor(encoder.transform(data)[0], dtype=torch.float32)
    base = torch.as_tensor(encoder.transform(reference_record(encoder))[0],
                           dtype=torch.float32)
    sources = feature_sources(encoder)
    with torch.no_grad():  # every ordering of the 7 columns
        exact = ShapleyValues(lambda e: -mixed.flow_.log_prob(e)).attribute(
            x, baselines=base, feature_mask=torch.as_tensor(sources)[None],
            perturbations_per_eval=64)
    first = [int(np.flatnonzero(sources == j)[0]) for j in range(encoder.n_features_in_)]
    reference = reference_record(encoder)
    exact = exact[:, first].double().numpy() - (
        column_log_jacobians(encoder, data) - column_log_jacobians(encoder, reference))
    sampled = mixed.explain(data).to_numpy()
    assert np.sqrt(np.mean((sampled - exact) ** 2)) < 0.1
    np.testing.assert_allclose(sampled, mixed.explain(data, n_samples=400).to_numpy(), atol=0.5)
    alone = np.vstack([mixed.explain(data.iloc[[i]]).to_numpy() for i in (0, 5)])
    np.testing.assert_allclose(alone, sampled[[0, 5]], rtol=0, atol=1e-4)


class DiagonalGaussian(nn.Module):
    """A density that factorises over encoded features: Shapley values in closed form."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.as_tensor(mean, dtype=torch.float32))
        self.std = nn.Parameter(torch.as_tensor(std, dtype=torch.float32))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(self.mean, self.std).log_prob(x).sum(dim=-1)


def test_a_factorised_density_gets_each_columns_own_term():
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"u": rng.normal(5, 2, 500), "v": rng.gamma(2, 3, 500),
                          "colour": rng.choice(["red", "green", "blue"], 500)})
    encoder = TabularEncoder().fit(train)
    width = encoder.n_features_out_
    mean, std = rng.normal(size=width), rng.uniform(0.5, 2, width)
    data = pd.DataFrame({"u": [9.0, 5.0, -3.0], "v": [0.5, 30.0, 6.0],
                         "colour": ["blue", "red", "green"]})
    explained = contributions(encoder, DiagonalGaussian(mean, std), data)

    def term(e: np.ndarray, k: int) -> np.ndarray:  # -log N(e; mean_k, std_k) up to a constant
        return 0.5 * ((e - mean[k]) / std[k]) ** 2

    reference = reference_record(encoder)
    assert reference.loc[0, "u"] == np.median(train["u"])
    for k, name in enumerate(["u", "v"]):  # standard scaling: a constant log-Jacobian
        z = (data[name] - train[name].mean()) / train[name].std(ddof=0)
        z_ref = (reference.loc[0, name] - train[name].mean()) / train[name].std(ddof=0)
        np.testing.assert_allclose(explained[name], term(z, k) - term(z_ref, k), atol=1e-4)
    onehot, onehot_ref = encoder.transform(data)[0][:, 2:], encoder.transform(reference)[0][0, 2:]
    expected = sum(term(onehot[:, k], 2 + k) - term(onehot_ref[k], 2 + k) for k in range(4))
    np.testing.assert_allclose(explained["colour"], expected, atol=1e-4)


def normal_records(n: int, seed: int) -> pd.DataFrame:
    """b follows a closely; the category follows a (A below 1, B above, 1% flipped) or is C."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    category = np.where((a < 1) ^ (rng.random(n) < 0.01), "A", "B")
    return pd.DataFrame({
        "a": a,
        "b": a + 0.3 * rng.normal(size=n),
        "c": rng.normal(size=n),
        "count": rng.poisson(3, n),
        "category": np.where(rng.random(n) < 0.1, "C", category),
    })


@pytest.fixture(scope="module")
def trained() -> Detector:
    return Detector(train_options={"max_steps": 1500}, progress=False).fit(normal_records(4000, 0))


def push_b(records: pd.DataFrame) -> pd.DataFrame:
    """b six conditional deviations off its line, outwards (within b's range mostly)."""
    return records.assign(b=records["b"] + 1.8 * np.sign(records["a"]))


def push_count(records: pd.DataFrame) -> pd.DataFrame:
    """a count above anything seen in training."""
    return records.assign(count=records["count"] + 12)


def push_category(records: pd.DataFrame) -> pd.DataFrame:
    """B where a says A. Within 1.5 of the reference's a (0): farther down, the flow learned B
    as rarer still, and that part of the anomaly is rightly shared with a."""
    return records[records["a"].between(-1.5, 0.5)].assign(category="B")


@pytest.mark.parametrize(("column", "push"), [("b", push_b), ("count", push_count),
                                              ("category", push_category)])
def test_the_pushed_column_ranks_first(trained, column, push):
    records = push(normal_records(400, seed=1)).head(200)
    top = trained.explain(records).idxmax(axis=1)
    share = float((top == column).mean())
    print(f"{column}: ranked first in {share:.1%} of {len(records)} records")
    assert share >= 0.95


def test_top_contributions_for_the_service_and_the_cli(mixed):
    data = mixed_frame(5, seed=2)
    explained = mixed.explain(data)
    tops = top_contributions(explained, data, 3)
    assert [len(t) for t in tops] == [3] * 5
    for i, top in enumerate(tops):
        amounts = [entry["contribution"] for entry in top]
        assert amounts == sorted(amounts, reverse=True) and amounts[0] == explained.iloc[i].max()
        for entry in top:
            value = data[entry["column"]].iloc[i]
            assert entry["value"] == value or (pd.isna(value) and entry["value"] is None)
    flat = top_columns(explained, 2)
    assert list(flat.columns) == ["top1_column", "top1_contribution", "top2_column",
                                  "top2_contribution"]
    assert (flat["top1_column"] == explained.idxmax(axis=1)).all()


def test_ffjord_contributions_sum_to_its_score():
    """FFJORD is explained through the same forward log-density; its fixed-step solver scores a
    record the same in any batch, so completeness holds as for RealNVP."""
    detector = Detector("ffjord", exclude=["id"], train_options={"max_steps": 30},
                        progress=False).fit(mixed_frame(600))
    data = mixed_frame(40, seed=7)
    explained = detector.explain(data, n_samples=4)
    reference_score = detector.decision_function(reference_record(detector.encoder_))
    expected = detector.decision_function(data) - reference_score
    np.testing.assert_allclose(explained.sum(axis=1), expected, rtol=0, atol=1e-3)
    assert explained.abs().to_numpy().max() > 0.01  # not trivially zero
