"""The interface every flow in :mod:`flowmodels` shares."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Log-density of a standard normal, summed over the last dimension (nats)."""
    return -0.5 * (z.square().sum(dim=-1) + z.shape[-1] * LOG_2PI)


def linear(in_features: int, out_features: int,
           generator: torch.Generator | None = None) -> nn.Linear:
    """An ``nn.Linear`` initialised as PyTorch does, from ``generator`` (the global RNG when
    None): built on the meta device first, so the global RNG is not drawn from either way.

    Arguments:
        in_features, out_features: the layer's shape.
        generator: the source of the initial weights.
    """
    layer = nn.Linear(in_features, out_features, device="meta").to_empty(device="cpu")
    # nn.Linear.reset_parameters, with the generator passed through.
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(in_features)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


class Flow(nn.Module):
    """A bijection between a standard normal base and the data space.

    Subclasses implement :meth:`forward` (base -> data) and :meth:`inverse` (data -> base), each
    returning the per-row log-absolute-determinant of its own Jacobian, and :meth:`config`, the
    keyword arguments that rebuild an identical architecture.

    Arguments:
        dim: the number of features, any integer >= 1.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Maps base samples ``z`` to data ``x``; returns ``(x, log|det dx/dz|)``."""
        raise NotImplementedError

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Maps data ``x`` to base ``z``; returns ``(z, log|det dz/dx|)``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """Constructor keyword arguments (besides ``dim``) that rebuild this architecture."""
        raise NotImplementedError

    def base_log_prob(self, z: Tensor) -> Tensor:
        """Log-density of the base distribution (a standard normal), per row."""
        return standard_normal_log_prob(z)

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws from the base distribution (from ``generator``; None: the global RNG)."""
        reference = next(self.parameters())
        return torch.randn(n, self.dim, device=reference.device, dtype=reference.dtype,
                           generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of each row of ``x`` in nats, shape ``(n,)``."""
        z, log_det = self.inverse(x)
        return self.base_log_prob(z) + log_det

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``n`` samples, shape ``(n, dim)``, from ``generator`` (None: the global RNG)."""
        return self.forward(self.base_sample(n, generator))[0]
