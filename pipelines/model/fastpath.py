"""RealNVP log-densities of small batches in NumPy: the scoring fast path for a few records.

Why: one record through ``Detector.log_likelihood`` spent most of its flow time in torch's
per-operation dispatch (~250 small ops across the couplings, ~3-5 us each whatever the size):
a 1-row ``log_prob`` cost ~280x the per-row cost at batch 4096. NumPy's per-call overhead is
~0.5-1 us, and this evaluator also spends nothing on masked entries (it gathers the
conditioning columns and computes only the transformed features' scales and shifts) and
evaluates all members of a ``FlowMixture`` at once (stacked weights, batched matmuls).
Measured on trained ``mixed_frame`` detectors (11 features, 8 couplings of width 128; 2-core
machine, one thread, medians, torch vs NumPy ``log_prob``): one flow 1 row 518 vs 132 us,
16 rows 681 vs 427 us, 32 rows 745 vs 749 us, 64 rows 841 vs 1420 us; the 3-flow mixture 1 row
~2000 vs 191 us, 16 rows 2186 vs 1324 us, 32 rows a tie. Beyond that torch's float32 kernels
win (NumPy's float64 matmuls and scipy's erf cost more per row), so ``SMALL_BATCH_ROWS`` is 16.

Exactness (the *exact likelihood* and *determinism* contracts, docs/design.md): the same
function of the same float32 weights and float32 inputs, evaluated in float64 (so its own
rounding is negligible). It differs from torch's float32 evaluation by torch's rounding:
within 1e-5 nats + 1e-6 relative in tests/model/test_fastpath.py, far below the 1e-4 nats a record's
score may move between batches.

Only what it replicates exactly is taken: ``RealNVP`` (normal or Student-t base, any
activation of ``ACTIVATIONS``, with or without ActNorm) or a ``FlowMixture`` of RealNVPs of
one architecture, on the CPU, with ``log_prob`` / ``inverse`` / ``base_log_prob`` not
overridden (tests wrap ``log_prob`` to inject NaN). Anything else (FFJORD, CUDA, mixed
architectures) returns None from :meth:`FastRealNVP.build`: the caller uses torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.special import erf, expit, gammaln

from flowmodels.base import LOG_2PI, Flow
from flowmodels.mixture import FlowMixture
from flowmodels.realnvp import ActNorm, AffineCoupling, RealNVP

SMALL_BATCH_ROWS = 16  # largest batch given to the NumPy path (measured, see above)
SQRT_HALF = math.sqrt(0.5)

# The methods this module replicates, as defined when it was imported: a flow whose class or
# instance has another one (a subclass, a test's wrapper) is scored by torch.
_REPLICATED = {
    "log_prob": Flow.log_prob,
    "inverse": RealNVP.inverse,
    "base_log_prob": RealNVP.base_log_prob,
}
_MIXTURE_LOG_PROB = FlowMixture.log_prob


def _activation(name: str, h: NDArray[np.float64]) -> NDArray[np.float64]:
    """``ACTIVATIONS[name]`` in place on ``h``; ``gelu`` is ``2 * nn.GELU()`` (exact, erf),
    the 1/2 being folded into the next layer's weights (exact: a power of two)."""
    if name == "gelu":
        g = np.multiply(h, SQRT_HALF)
        erf(g, out=g)
        g += 1.0
        h *= g
    elif name == "relu":
        np.maximum(h, 0.0, out=h)
    elif name == "tanh":
        np.tanh(h, out=h)
    elif name == "silu":
        h *= expit(h)  # x * sigmoid(x): no overflow warning for very negative x
    else:  # pragma: no cover - build() refuses unknown activations
        raise ValueError(name)
    return h


@dataclass(frozen=True)
class _Coupling:
    """One coupling layer (and the ActNorm before it) of every member, stacked on axis 0.

    Points are columns here, ``(k, dim, n)``, so that a gather of features is one fancy index
    whatever ``n`` and every layer is ``W @ h + b``.

    Arguments:
        actnorm_bias: ``(k, dim, 1)`` ActNorm bias, or None without ActNorm.
        actnorm_factor: ``(k, dim, 1)`` ActNorm ``exp(-log_scale)``.
        conditioning: ``(k, n_a)`` features the coupling conditions on (mask 1).
        transformed: ``(k, n_u)`` features it scales and shifts (mask 0).
        weights: per linear layer ``(k, out, in)``: the first one's columns only for the
            conditioning features, the last one's rows only for the transformed features'
            raw scales (divided by the bound) then their shifts.
        biases: per linear layer ``(k, out, 1)``, matching ``weights``.
    """

    actnorm_bias: NDArray[np.float64] | None
    actnorm_factor: NDArray[np.float64] | None
    conditioning: NDArray[np.intp]
    transformed: NDArray[np.intp]
    weights: list[NDArray[np.float64]]
    biases: list[NDArray[np.float64]]


