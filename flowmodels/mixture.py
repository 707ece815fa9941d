"""An equal-weight mixture of flows: an ensemble whose score is still an exact density.

Averaging the *log*-likelihoods of an ensemble gives a score but not a density; averaging the
likelihoods does: ``p(x) = (1/K) sum_k p_k(x)`` integrates to one because each ``p_k`` does.
Mixtures of independently trained flows reduce the seed-to-seed variance of a single flow
(Lakshminarayanan et al., "Simple and scalable predictive uncertainty estimation using deep
ensembles", 2017).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from flowmodels.base import Flow


class FlowMixture(nn.Module):
    """``p(x) = (1/K) sum_k p_k(x)`` over ``K`` flows of the same dimension.

    Not a :class:`Flow` (a mixture is not a bijection) but scores and samples like one.

    Arguments:
        components: the flows, trained independently (see ``pipelines.model.training``).
    """

    def __init__(self, components: Sequence[Flow]) -> None:
        super().__init__()
        if not components:
            raise ValueError("a mixture needs at least one component")
        dims = {flow.dim for flow in components}
        if len(dims) != 1:
            raise ValueError(f"components have different dimensions: {sorted(dims)}")
        self.components = nn.ModuleList(components)
        self.dim = dims.pop()

    def members(self) -> list[Flow]:
        """``components``, as the flows they are."""
        return [cast(Flow, flow) for flow in self.components]

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of each row of ``x`` in nats, shape ``(n,)``."""
        return self.combine(self.component_log_probs(x))

    def component_log_probs(self, x: Tensor) -> Tensor:
        """Each component's exact log-density of each row of ``x``, shape ``(K, n)``."""
        return torch.stack([flow.log_prob(x) for flow in self.members()])

    @staticmethod
    def combine(per_component: Tensor) -> Tensor:
        """The equal-weight mixture's log-density from its components' ``(K, n)``:
        ``log((p1 + ... + pK) / K)``, as :meth:`log_prob` computes it."""
        return torch.logsumexp(per_component, dim=0) - math.log(len(per_component))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``n`` samples: a uniformly chosen component per row, all from ``generator``
        (None: the global RNG)."""
        samples = torch.stack([flow.sample(n, generator) for flow in self.members()])
        which = torch.randint(len(self.components), (n,), device=samples.device,
                              generator=generator)
        return samples[which, torch.arange(n, device=samples.device)]
