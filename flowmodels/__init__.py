"""Normalizing flows with exact log-likelihoods: the math layer of flowad (torch only)."""

from flowmodels.base import Flow, standard_normal_log_prob
from flowmodels.ffjord import FFJORD
from flowmodels.mixture import FlowMixture
from flowmodels.realnvp import RealNVP

FLOWS: dict[str, type[Flow]] = {"realnvp": RealNVP, "ffjord": FFJORD}


def build_flow(kind: str, dim: int, *, members: int = 1, **options: object) -> Flow | FlowMixture:
    """Builds a flow by name (``"realnvp"`` or ``"ffjord"``) with constructor options;
    ``members > 1`` builds an equal-weight :class:`FlowMixture` of that many such flows.
    A ``generator`` option (a ``torch.Generator``) is the source of every initial weight."""
    try:
        cls = FLOWS[kind]
    except KeyError:
        raise ValueError(f"unknown flow {kind!r}; choose one of {sorted(FLOWS)}") from None
    if members > 1:
        return FlowMixture([cls(dim, **options) for _ in range(members)])
    return cls(dim, **options)


__all__ = [
    "FFJORD", "FLOWS", "Flow", "FlowMixture", "RealNVP", "build_flow", "standard_normal_log_prob",
]