def _as64(tensors: list[torch.Tensor]) -> NDArray[np.float64]:
    """The members' copies of one tensor, stacked as float64 on axis 0."""
    return np.stack([t.detach().cpu().numpy().astype(np.float64) for t in tensors])


class FastRealNVP:
    """``log_prob`` of a RealNVP or a mixture of RealNVPs in float64 NumPy.

    Built once from the weights (:meth:`build`), a copy of them: whether it still matches the
    flow is :class:`~pipelines.model.evaluators.FlowEvaluators`' question.

    Arguments:
        flow: the RealNVP, or the FlowMixture of RealNVPs (see :meth:`supports`).
    """

    def __init__(self, flow: RealNVP | FlowMixture) -> None:
        members = ([cast(RealNVP, m) for m in flow.members()] if isinstance(flow, FlowMixture)
                   else [flow])
        config = members[0].config()
        self.dim = flow.dim
        self.activation = config["activation"]
        self.bound = float(config["log_scale_bound"])
        self.k = len(members)
        self.member_index = np.arange(self.k)[:, None]  # (k, 1): pairs with (k, n_features)
        self.couplings = [self._stack_coupling(position, members)
                          for position, layer in enumerate(members[0].steps())
                          if isinstance(layer, AffineCoupling)]
        # Every ActNorm's log-determinant is a constant: their sum per member, (k, 1).
        self.actnorm_log_det = np.zeros((self.k, 1))
        for layer_index, layer in enumerate(members[0].steps()):
            if isinstance(layer, ActNorm):
                log_scale = _as64([cast(ActNorm, m.steps()[layer_index]).log_scale
                                   for m in members])
                self.actnorm_log_det -= log_scale.sum(axis=1, keepdims=True)
        self.student_df: NDArray[np.float64] | None = None
        self.student_norm: NDArray[np.float64] | None = None
        if config["base"] == "student":
            df = np.exp(_as64([m.log_df for m in members if m.log_df is not None]))[:, :, None]
            self.student_df = df
            # torch.distributions.StudentT(df).log_prob's normaliser, loc 0 and scale 1
            self.student_norm = (0.5 * np.log(df) + 0.5 * math.log(math.pi)
                                 + gammaln(0.5 * df) - gammaln(0.5 * (df + 1.0)))

    @staticmethod
    def supports(flow: torch.nn.Module) -> bool:
        """Whether :class:`FastRealNVP` replicates ``flow.log_prob`` (see the module docstring).

        Arguments:
            flow: the detector's flow.
        """
        if type(flow) is FlowMixture:
            if FlowMixture.log_prob is not _MIXTURE_LOG_PROB or "log_prob" in vars(flow):
                return False
            candidates = list(flow.components)
        else:
            candidates = [flow]
        members = [m for m in candidates if type(m) is RealNVP]
        if len(members) != len(candidates):
            return False
        if any(getattr(RealNVP, name) is not function or name in vars(m)
               for m in members for name, function in _REPLICATED.items()):
            return False
        configs = [m.config() for m in members]
        parameter = next(members[0].parameters())
        return all(c == configs[0] for c in configs) and parameter.device.type == "cpu"

    @classmethod
    def build(cls, flow: torch.nn.Module) -> FastRealNVP | None:
        """The evaluator of ``flow``, or None where :meth:`supports` says no.

        Arguments:
            flow: the detector's flow.
        """
        return cls(flow) if cls.supports(flow) else None  # type: ignore[arg-type]

    def _stack_coupling(self, position: int, members: list[RealNVP]) -> _Coupling:
        """The members' coupling at ``position`` of their layers, with the ActNorm before it.

        Arguments:
            position: the coupling's index in ``RealNVP.layers``.
            members: the flows (one architecture, so a coupling's masks have as many ones in
                every member).
        """
        couplings = [cast(AffineCoupling, m.steps()[position]) for m in members]
        bias = factor = None
        if position and isinstance(members[0].steps()[position - 1], ActNorm):
            norms = [cast(ActNorm, m.steps()[position - 1]) for m in members]
            bias = _as64([n.bias for n in norms])[:, :, None]
            factor = np.exp(-_as64([n.log_scale for n in norms]))[:, :, None]
        masks = [c.mask.detach().cpu().numpy() for c in couplings]
        conditioning = np.stack([np.flatnonzero(m == 1) for m in masks])
        transformed = np.stack([np.flatnonzero(m == 0) for m in masks])
        linears = [[layer for layer in c.net if isinstance(layer, torch.nn.Linear)]
                   for c in couplings]
        weights = [_as64([member[i].weight for member in linears])
                   for i in range(len(linears[0]))]  # (k, out, in)
        biases = [_as64([member[i].bias for member in linears])[:, :, None]
                  for i in range(len(linears[0]))]
        weights[0] = np.take_along_axis(weights[0], conditioning[:, None, :], axis=2)
        if self.activation == "gelu":  # _activation returns 2 * gelu
            weights[1:] = [w * 0.5 for w in weights[1:]]
        rows = np.concatenate([transformed, transformed + self.dim], axis=1)  # scales, shifts
        weights[-1] = np.take_along_axis(weights[-1], rows[:, :, None], axis=1)
        biases[-1] = np.take_along_axis(biases[-1], rows[:, :, None], axis=1)
        n_u = transformed.shape[1]
        weights[-1][:, :n_u] /= self.bound  # log_scale = bound * tanh(raw / bound)
        biases[-1][:, :n_u] /= self.bound
        return _Coupling(bias, factor, conditioning, transformed, weights, biases)

    def log_prob(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """Exact log-density of each row of ``x`` in nats, shape ``(n,)``: what ``log_prob``
        of the flow gives for ``torch.as_tensor(x)``, up to torch's float32 rounding.

        Arguments:
            x: ``(n, dim)`` float32 records (as the torch path sees them).
        """
        return self.mixture(self.component_log_probs(x))

    @staticmethod
    def mixture(per_member: NDArray[np.float64]) -> NDArray[np.float64]:
        """The equal-weight mixture's log-density from its members' ``(k, n)``, as
        :meth:`log_prob` computes it.

        Arguments:
            per_member: :meth:`component_log_probs`.
        """
        if len(per_member) == 1:
            return per_member[0]
        return _logsumexp(per_member) - math.log(len(per_member))

    def component_log_probs(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """Each member's log-density of each row of ``x``, ``(members, n)``: what
        ``component_log_probs`` of a mixture gives (a single flow: one row).

        Arguments:
            x: ``(n, dim)`` float32 records (as the torch path sees them).
        """
        # (k, dim, n): each member's copy of the points, as columns
        z = np.broadcast_to(x.T.astype(np.float64), (self.k, *x.T.shape)).copy()
        log_det = np.broadcast_to(self.actnorm_log_det, (self.k, len(x))).copy()
        member = self.member_index
        for c in self.couplings:
            if c.actnorm_bias is not None and c.actnorm_factor is not None:
                z -= c.actnorm_bias
                z *= c.actnorm_factor
            h = z[member, c.conditioning]  # (k, n_a, n)
            for w, b in zip(c.weights[:-1], c.biases[:-1], strict=True):
                h = np.matmul(w, h)
                h += b
                _activation(self.activation, h)
            out = np.matmul(c.weights[-1], h)
            out += c.biases[-1]
            n_u = c.transformed.shape[1]
            log_scale = np.tanh(out[:, :n_u])
            log_scale *= self.bound
            log_det += log_scale.sum(axis=1)
            moved = z[member, c.transformed]
            moved *= np.exp(log_scale)
            moved += out[:, n_u:]
            z[member, c.transformed] = moved
        return self._base_log_prob(z) + log_det  # (k, n)

    def _base_log_prob(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        """The base density of ``(k, dim, n)`` points, per member and point ``(k, n)``."""
        if self.student_df is None or self.student_norm is None:
            return -0.5 * (np.square(z).sum(axis=1) + self.dim * LOG_2PI)
        df = self.student_df
        return (-0.5 * (df + 1.0) * np.log1p(np.square(z) / df) - self.student_norm).sum(axis=1)


def _logsumexp(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """``log(sum(exp(a), axis=0))``, -inf where every entry is -inf (as torch.logsumexp)."""
    top = a.max(axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - safe).sum(axis=0)) + safe
