import itertools
import math

import numpy as np
import pytest
import torch

from flowmodels import FFJORD, RealNVP
from pipelines.model import training
from pipelines.model.training import (
    TrainConfig,
    default_train_config,
    estimate_nll,
    learning_rate,
    train_flow,
    trimmed_share,
)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=10)
    rates = [learning_rate(step, 110, config) for step in range(111)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize("n_rows", [500, 5_000, 100_000, 1_000_000])
def test_default_config_keeps_the_step_budget_bounded(n_rows):
    config = default_train_config(n_rows)
    steps = math.ceil(n_rows / config.batch_size) * config.max_epochs
    assert 64 <= config.batch_size <= 1024
    assert 2_000 <= steps <= 40_000


def test_max_steps_ends_training_at_the_end_of_that_epoch():
    x = _data(600, 0)
    flow = RealNVP(2, n_layers=2, hidden=8)
    config = TrainConfig(batch_size=100, max_epochs=50, max_steps=14, patience=100,
                         progress=False)
    result = train_flow(flow, x, torch.zeros(2), _data(100, 1), torch.zeros(100), config)
    steps = [epoch["step"] for epoch in result.history]
    assert steps == [6, 12, 18]  # 6 steps an epoch; the third epoch passes 14


def test_without_patience_training_runs_its_budget_and_keeps_the_best_epoch():
    x = _data(600, 0)
    flow = RealNVP(2, n_layers=2, hidden=8)
    config = TrainConfig(batch_size=100, max_epochs=50, max_steps=60, patience=None,
                         progress=False)
    result = train_flow(flow, x, torch.zeros(2), _data(100, 1), torch.zeros(100), config)
    assert result.history[-1]["step"] == 60  # ten epochs of six steps, none cut short
    best = min(result.history, key=lambda epoch: epoch["val_nll"])
    assert result.best_epoch == best["epoch"]
    kept = estimate_nll(flow, _data(100, 1), torch.zeros(100), trim=config.validation_trim)
    assert kept == pytest.approx(best["val_nll"], abs=1e-5)


def _data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return torch.stack([x[:, 0], x[:, 1] + x[:, 0] ** 2], dim=1)


def test_early_stopping_restores_the_best_validation_weights():
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=4, hidden=32)
    train, val = _data(400, 0), _data(400, 1)
    config = TrainConfig(batch_size=64, max_epochs=60, patience=5, progress=False)
    result = train_flow(flow, train, torch.zeros(2), val, torch.zeros(len(val)), config)
    with torch.no_grad():  # the stopping criterion: mean NLL without the worst 5% of rows
        nll = np.sort(-flow.log_prob(val).double().numpy())
        restored = nll[: len(nll) - int(0.05 * len(nll))].mean()
    best = min(h["val_nll"] for h in result.history)
    assert restored == pytest.approx(result.best_val_nll, abs=1e-6)
    # Improvements under the 1e-4 nats tolerance don't replace the best weights.
    assert best <= result.best_val_nll <= best + 1e-4
    assert len(result.history) < 60 or result.best_epoch == 59


def test_trimmed_validation_nll_ignores_a_few_extreme_rows():
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden=8).eval()
    val = _data(100, 1)
    with torch.no_grad():
        nll = -flow.log_prob(val).double().numpy()
    outliers = torch.cat([val, torch.full((3, 2), 1e3)])  # three rows far outside the data
    zeros = torch.zeros(len(outliers))
    plain = estimate_nll(flow, outliers, zeros)
    trimmed = estimate_nll(flow, outliers, zeros, trim=0.05)  # drops int(0.05 * 103) = 5 rows
    kept = np.sort(nll)[: 100 - 2]  # the 3 outliers and the 2 worst regular rows go
    assert trimmed == pytest.approx(kept.mean(), rel=1e-6)
    assert plain > trimmed + 100  # untrimmed, three rows of 103 dominate the mean
    assert estimate_nll(flow, val, zeros[:100]) == pytest.approx(nll.mean(), rel=1e-6)


