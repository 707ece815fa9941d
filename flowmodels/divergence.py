"""Divergence of a vector field ``f(t, z)``: exact, and Hutchinson's estimate for training.

The divergence ``tr(df/dz)`` is the rate of change of the log-density along a continuous
normalizing flow (Chen et al. 2018, "Neural ordinary differential equations"). Scores must use the
exact trace (the *exact likelihood* contract); Hutchinson's estimator ``e^T (df/dz) e``
(Hutchinson 1990; used by Grathwohl et al. 2019, "FFJORD") is unbiased but noisy, so it is for
training only.

A field is any callable ``f(t, z) -> dz/dt`` acting row-wise on ``z`` of shape ``(n, d)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Field = Callable[[Tensor, Tensor], Tensor]
ProbeKind = Literal["rademacher", "gaussian"]


def exact_divergence(f: Field, t: Tensor, z: Tensor) -> Tensor:
    """Exact ``tr(df/dz)`` per row from the full Jacobian (``torch.func``), shape ``(n,)``.

    Costs a ``d x d`` Jacobian per row: meant for checking closed forms and for fields without one.
    ``torch.func`` transforms do not need an outer autograd graph, so this works under
    ``torch.no_grad()`` and ``torch.inference_mode()`` (the *inference contexts* contract).

    Arguments:
        f: the vector field ``f(t, z) -> dz/dt``, row-wise in ``z``.
        t: the time, a scalar tensor.
        z: the state, shape ``(n, d)``.
    """

    def row(z_row: Tensor) -> Tensor:
        return f(t, z_row.unsqueeze(0)).squeeze(0)

    jacobians = torch.func.vmap(torch.func.jacrev(row))(z)
    return jacobians.diagonal(dim1=-2, dim2=-1).sum(dim=-1)


def vector_jacobian_product(f: Field, t: Tensor, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Returns ``(f(t, z), v^T df/dz)`` by one vector-Jacobian product, differentiable.

    Needs gradient recording (training only). ``create_graph=True`` keeps the product in the graph
    so that losses built from it (Hutchinson's divergence, RNODE's Jacobian norm) can be trained.

    Arguments:
        f: the vector field ``f(t, z) -> dz/dt``, row-wise in ``z``.
        t: the time, a scalar tensor.
        z: the state, shape ``(n, d)``.
        v: the left vector per row, shape ``(n, d)``.
    """
    with torch.enable_grad():
        if not z.requires_grad:
            z = z.detach().requires_grad_(True)
        out = f(t, z)
        (vjp,) = torch.autograd.grad(out, z, v, create_graph=True)
    return out, vjp


def hutchinson_divergence(f: Field, t: Tensor, z: Tensor, probe: Tensor) -> Tensor:
    """Hutchinson's unbiased estimate ``e^T (df/dz) e`` per row by one vjp, shape ``(n,)``.

    Training only: it needs gradient recording and it is an estimate, never a score.

    Arguments:
        f: the vector field ``f(t, z) -> dz/dt``, row-wise in ``z``.
        t: the time, a scalar tensor.
        z: the state, shape ``(n, d)``.
        probe: ``e`` per row, shape ``(n, d)``, with ``E[e e^T] = I`` (see :func:`make_probe`).
    """
    _, vjp = vector_jacobian_product(f, t, z, probe)
    return (vjp * probe).sum(dim=-1)


def make_probe(z: Tensor, kind: ProbeKind = "rademacher",
               generator: torch.Generator | None = None) -> Tensor:
    """A random probe shaped, placed and typed like ``z`` with ``E[e e^T] = I``.

    Rademacher probes (+-1) have the lower variance of the two (Hutchinson 1990).

    Arguments:
        z: the state whose shape, device and dtype the probe takes.
        kind: ``"rademacher"`` or ``"gaussian"``.
        generator: the source of the draws (None: the global RNG).
    """
    if kind == "rademacher":
        draws = torch.randint(0, 2, z.shape, device=z.device, generator=generator)
        return draws.to(z.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
    raise ValueError(f"unknown probe kind {kind!r}; use 'rademacher' or 'gaussian'")
