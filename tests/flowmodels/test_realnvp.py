import io
import math

import pytest
import torch
from conftest import mass_on_grid
from scipy.stats import t as student_t
from sklearn.datasets import make_moons

from flowmodels.base import standard_normal_log_prob
from flowmodels.realnvp import RealNVP

DIMS = [1, 2, 5]


def make_model(dim: int, seed: int = 0, **options) -> RealNVP:
    """A RealNVP with random (non-identity) weights, in float64 for tight comparisons."""
    torch.manual_seed(seed)
    model = RealNVP(dim, n_layers=4, hidden=16, **options).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.log_prob(torch.randn(256, dim, dtype=torch.float64))  # data-initialises ActNorm
    return model.eval()


@pytest.mark.parametrize("dim", DIMS)
def test_shapes_and_invertibility(dim):
    model = make_model(dim)
    z = torch.randn(64, dim, dtype=torch.float64)
    x, log_det_forward = model(z)
    z_back, log_det_inverse = model.inverse(x)
    assert x.shape == (64, dim) and log_det_forward.shape == (64,)
    torch.testing.assert_close(z_back, z, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(log_det_inverse, -log_det_forward, atol=1e-10, rtol=1e-10)
    assert model.sample(10).shape == (10, dim)


def independent_base_log_prob(model: RealNVP, z: torch.Tensor) -> torch.Tensor:
    """The base log-density by hand: standard normal, or scipy's Student-t per coordinate."""
    if model.log_df is None:
        return standard_normal_log_prob(z)
    df = model.log_df.detach().exp().numpy()
    return torch.tensor(student_t.logpdf(z.detach().numpy(), df).sum(), dtype=torch.float64)


@pytest.mark.parametrize("base", ["normal", "student"])
@pytest.mark.parametrize("dim", DIMS)
def test_log_prob_matches_brute_force_jacobian(dim, base):
    model = make_model(dim, base=base)
    x = torch.randn(16, dim, dtype=torch.float64)
    expected = []
    for row in x:
        jacobian = torch.autograd.functional.jacobian(lambda r: model.inverse(r[None])[0][0], row)
        z = model.inverse(row[None])[0][0]
        log_det = torch.linalg.slogdet(jacobian).logabsdet
        expected.append(independent_base_log_prob(model, z) + log_det)
    torch.testing.assert_close(model.log_prob(x), torch.stack(expected), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("activation", ["relu", "tanh", "silu"])
def test_every_activation_gives_the_brute_force_log_prob(activation):
    model = make_model(5, activation=activation)
    x = torch.randn(8, 5, dtype=torch.float64)
    expected = []
    for row in x:
        jacobian = torch.autograd.functional.jacobian(lambda r: model.inverse(r[None])[0][0], row)
        z = model.inverse(row[None])[0][0]
        expected.append(standard_normal_log_prob(z) + torch.linalg.slogdet(jacobian).logabsdet)
    torch.testing.assert_close(model.log_prob(x), torch.stack(expected), atol=1e-9, rtol=1e-9)
    assert model.config()["activation"] == activation


@pytest.mark.parametrize("base", ["normal", "student"])
def test_density_integrates_to_one_in_2d(base):
    assert abs(mass_on_grid(make_model(2, base=base).log_prob) - 1.0) < 0.01


def test_student_base_samples_have_its_tails():
    """With a linear flow (no couplings), samples follow the base: Student-t with df = 3 has
    P(|z| > 5) = 0.0154 (scipy), a standard normal 6e-7."""
    model = RealNVP(1, n_layers=0, base="student")
    with torch.no_grad():
        model.log_df.fill_(math.log(3.0))
    torch.manual_seed(0)
    share = (model.sample(200_000).abs() > 5).double().mean().item()
    assert share == pytest.approx(2 * student_t.sf(5, 3), rel=0.1)


@pytest.mark.parametrize("df", [0.7, 3.0, 40.0])
def test_student_base_samples_follow_scipy_and_only_their_generator(df):
    """Bailey's polar draws against scipy's t CDF (Kolmogorov-Smirnov), per coordinate; the
    same generator seed gives the same draws and the global RNG is left alone."""
    from scipy.stats import kstest

    model = RealNVP(2, n_layers=0, base="student")
    with torch.no_grad():
        model.log_df.copy_(torch.log(torch.tensor([df, 2 * df])))
    state = torch.get_rng_state()
    draws = model.base_sample(20_000, torch.Generator().manual_seed(5)).double()
    assert torch.equal(torch.get_rng_state(), state)
    again = model.base_sample(20_000, torch.Generator().manual_seed(5)).double()
    assert torch.equal(draws, again) and torch.isfinite(draws).all()
    for j, freedom in enumerate((df, 2 * df)):
        assert kstest(draws[:, j].numpy(), student_t(freedom).cdf).pvalue > 1e-3


def test_state_dict_round_trip_is_bit_identical():
    model = make_model(5, seed=0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a different seed draws different masks and weights
    fresh = RealNVP(5, **model.config()).double().eval()
    masks = [m.clone() for name, m in fresh.state_dict().items() if name.endswith("mask")]
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    loaded_masks = [m for name, m in fresh.state_dict().items() if name.endswith("mask")]
    changed = [not torch.equal(a, b) for a, b in zip(masks, loaded_masks, strict=True)]
    assert any(changed), "masks not reloaded"
    x = torch.randn(100, 5, dtype=torch.float64)
    assert torch.equal(model.log_prob(x), fresh.log_prob(x))


def test_score_does_not_depend_on_the_batch():
    model = make_model(5).float()
    x = torch.randn(1000, 5)
    alone = model.log_prob(x[:1])
    in_batch = model.log_prob(x)[:1]
    shuffled = model.log_prob(torch.cat([x[500:], x[:500]]))[500:501]
    assert (alone - in_batch).abs().max() < 1e-4
    assert (alone - shuffled).abs().max() < 1e-4


def test_train_and_eval_modes_agree_and_inference_contexts_work():
    model = make_model(5)
    x = torch.randn(32, 5, dtype=torch.float64)
    reference = model.log_prob(x)
    model.train()
    assert torch.equal(model.log_prob(x), reference)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.log_prob(x), reference)
    with torch.inference_mode():
        assert torch.equal(model.log_prob(x), reference)


def test_actnorm_initialises_from_the_first_training_batch_only():
    torch.manual_seed(0)
    model = RealNVP(3, n_layers=2, hidden=8).train()
    x = 5 + 3 * torch.randn(512, 3)
    z, _ = model.layers[0].inverse(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-4, rtol=0)
    bias = model.layers[0].bias.detach().clone()
    model.log_prob(x + 100)  # a second batch must not re-initialise
    assert torch.equal(model.layers[0].bias, bias)


def test_log_scale_is_bounded():
    torch.manual_seed(0)
    model = RealNVP(4, n_layers=1, hidden=8, log_scale_bound=2.0, actnorm=False)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0).add_(50.0)  # an absurdly large network output
    _, log_det = model.inverse(torch.randn(16, 4))
    assert log_det.abs().max() <= 2.0 * 2 + 1e-5  # two transformed features, each |s| <= 2


def _two_moons(n: int, seed: int) -> torch.Tensor:
    x, _ = make_moons(n, noise=0.08, random_state=seed)
    return torch.tensor(x, dtype=torch.float32)


def test_training_on_two_moons_beats_a_gaussian():
    torch.manual_seed(0)
    train, test = _two_moons(2000, 0), _two_moons(2000, 1)
    mean, cov = train.mean(0), torch.cov(train.T)
    gaussian = torch.distributions.MultivariateNormal(mean, cov)
    gaussian_nll = -gaussian.log_prob(test).mean().item()

    model = RealNVP(2, n_layers=6, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _step in range(400):
        batch = train[torch.randint(len(train), (256,))]
        loss = -model.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        flow_nll = -model.log_prob(test).mean().item()
    print(f"two moons held-out NLL: RealNVP {flow_nll:.3f}, Gaussian {gaussian_nll:.3f}")
    assert math.isfinite(flow_nll)
    assert flow_nll < gaussian_nll - 0.5
