"""How a fitted flow's log-density is computed: one exact evaluator for batches of any size,
and the NumPy fast path for a few records on the CPU.

The exact evaluator is :class:`~flowmodels.frozen.FrozenRealNVP` for RealNVP flows (and their
mixtures) and the flow's own module otherwise (FFJORD). A row's score from it is bit for bit the
same in any batch (the *determinism* contract, docs/design.md). The fast path
(:mod:`pipelines.model.fastpath`) is what keeps a one-record request cheap; it differs from
the exact evaluator by float rounding (within ``1e-5`` nats + ``1e-6`` relative,
``tests/model/test_fastpath.py``), so a fast score may only decide a verdict or a p-value where
no calibration score or threshold lies within :data:`FAST_TOLERANCE` of it; the detector scores
the rows that are that close again with the exact evaluator (:func:`near_a_boundary`), and a
record's verdict is the same whatever batch it comes in.

Both are built from the weights once, when a detector is fitted, loaded or unpickled, never
while scoring (one detector is scored from many threads). A flow changed after that (its weights
in place, its ``log_prob`` wrapped) is scored by its own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from numpy.typing import NDArray

from flowmodels import Flow, FlowMixture
from flowmodels.frozen import FrozenRealNVP
from flowmodels.realnvp import RealNVP
from pipelines.model.fastpath import SMALL_BATCH_ROWS, FastRealNVP

# Rows per exact-evaluator call: the default flow's activations of 4096 rows (4096 x 128
# floats) stay in cache (rows/s by batch size: benchmarks/README.md).
SCORE_BATCH_ROWS = 4096
# How far a fast score may lie from a decision boundary and still decide: twice the agreement
# with torch that tests/model/test_fastpath.py enforces, absolute in nats and relative (on
# examples/data/transactions.csv: 4.8e-5 nats and 6.2e-7 relative at most over 2000 records).
FAST_TOLERANCE = (2e-5, 2e-6)


# The methods the frozen and fast evaluators replicate, as defined when this was imported: a
# flow whose class or instance has another one (a test's wrapper) is scored by its module.
_REPLICATED = {(cls, name): getattr(cls, name) for cls, name in [
    (RealNVP, "log_prob"), (RealNVP, "inverse"), (RealNVP, "base_log_prob"),
    (FlowMixture, "log_prob"), (FlowMixture, "component_log_probs")]}


def _members(flow: torch.nn.Module) -> list[torch.nn.Module]:
    return list(flow.components) if type(flow) is FlowMixture else [flow]


def has_frozen_form(flow: torch.nn.Module) -> bool:
    """Whether ``flow`` is a RealNVP, or a mixture of RealNVPs, of the classes and methods
    as defined."""
    return (all(type(member) is RealNVP for member in _members(flow))
            and all(getattr(cls, name) is method for (cls, name), method in _REPLICATED.items())
            and not any(name in vars(m) for m in [flow, *_members(flow)]
                        for _, name in _REPLICATED))


class FlowEvaluators:
    """The exact evaluator and the fast path of one trained flow, built from its weights.

    Arguments:
        flow: the trained flow, in eval mode.
        fast: also build the NumPy fast path (CPU RealNVP flows only).

    Raises:
        RuntimeError: the fast path cannot mirror a RealNVP it should (its code and
            flowmodels' have drifted apart).
    """

    def __init__(self, flow: Flow | FlowMixture, *, fast: bool = True) -> None:
        self.flow = flow
        frozen_form = has_frozen_form(flow)
        self.frozen = FrozenRealNVP.of(flow) if frozen_form else None
        on_cpu = next(flow.parameters()).device.type == "cpu"
        self.fast = FastRealNVP.build(flow) if fast and frozen_form and on_cpu else None
        if fast and frozen_form and on_cpu and self.fast is None:
            raise RuntimeError("the NumPy fast path cannot mirror this RealNVP: "
                               "pipelines/model/fastpath.py no longer matches flowmodels")
        self._tensors = [*flow.parameters(), *flow.buffers()]
        self._versions = [t._version for t in self._tensors]

    def unchanged(self, flow: torch.nn.Module) -> bool:
        """Whether ``flow`` is the flow these were built from, with the same weights (an
        in-place change of any weight bumps torch's version counter) and methods.

        Arguments:
            flow: the detector's flow now.
        """
        return (flow is self.flow and [t._version for t in self._tensors] == self._versions
                and (self.frozen is None or has_frozen_form(flow)))

    def uses_fast_path(self, flow: torch.nn.Module, n_rows: int) -> bool:
        """Whether :meth:`log_probs` of ``n_rows`` rows of ``flow`` takes the fast path.

        Arguments:
            flow: the detector's flow now.
            n_rows: the batch.
        """
        return self.fast is not None and n_rows <= SMALL_BATCH_ROWS and self.unchanged(flow)

    def log_probs(self, flow: Flow | FlowMixture, x: np.ndarray, device: torch.device, *,
                  fast: bool, components: bool) -> NDArray[np.float64]:
        """``(K, n)``: each mixture component's log-density of the encoded records (one row
        for a single flow), or ``(1, n)`` the flow's own when its module scores them (it
        changed since) and ``components`` is False (:func:`mixture_log_prob` takes either).

        Arguments:
            flow: the detector's flow now.
            x: ``(n, dim)`` encoded records.
            device: where the flow runs.
            fast: take the fast path (where :meth:`uses_fast_path` said so).
            components: each component's log-density is needed.
        """
        if fast and self.fast is not None:
            return self.fast.component_log_probs(x.astype(np.float32))
        frozen = self.frozen if self.unchanged(flow) else None
        by_component = isinstance(flow, FlowMixture) and (components or frozen is not None)
        out = np.empty((len(_members(flow)) if by_component else 1, len(x)), dtype=np.float64)
        if flow.training:  # eval() walks every submodule: 0.2 ms a call, so only when needed
            flow.eval()
        with torch.inference_mode():
            for start in range(0, len(x), SCORE_BATCH_ROWS):
                batch = torch.as_tensor(x[start : start + SCORE_BATCH_ROWS],
                                        dtype=torch.float32, device=device)
                rows = slice(start, start + len(batch))
                if frozen is not None:
                    each = frozen.component_log_probs(batch)
                elif by_component:
                    each = cast(FlowMixture, flow).component_log_probs(batch)
                else:
                    each = flow.log_prob(batch)[None]
                out[:, rows] = each.double().cpu().numpy()
        return out


def mixture_log_prob(per_component: NDArray[np.float64]) -> NDArray[np.float64]:
    """The equal-weight mixture's log-density from its components' ``(K, n)``, in float64
    (:meth:`FlowMixture.log_prob <flowmodels.mixture.FlowMixture.log_prob>` in float32)."""
    return FastRealNVP.mixture(per_component)


def near_a_boundary(judged: np.ndarray, boundaries: Sequence[NDArray[np.float64]]
                    ) -> NDArray[np.bool_]:
    """The records whose fast score could fall on the other side of a decision boundary than
    their exact score: within :data:`FAST_TOLERANCE` of one, or not finite.

    Arguments:
        judged: ``(n,)`` anomaly scores, or ``(n, K)`` one column per fold model.
        boundaries: per column, its sorted boundaries (``calibrator.boundaries()``).
    """
    scores = judged.reshape(len(judged), -1)
    near = ~np.isfinite(scores).all(axis=1)
    absolute, relative = FAST_TOLERANCE
    for column, edges in zip(scores.T, boundaries, strict=True):
        if len(edges):
            at = np.searchsorted(edges, column)
            below = edges[np.maximum(at - 1, 0)]
            above = edges[np.minimum(at, len(edges) - 1)]
            with np.errstate(invalid="ignore"):  # inf - inf: NaN, near
                gap = np.minimum(np.abs(column - below), np.abs(above - column))
            near |= ~(gap > absolute + relative * np.abs(column))
    return near
