"""Divergence helpers and FFJORD's closed-form trace against brute-force Jacobians."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowmodels.divergence import (
    exact_divergence,
    hutchinson_divergence,
    make_probe,
    vector_jacobian_product,
)
from flowmodels.ffjord import TimeMLP


def brute_force_jacobians(f, t: Tensor, z: Tensor) -> Tensor:
    """Per-row d x d Jacobians with torch.autograd.functional.jacobian, shape (n, d, d)."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda row: f(t, row.unsqueeze(0)).squeeze(0), row)
        for row in z
    ])


def random_mlp(dim: int, hidden: int, seed: int) -> TimeMLP:
    torch.manual_seed(seed)
    field = TimeMLP(dim, hidden).double()
    with torch.no_grad():
        for p in field.parameters():
            p.normal_()  # far from the default init: large pre-activations, all terms matter
    return field


class SoftplusField(nn.Module):
    """A field with no closed-form divergence, time fed as an input column."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 16), nn.Softplus(), nn.Linear(16, dim))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([z, t.expand(z.shape[0], 1)], dim=1)) * z.sin()


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_closed_form_trace_matches_brute_force(dim: int) -> None:
    field = random_mlp(dim, hidden=7, seed=dim)
    z = torch.randn(6, dim, dtype=torch.float64) * 2
    for t in (0.0, 0.37, 1.9):
        t = torch.tensor(t, dtype=torch.float64)
        expected = brute_force_jacobians(field, t, z).diagonal(dim1=1, dim2=2).sum(-1)
        value, trace = field.forward_with_divergence(t, z)
        torch.testing.assert_close(trace, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(value, field(t, z))


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_closed_form_vjp_matches_brute_force(dim: int) -> None:
    field = random_mlp(dim, hidden=6, seed=10 + dim)
    z, v = torch.randn(5, dim, dtype=torch.float64), torch.randn(5, dim, dtype=torch.float64)
    t = torch.tensor(0.6, dtype=torch.float64)
    jac = brute_force_jacobians(field, t, z)
    _, trace, vjp = field.forward_with_vjp(t, z, v)
    torch.testing.assert_close(vjp, torch.einsum("ni,nij->nj", v, jac), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(trace, jac.diagonal(dim1=1, dim2=2).sum(-1))


@pytest.mark.parametrize("dim", [1, 3])
def test_generic_exact_divergence_matches_brute_force(dim: int) -> None:
    torch.manual_seed(0)
    field = SoftplusField(dim).double()
    z = torch.randn(5, dim, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    expected = brute_force_jacobians(field, t, z).diagonal(dim1=1, dim2=2).sum(-1)
    torch.testing.assert_close(exact_divergence(field, t, z), expected, rtol=1e-10, atol=1e-10)
    mlp = random_mlp(dim, hidden=5, seed=3)
    torch.testing.assert_close(exact_divergence(mlp, t, z), mlp.forward_with_divergence(t, z)[1])


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_exact_divergences_work_without_autograd(context) -> None:
    field = random_mlp(4, hidden=8, seed=1)
    z = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    expected = field.forward_with_divergence(t, z)[1].detach()
    with context():
        closed_form = field.forward_with_divergence(t, z)[1]
        generic = exact_divergence(field, t, z)
    torch.testing.assert_close(closed_form, expected)
    torch.testing.assert_close(generic, expected)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_mean_converges_to_exact_trace(kind: str) -> None:
    field = random_mlp(3, hidden=8, seed=2)
    n = 20_000
    z = torch.randn(1, 3, dtype=torch.float64).expand(n, 3)  # one point, n probes
    t = torch.tensor(0.5, dtype=torch.float64)
    torch.manual_seed(5)
    estimates = hutchinson_divergence(field, t, z, make_probe(z, kind)).detach()
    exact = field.forward_with_divergence(t, z[:1])[1].item()
    standard_error = estimates.std().item() / math.sqrt(n)
    assert standard_error > 0
    assert abs(estimates.mean().item() - exact) < 4 * standard_error


def test_vjp_is_differentiable_for_training() -> None:
    field = random_mlp(2, hidden=4, seed=4)
    z = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor(0.1, dtype=torch.float64)
    _, vjp = vector_jacobian_product(field, t, z, make_probe(z))
    vjp.square().sum().backward()
    grad = field.linear2.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_make_probe() -> None:
    z = torch.zeros(1000, 4, dtype=torch.float64)
    rademacher = make_probe(z, "rademacher")
    assert rademacher.shape == z.shape and rademacher.dtype == z.dtype
    assert set(rademacher.unique().tolist()) == {-1.0, 1.0}
    gaussian = make_probe(z, "gaussian")
    assert gaussian.dtype == z.dtype and 0.9 < gaussian.var().item() < 1.1
    with pytest.raises(ValueError):
        make_probe(z, "uniform")  # type: ignore[arg-type]
