"""FFJORD: exactness against independent references, determinism, persistence, training."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from flowmodels.base import standard_normal_log_prob
from flowmodels.ffjord import FFJORD

TIGHT = {"method": "dopri5", "rtol": 1e-10, "atol": 1e-10}


def scaled_model(dim: int, *, seed: int = 0, scale: float = 2.0, double: bool = False,
                 **options) -> FFJORD:
    """An FFJORD with weights scaled up so that the flow is far from the identity."""
    torch.manual_seed(seed)
    model = FFJORD(dim, hidden=16, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.double() if double else model


class LinearField(nn.Module):
    """f(t, z) = A z, divergence tr A: the flow is expm(t A), known in closed form."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return z @ self.a.T

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return self(t, z), torch.diagonal(self.a).sum().expand(z.shape[0])


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_inverse_undoes_forward(dim: int) -> None:
    model = scaled_model(dim, seed=dim)
    z = torch.randn(64, dim) * 1.5
    with torch.no_grad():
        x, log_det_forward = model(z)
        z_back, log_det_inverse = model.inverse(x)
    assert (x - z).abs().max() > 0.1  # a non-trivial flow
    torch.testing.assert_close(z_back, z, rtol=0, atol=2e-4)
    torch.testing.assert_close(log_det_inverse, -log_det_forward, rtol=0, atol=2e-4)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_log_prob_matches_autograd_jacobian(dim: int) -> None:
    model = scaled_model(dim, seed=10 + dim, double=True, **TIGHT)
    x = torch.randn(3, dim, dtype=torch.float64) * 2
    log_dets = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: model.inverse(r.unsqueeze(0))[0][0], row)
        z = model.inverse(row.unsqueeze(0))[0].detach()
        log_dets.append(torch.linalg.slogdet(jac).logabsdet)
        expected = standard_normal_log_prob(z)[0] + log_dets[-1]
        torch.testing.assert_close(model.log_prob(row.unsqueeze(0))[0].detach(), expected,
                                   rtol=0, atol=1e-7)
    assert max(abs(v.item()) for v in log_dets) > 0.1  # a non-trivial density


def test_density_integrates_to_one_in_2d() -> None:
    model = scaled_model(2, seed=3, scale=1.5)
    with torch.no_grad():
        samples = model.sample(5000)
    half_width = 8.0
    assert samples.abs().max() < half_width - 1  # the grid holds essentially all of the mass
    n = 241
    axis = torch.linspace(-half_width, half_width, n)
    grid = torch.cartesian_prod(axis, axis)
    with torch.inference_mode():
        density = model.log_prob(grid).exp()
    cell = (axis[1] - axis[0]).item() ** 2
    total_variation = 0.5 * (density - standard_normal_log_prob(grid).exp()).abs().sum() * cell
    assert total_variation > 0.2  # far from the base density
    assert density.sum().item() * cell == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("dim", [1, 3])