def test_gaussian_noise_smooths_the_fit():
    """With ``noise_std`` the flow fits the data convolved with N(0, noise_std^2): on 1-D data
    concentrated at two points, the fitted density gets wider, i.e. more mass between them."""
    data = torch.cat([torch.full((200, 1), -1.0), torch.full((200, 1), 1.0)])
    data = data + 0.02 * torch.randn(400, 1, generator=torch.Generator().manual_seed(0))
    val = data[::4]
    spread = {}
    for noise_std in (0.0, 0.5):
        torch.manual_seed(0)
        flow = RealNVP(1, n_layers=4, hidden=16)
        config = TrainConfig(batch_size=64, max_epochs=40, patience=40, noise_std=noise_std,
                             progress=False)
        train_flow(flow, data, torch.zeros(1), val, torch.zeros(len(val)), config)
        with torch.no_grad():
            spread[noise_std] = flow.sample(4000).std().item()
    # Independent expectation: the smoothed target has variance 1 + 0.0004 + 0.25.
    assert spread[0.5] > spread[0.0] + 0.05
    assert spread[0.5] == pytest.approx(math.sqrt(1.2504), abs=0.15)


def _flat(parameters) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in parameters])


def test_weight_averaging_returns_the_moving_average_of_the_iterates(monkeypatch):
    """With ``ema_decay`` the returned weights are the exponential moving average, computed
    here by hand from the optimiser's iterates, at the step of the best validation epoch."""
    iterates = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            loss = super().step(closure)
            iterates.append(_flat(p for group in self.param_groups for p in group["params"]))
            return loss

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden=16)
    train, val = _data(256, 0), _data(200, 1)
    decay = 0.9
    config = TrainConfig(batch_size=64, max_epochs=6, patience=100, ema_decay=decay,
                         progress=False)
    result = train_flow(flow, train, torch.zeros(2), val, torch.zeros(len(val)), config)
    averages = [iterates[0]]
    for weights in iterates[1:]:
        averages.append(decay * averages[-1] + (1 - decay) * weights)
    best_step = result.history[result.best_epoch]["step"]
    np.testing.assert_allclose(_flat(flow.parameters()), averages[best_step - 1], atol=1e-5)
    assert not torch.allclose(_flat(flow.parameters()), iterates[best_step - 1], atol=1e-3)
    assert estimate_nll(flow, val, torch.zeros(len(val)), trim=0.05) == pytest.approx(
        result.best_val_nll, abs=1e-6
    )


def test_a_nonfinite_loss_is_recovered_from():
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden=16)
    train, val = _data(256, 0), _data(128, 1)
    poisoned = {"calls": 0}
    original = flow.log_prob

    def sometimes_nan(x):
        poisoned["calls"] += 1
        out = original(x)
        return out * float("nan") if flow.training and poisoned["calls"] in (3, 7) else out

    flow.log_prob = sometimes_nan
    config = TrainConfig(batch_size=64, max_epochs=5, patience=10, progress=False)
    result = train_flow(flow, train, torch.zeros(2), val, torch.zeros(len(val)), config)
    assert result.recovered_nonfinite == 2
    assert all(np.isfinite(h["val_nll"]) for h in result.history)


def test_flow_matching_trains_ffjord_and_is_refused_elsewhere():
    rows = torch.randn(1024, 2, generator=torch.Generator().manual_seed(0))
    data, val = rows[:768] * torch.tensor([2.0, 0.5]), rows[768:] * torch.tensor([2.0, 0.5])
    config = TrainConfig(batch_size=128, max_epochs=30, patience=30, progress=False,
                         objective="flow_matching", validation_trim=0.0)
    torch.manual_seed(0)
    flow = FFJORD(2, hidden=32)
    initial = estimate_nll(flow, val, torch.zeros(len(val)))
    result = train_flow(flow, data, torch.zeros(2), val, torch.zeros(len(val)), config)
    # Independent reference: the true density of the data, N(0, diag(4, 0.25)).
    truth = torch.distributions.Normal(0.0, torch.tensor([2.0, 0.5])).log_prob(val).sum(-1)
    assert result.best_val_nll < initial - 0.3
    assert result.best_val_nll == pytest.approx(-truth.mean().item(), abs=0.15)
    with pytest.raises(ValueError, match="cannot be trained by flow matching"):
        train_flow(RealNVP(2), data, torch.zeros(2), val, torch.zeros(len(val)), config)
    with pytest.raises(ValueError, match="unknown objective"):
        train_flow(flow, data, torch.zeros(2), val, torch.zeros(len(val)),
                   TrainConfig(objective="mle", progress=False))


