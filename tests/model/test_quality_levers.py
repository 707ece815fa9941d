"""The detection-quality levers of issue 28 as options: the VSDE variance penalty, the epoch
chosen by the training NLL's separation (ODIM), and spectral-normalised couplings."""

import numpy as np
import pandas as pd
import pytest
import torch

from flowmodels import RealNVP
from pipelines import Detector
from pipelines.model.separation import nll_separation
from pipelines.model.training import TrainConfig, per_row_nll, train_flow, training_loss


def _data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return torch.stack([x[:, 0], x[:, 1] + x[:, 0] ** 2], dim=1)


def test_the_variance_penalty_adds_lambda_times_the_batch_variance_of_log_p():
    flow = RealNVP(2, n_layers=2, hidden=8, generator=torch.Generator().manual_seed(0))
    batch = _data(64, 0)
    with torch.no_grad():
        flow.log_prob(batch)  # the first call in training mode initialises ActNorm
        log_p = flow.log_prob(batch).double().numpy()
        penalised = float(training_loss(flow, batch, TrainConfig(variance_penalty=3.3)))
        plain = float(training_loss(flow, batch, TrainConfig()))
    assert plain == pytest.approx(-log_p.mean(), rel=1e-5)
    # numpy's unbiased variance, as torch.var's default
    assert penalised == pytest.approx(-log_p.mean() + 3.3 * log_p.var(ddof=1), rel=1e-5)


def test_the_variance_penalty_flattens_log_p_over_the_training_rows():
    train, val = _data(400, 0), _data(100, 1)
    spread = {}
    for penalty in (0.0, 3.3):
        flow = RealNVP(2, n_layers=4, hidden=32, generator=torch.Generator().manual_seed(0))
        config = TrainConfig(batch_size=64, max_epochs=30, patience=None, progress=False,
                             variance_penalty=penalty)
        result = train_flow(flow, train, torch.zeros(2), val, torch.zeros(len(val)), config)
        spread[penalty] = float(np.var(per_row_nll(flow, train)))
    assert spread[3.3] < 0.5 * spread[0.0]
    # the epoch kept is the best by the penalised objective on the validation rows
    objective = [e["val_nll"] + 3.3 * e["val_variance"] for e in result.history]
    assert result.best_epoch == int(np.argmin(objective))
    with torch.no_grad():  # the restored weights' validation variance, 5% worst rows left out
        nll = np.sort(per_row_nll(flow, val))[: len(val) - 5]
    assert np.var(nll, ddof=1) == pytest.approx(
        result.history[result.best_epoch]["val_variance"], rel=1e-5)


def test_separation_of_two_tight_clusters_is_the_distance_of_their_standardised_means():
    """Two equal clusters at +-1 (tiny spread): standardised, they sit at +-1 with spreads
    near 0, so the components' 2-Wasserstein distance is 2."""
    g = np.random.default_rng(0)
    nll = np.concatenate([-1 + 1e-3 * g.standard_normal(500), 1 + 1e-3 * g.standard_normal(500)])
    assert nll_separation(nll) == pytest.approx(2.0, abs=1e-2)


def test_separation_ignores_the_nll_scale_and_grows_with_a_split():
    g = np.random.default_rng(1)
    bulk = g.standard_normal(900)
    split = np.concatenate([bulk, 6 + g.standard_normal(100)])
    assert nll_separation(split) == pytest.approx(nll_separation(40 * split - 7), rel=1e-6)
    assert nll_separation(split) > nll_separation(np.concatenate([bulk, g.standard_normal(100)]))


def test_separation_of_constant_nan_or_infinite_nlls():
    assert nll_separation(np.ones(50)) == 0.0
    assert nll_separation(np.array([1.0, 2.0, np.nan, 4.0, 5.0])) == 0.0
    g = np.random.default_rng(2)
    values = np.concatenate([g.standard_normal(300), 5 + g.standard_normal(30)])
    infinite = values.copy()
    infinite[values.argmax()] = np.inf  # a row of zero density counts as the worst row
    assert nll_separation(infinite) == pytest.approx(nll_separation(values))


def test_epoch_selection_by_separation_keeps_the_most_separated_epoch():
    g = torch.Generator().manual_seed(3)
    train = torch.cat([_data(360, 0), 6 + 0.3 * torch.randn(40, 2, generator=g)])
    val = _data(100, 1)
    flow = RealNVP(2, n_layers=2, hidden=16, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=50, max_epochs=8, patience=None, progress=False,
                         epoch_selection="separation")
    result = train_flow(flow, train, torch.zeros(2), val, torch.zeros(len(val)), config)
    separations = [epoch["separation"] for epoch in result.history]
    assert result.best_epoch == int(np.argmax(separations))
    # the restored weights are that epoch's: recompute its separation independently
    assert nll_separation(per_row_nll(flow, train), config.seed) == pytest.approx(
        separations[result.best_epoch], rel=1e-4)
    assert result.best_val_nll == pytest.approx(
        result.history[result.best_epoch]["val_nll"])


def test_an_unknown_epoch_selection_is_refused():
    x = _data(100, 0)
    with pytest.raises(ValueError, match="epoch_selection"):
        train_flow(RealNVP(2, n_layers=2, hidden=8), x, torch.zeros(2), x, torch.zeros(100),
                   TrainConfig(max_epochs=1, progress=False, epoch_selection="best"))


def test_spectral_norm_keeps_every_coupling_layer_1_lipschitz_after_training():
    flow = RealNVP(2, n_layers=2, hidden=16, depth=1, activation="relu", spectral_norm=True,
                   generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=50, max_epochs=5, patience=None, progress=False)
    train_flow(flow, _data(300, 0), torch.zeros(2), _data(100, 1), torch.zeros(100), config)
    linears = [m for m in flow.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    for layer in linears:  # the largest singular value, computed by an SVD
        assert float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2)) <= 1 + 1e-3
    assert flow.config()["spectral_norm"] is True
    assert "spectral_norm" not in RealNVP(2).config()  # other flows' saved configs unchanged


def test_a_detector_with_spectral_norm_saves_loads_and_scores_alike(tmp_path):
    rows = pd.DataFrame(_data(600, 0).numpy(), columns=["a", "b"])
    detector = Detector(flow_options={"spectral_norm": True},
                        train_options={"max_epochs": 3}).fit(rows)
    detector.save(tmp_path)
    loaded = Detector.load(tmp_path)
    np.testing.assert_array_equal(loaded.score_samples(rows), detector.score_samples(rows))
    # a single record takes the NumPy fast path: the same density as torch's batch path
    assert loaded.score_samples(rows.iloc[:1])[0] == pytest.approx(
        detector.score_samples(rows)[0], abs=1e-4)