def test_linear_field_gives_matrix_exponential(dim: int) -> None:
    torch.manual_seed(dim)
    a = torch.randn(dim, dim, dtype=torch.float64) * 0.8
    model = FFJORD(dim, field=LinearField(a.clone()), time_length=1.0, **TIGHT)
    z0 = torch.randn(8, dim, dtype=torch.float64)
    with torch.no_grad():
        x, log_det = model(z0)
        log_prob = model.log_prob(x)
    torch.testing.assert_close(x, z0 @ torch.linalg.matrix_exp(a).T, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(log_det, torch.trace(a).expand(8), rtol=1e-8, atol=1e-8)
    expected = standard_normal_log_prob(x @ torch.linalg.matrix_exp(-a).T) - torch.trace(a)
    torch.testing.assert_close(log_prob, expected, rtol=1e-8, atol=1e-8)


def test_linear_field_with_time_length_and_fixed_steps() -> None:
    a = torch.tensor([[0.3, -1.0], [1.0, 0.2]], dtype=torch.float64)
    model = FFJORD(2, field=LinearField(a.clone()), time_length=2.0, method="rk4", step_size=0.01)
    x = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        log_prob = model.log_prob(x)
    expected = standard_normal_log_prob(x @ torch.linalg.matrix_exp(-2 * a).T) - 2 * torch.trace(a)
    torch.testing.assert_close(log_prob, expected, rtol=1e-7, atol=1e-7)
    assert model.nfe == 4 * 200


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_log_prob_in_inference_contexts(context) -> None:
    model = scaled_model(4)
    x = torch.randn(32, 4)
    expected = model.log_prob(x)
    assert expected.requires_grad  # the grad-enabled path really is a different context
    with context():
        value = model.log_prob(x)
    assert torch.equal(value, expected.detach())


def test_state_dict_round_trip_restores_weights_and_solver(tmp_path: Path) -> None:
    model = scaled_model(3, seed=1, method="bosh3", rtol=3e-6, atol=2e-6, step_size=0.3,
                         time_length=1.5)
    x = torch.randn(50, 3)
    path = tmp_path / "ffjord.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)
    fresh = FFJORD(3, hidden=16, method="rk4", step_size=0.5, rtol=0.1, atol=0.1)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.config() == model.config()
    assert FFJORD(3, **model.config()).config() == model.config()
    assert (fresh.method, fresh.rtol, fresh.atol, fresh.step_size, fresh.time_length) == (
        "bosh3", 3e-6, 2e-6, 0.3, 1.5)
    with torch.inference_mode():
        assert torch.equal(fresh.log_prob(x), model.log_prob(x))


# The defaults (fixed steps), and the adaptive setting the FFJORD docstring recommends.
@pytest.mark.parametrize("options", [{}, {"method": "dopri5", "rtol": 1e-7, "atol": 1e-6}])
def test_score_does_not_depend_on_batch(options: dict) -> None:
    model = scaled_model(5, seed=2, scale=1.5, **options)
    torch.manual_seed(1)
    records = torch.randn(10, 5)
    others = torch.cat([torch.randn(900, 5), torch.randn(100, 5) * 4])  # incl. far outliers
    with torch.inference_mode():
        alone = torch.cat([model.log_prob(r.unsqueeze(0)) for r in records])
        again = torch.cat([model.log_prob(r.unsqueeze(0)) for r in records])
        in_batch = model.log_prob(torch.cat([records, others]))[:10]
        order = torch.randperm(1010)
        shuffled = model.log_prob(torch.cat([records, others])[order])
        in_other_order = shuffled[torch.argsort(order)][:10]
    assert torch.equal(alone, again)
    assert (alone - in_batch).abs().max() < 1e-4
    assert (alone - in_other_order).abs().max() < 1e-4


def reference_rk4_kinetic(model: FFJORD, x: Tensor, steps: int = 400) -> Tensor:
    """int_0^T |f|^2 dt by a hand-written RK4 from x at T back to 0, with the field's plain call."""
    t_length = model.time_length
    h = -t_length / steps

    def rhs(t: float, state: Tensor) -> Tensor:
        z = state[:, :-1]
        f = model.field(torch.tensor(t, dtype=x.dtype), z)
        return torch.cat([f, f.square().sum(dim=1, keepdim=True)], dim=1)

    state = torch.cat([x, torch.zeros(x.shape[0], 1, dtype=x.dtype)], dim=1)
    t = t_length
    for _ in range(steps):
        k1 = rhs(t, state)
        k2 = rhs(t + h / 2, state + h / 2 * k1)
        k3 = rhs(t + h / 2, state + h / 2 * k2)
        k4 = rhs(t + h, state + h * k3)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t += h
    return -state[:, -1]


def test_kinetic_energy_matches_independent_integration() -> None:
    model = scaled_model(3, seed=4, double=True, **TIGHT)
    x = torch.randn(6, 3, dtype=torch.float64) * 2
    with torch.no_grad():
        log_prob, kinetic, jacobian = model.training_terms(x)
        expected = reference_rk4_kinetic(model, x)
        exact_log_prob = model.log_prob(x)
    assert torch.isfinite(kinetic).all() and (kinetic >= 0).all() and (jacobian >= 0).all()
    assert kinetic.min() > 0.1
    torch.testing.assert_close(kinetic, expected, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(log_prob, exact_log_prob, rtol=0, atol=1e-7)  # exact trace


def test_regularisers_for_a_scaled_identity_field() -> None:
    # f = a z: z(t) = exp(a (t - T)) x, so kinetic = a |x|^2 (1 - exp(-2 a T)) / 2, and
    # |e^T (a I)|^2 = a^2 d for every Rademacher probe, so the Jacobian term is a^2 d T exactly.
    a, dim, t_length = 0.7, 3, 1.3
    model = FFJORD(dim, field=LinearField(a * torch.eye(dim, dtype=torch.float64)),
                   time_length=t_length, train_divergence="rademacher", **TIGHT)
    x = torch.randn(4, dim, dtype=torch.float64)
    log_prob, kinetic, jacobian = model.training_terms(x)
    expected_kinetic = a * x.square().sum(1) * (1 - math.exp(-2 * a * t_length)) / 2
    torch.testing.assert_close(kinetic.detach(), expected_kinetic, rtol=1e-8, atol=1e-10)
    expected_jacobian = torch.full((4,), a * a * dim * t_length, dtype=torch.float64)
    torch.testing.assert_close(jacobian.detach(), expected_jacobian, rtol=1e-8, atol=1e-10)
    # e^T (a I) e = a d exactly for Rademacher probes, so even the estimate is exact here.
    torch.testing.assert_close(log_prob.detach(), model.log_prob(x).detach(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("train_divergence", ["rademacher", "gaussian", "exact"])
def test_training_terms_are_differentiable(train_divergence: str) -> None:
    model = scaled_model(3, seed=5, scale=1.0, train_divergence=train_divergence, rtol=1e-3,
                         atol=1e-3)
    x = torch.randn(16, 3)
    log_prob, kinetic, jacobian = model.training_terms(x)
    (-log_prob.mean() + 0.1 * kinetic.mean() + 0.1 * jacobian.mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.field.linear2.weight.grad.abs().sum() > 0


def test_adjoint_gradients_match_direct_backpropagation() -> None:
    x = torch.randn(8, 2, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        model = scaled_model(2, seed=6, double=True, adjoint=adjoint, method="dopri5", rtol=1e-9,
                             atol=1e-9)
        log_prob, kinetic, _ = model.training_terms(x)
        (-log_prob.mean() + kinetic.mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_field_is_the_documented_tanh_mlp() -> None:
    # TimeMLP evaluates tanh through sigmoids for speed; compare with the formula written plainly.
    torch.manual_seed(0)
    model = FFJORD(3, hidden=8).double()
    field = model.field
    with torch.no_grad():
        for p in field.parameters():
            p.normal_()
    z, t = torch.randn(10, 3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    h1 = torch.tanh(z @ field.linear1.weight.T + field.linear1.bias + t * field.time1)
    h2 = torch.tanh(h1 @ field.linear2.weight.T + field.linear2.bias + t * field.time2)
    expected = h2 @ field.linear3.weight.T + field.linear3.bias + t * field.time3
    torch.testing.assert_close(field(t, z), expected, rtol=1e-12, atol=1e-12)


def test_fixed_step_grid_and_solver_error() -> None:
    model = scaled_model(2, seed=8, method="rk4", step_size=0.1)
    x = torch.randn(200, 2)
    with torch.inference_mode():
        model.log_prob(x)
        assert model.nfe == 4 * 10  # 0.1 does not divide 1.0 in floating point: still 10 steps
        fine = model.solver_error(x)
        model.set_solver(step_size=0.5)
        coarse = model.solver_error(x)
    assert fine.max() < 1e-4 < coarse.max()


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        FFJORD(2, method="rk4", step_size=None)  # fixed-step without a step
    with pytest.raises(ValueError):
        FFJORD(2, method="euler", step_size=0.0)
    with pytest.raises(ValueError):
        FFJORD(2, method="nope")
    with pytest.raises(ValueError):
        FFJORD(2, train_divergence="hutchinson")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FFJORD(0)
    model = FFJORD(2)
    with pytest.raises(TypeError):
        model.set_solver(tolerance=1e-3)
    model.set_solver(method="dopri5", rtol=1e-6)
    assert model.config()["method"] == "dopri5" and model.get_extra_state()["rtol"] == 1e-6


def test_nfe_and_sampling_shapes() -> None:
    model = FFJORD(1, hidden=8)
    samples = model.sample(10)
    assert samples.shape == (10, 1) and model.nfe > 0
    assert model.log_prob(samples).shape == (10,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = scaled_model(3, seed=7)
    x = torch.randn(100, 3)
    with torch.inference_mode():
        expected = model.log_prob(x)
        value = model.cuda().log_prob(x.cuda()).cpu()
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-4)


@pytest.fixture
def one_thread():
    """Small batches gain nothing from a second thread, and a busy neighbour process makes
    OpenMP's spin-waiting collapse 2-thread throughput (measured up to 30x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_moons() -> tuple[Tensor, Tensor, float]:
    """Standardised two-moons train (1500) and test (500) points, and the held-out NLL of the
    best Gaussian fitted to the training points: the bar a trained flow must clear."""
    from sklearn.datasets import make_moons

    data = torch.from_numpy(make_moons(2000, noise=0.08, random_state=0)[0]).float()
    data = (data - data.mean(0)) / data.std(0)
    train, test = data[:1500], data[1500:]
    gaussian = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    return train, test, -gaussian.log_prob(test).mean().item()


@pytest.mark.parametrize("time_length", [1.0, 2.5])
def test_flow_matching_loss_matches_its_closed_form_for_a_linear_field(time_length) -> None:
    """Field ``c z``, data and base both N(0, I): the loss at time ``t`` (of ``[0, 1]``) is
    ``|(c T (1 - t) + 1) e + (c T t - 1) x|^2 / T^2``, whose mean over t is a polynomial
    integral (computed here by hand)."""
    dim, c = 3, 0.7
    model = FFJORD(dim, time_length=time_length, field=LinearField(c * torch.eye(dim)))
    torch.manual_seed(0)
    x = torch.randn(400_000, dim)
    loss = model.flow_matching_loss(x)
    assert loss.shape == (len(x),)
    a = c * time_length
    # int_0^1 (a (1 - t) + 1)^2 dt = a^2 / 3 + a + 1 and int_0^1 (a t - 1)^2 dt = a^2 / 3 - a + 1
    mean_over_t = (a * a / 3 + a + 1) + (a * a / 3 - a + 1)
    assert loss.mean().item() == pytest.approx(dim * mean_over_t / time_length**2, rel=0.01)


def test_flow_matching_training_beats_a_gaussian_on_two_moons(one_thread) -> None:
    """Trained by flow matching only (no ODE solve in training), the model's exact
    likelihood still beats the best Gaussian on held-out points."""
    train, test, gaussian_nll = two_moons()
    torch.manual_seed(0)
    model = FFJORD(2, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(1500):
        loss = model.flow_matching_loss(train[torch.randint(0, len(train), (256,))]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.set_solver(method="dopri5", rtol=1e-6, atol=1e-6)
    with torch.inference_mode():
        ffjord_nll = -model.log_prob(test).mean().item()
    print(f"held-out NLL: flow matching {ffjord_nll:.3f}, Gaussian {gaussian_nll:.3f}")
    assert ffjord_nll < gaussian_nll - 0.3


@pytest.mark.slow
def test_short_training_beats_a_gaussian_on_two_moons(one_thread) -> None:
    train, test, gaussian_nll = two_moons()

    torch.manual_seed(0)
    model = FFJORD(2, hidden=64, step_size=0.25)  # coarse steps while training: 4x faster
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    start = time.perf_counter()
    for _ in range(250):
        rows = train[torch.randint(0, len(train), (256,))]
        log_prob, kinetic, jacobian = model.training_terms(rows)
        loss = -log_prob.mean() + 0.01 * kinetic.mean() + 0.01 * jacobian.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.set_solver(method="dopri5", rtol=1e-6, atol=1e-6)  # score at tight tolerances
    with torch.inference_mode():
        ffjord_nll = -model.log_prob(test).mean().item()
    print(f"held-out NLL: FFJORD {ffjord_nll:.3f}, Gaussian {gaussian_nll:.3f}, "
          f"training {seconds:.1f}s")
    assert ffjord_nll < gaussian_nll - 0.3