def test_trimmed_share_ramps_up_linearly_then_stays():
    config = TrainConfig(trim_share=0.2, trim_ramp=0.25)
    shares = [trimmed_share(step, 400, config) for step in (0, 50, 100, 101, 399)]
    assert shares == pytest.approx([0.0, 0.1, 0.2, 0.2, 0.2])
    assert trimmed_share(300, 400, TrainConfig()) == 0.0


def test_without_trimming_training_is_bit_identical_to_plain_maximum_likelihood(monkeypatch):
    """trim_share = 0 must not change a single bit: compare with the loss as it was before
    trimming existed."""
    x, val = _data(300, 0), _data(100, 1)
    config = TrainConfig(batch_size=50, max_epochs=4, patience=None, progress=False)
    states, histories = [], []
    for patch in (False, True):
        if patch:
            monkeypatch.setattr(training, "training_loss",
                                lambda flow, batch, config, generator=None, trim=0.0:
                                -flow.log_prob(batch).mean())
        flow = RealNVP(2, n_layers=2, hidden=8, generator=torch.Generator().manual_seed(0))
        result = train_flow(flow, x, torch.zeros(2), val, torch.zeros(100), config)
        states.append(flow.state_dict())
        histories.append(result.history)
    assert histories[0] == histories[1]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


@pytest.mark.slow
def test_trimmed_likelihood_fits_the_inliers_of_contaminated_data():
    """2-D standard Gaussian with 10% far outliers: trimming brings the fit closer to the true
    inlier density (mean log-likelihood of clean test inliers, against the true Gaussian's) and
    gives the outliers lower likelihood."""
    g = torch.Generator().manual_seed(0)

    def contaminated(n: int) -> torch.Tensor:
        n_out = n // 10
        outliers = torch.tensor([5.0, -5.0]) + 0.5 * torch.randn(n_out, 2, generator=g)
        return torch.cat([torch.randn(n - n_out, 2, generator=g), outliers])

    train, val = contaminated(2000), contaminated(400)
    test_inliers = torch.randn(4000, 2, generator=g)
    test_outliers = torch.tensor([5.0, -5.0]) + 0.5 * torch.randn(400, 2, generator=g)
    true_log_density = float(torch.distributions.Normal(0.0, 1.0).log_prob(test_inliers)
                             .sum(dim=1).mean())
    fit = {}
    for trim_share in (0.0, 0.15):
        flow = RealNVP(2, n_layers=4, hidden=32, generator=torch.Generator().manual_seed(0))
        config = TrainConfig(batch_size=128, max_epochs=60, patience=None, progress=False,
                             trim_share=trim_share)
        train_flow(flow, train, torch.zeros(2), val, torch.zeros(len(val)), config)
        with torch.no_grad():
            fit[trim_share] = (flow.log_prob(test_inliers).mean().item(),
                               flow.log_prob(test_outliers).mean().item())
    (plain_in, plain_out), (trim_in, trim_out) = fit[0.0], fit[0.15]
    # Untrimmed, 10% of the mass sits on the outliers: about log(0.9) = -0.105 nats lost.
    assert trim_in > plain_in
    assert abs(trim_in - true_log_density) < abs(plain_in - true_log_density)
    assert trim_out < plain_out - 1.0


def test_trimming_is_refused_for_flow_matching_and_out_of_range():
    x = _data(200, 0)
    for options in ({"trim_share": 0.1, "objective": "flow_matching"}, {"trim_share": 1.0}):
        config = TrainConfig(batch_size=50, max_epochs=1, progress=False, **options)
        with pytest.raises(ValueError, match="trim_share"):
            train_flow(FFJORD(2), x, torch.zeros(2), x, torch.zeros(200), config)
