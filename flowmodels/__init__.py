"""Normalizing flows with exact log-likelihoods: the math layer of flowad (torch only)."""

from flowmodels.base import Flow, standard_normal_log_prob
from flowmodels.ffjord import FFJORD
from flowmodels.realnvp import RealNVP

FLOWS: dict[str, type[Flow]] = {"realnvp": RealNVP, "ffjord": FFJORD}


def build_flow(kind: str, dim: int, **options: object) -> Flow:
    """Builds a flow by name (``"realnvp"`` or ``"ffjord"``) with constructor options."""
    try:
        cls = FLOWS[kind]
    except KeyError:
        raise ValueError(f"unknown flow {kind!r}; choose one of {sorted(FLOWS)}") from None
    return cls(dim, **options)


__all__ = ["FFJORD", "FLOWS", "Flow", "RealNVP", "build_flow", "standard_normal_log_prob"]
