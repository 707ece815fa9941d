"""Inference-only RealNVP: a trained RealNVP's (or an equal-weight mixture of RealNVPs') exact
log-density, computed with fewer operations, and bit for bit the same whatever batch a row
arrives in.

Why a second evaluator of the same function: scoring is most of what a deployed flow does, and
the training module spends work a trained one does not need. Its couplings multiply the masked
half of every input by zero and compute scales and shifts for features they leave unchanged;
each ActNorm is three operations. Here each coupling's first layer reads only the features it
conditions on and its last layer writes only the transformed features' log-scales and shifts
(the same products, without the terms that are zero by construction); the state is kept as
``[conditioning | transformed]`` so that both halves are slices, permuted (one gather) only
where the next coupling's mask differs; each ActNorm is one ``addcmul`` (scale and shift
permuted to the state's order); activations run in place.

Batch invariance (the *determinism* contract, docs/design.md): a row's score must not depend on
the rows scored with it. Dense matrix products of 1 to 3 rows take other kernels than larger
batches do and round differently, so batches smaller than :data:`MIN_ROWS` are padded with
zero rows. Every other operation here works row by row. ``tests/flowmodels/test_frozen.py``
checks bit equality across batch sizes on the CPU for ReLU flows with a normal base (the
default). Elementwise transcendental functions have vectorised and scalar kernels that can
round differently, and which one an entry meets depends on the tensor's shape: one SiLU flow
with a Student-t base was seen to differ in the last bit in 1 of ~100 batches. CUDA kernels give
no bitwise promise (its scores match the CPU's within the contract's 1e-4 nats).

Exactness (the *exact likelihood* contract): the same function of the same float32 weights as
:meth:`RealNVP.log_prob <flowmodels.realnvp.RealNVP.log_prob>`; the two differ by float32
rounding only (tested within 1e-4 nats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from flowmodels.base import LOG_2PI
from flowmodels.mixture import FlowMixture
from flowmodels.realnvp import ActNorm, AffineCoupling, RealNVP

# Fewest rows given to a matrix product: 1-3 rows take other kernels (measured with torch 2.13
# on the CPU, oneDNN/MKL); from 7 rows on a row's result no longer depends on the batch.
MIN_ROWS = 8


def _activation(name: str, h: Tensor) -> Tensor:
    """``ACTIVATIONS[name]`` of the training module, in place where torch has it."""
    if name == "relu":
        return h.relu_()
    if name == "tanh":
        return h.tanh_()
    if name == "silu":
        return functional.silu(h, inplace=True)
    if name == "gelu":
        return functional.gelu(h)
    raise ValueError(f"no frozen form of the activation {name!r}")


class _FrozenCoupling(nn.Module):
    """One coupling (and the ActNorm before it) of one flow, on the state ``[conditioning |
    transformed]``.

    Arguments:
        coupling: the trained coupling.
        norm: the ActNorm before it, or None.
        order: the state's features (indices of the flow's input) before this coupling.
    """

    gather: Tensor | None  # buffers
    norm_scale: Tensor | None
    norm_shift: Tensor | None

    def __init__(self, coupling: AffineCoupling, norm: ActNorm | None, order: Tensor) -> None:
        super().__init__()
        mask = coupling.mask.detach().cpu()
        conditioning = torch.nonzero(mask == 1).flatten()
        transformed = torch.nonzero(mask == 0).flatten()
        self.n_conditioning = len(conditioning)
        self.order = torch.cat([conditioning, transformed])
        # state column j before this coupling holds feature order[j]; after the gather it holds
        # self.order[j], taken from the old column where order == self.order[j]
        gather = torch.argsort(order)[self.order]
        self.register_buffer("gather", None if torch.equal(gather, torch.arange(len(order)))
                             else gather)
        self.register_buffer("norm_scale", None)
        self.register_buffer("norm_shift", None)
        self.norm_log_det = 0.0
        if norm is not None:
            log_scale = norm.log_scale.detach()[self.order]
            scale = torch.exp(-log_scale)
            self.norm_scale, self.norm_shift = scale, -norm.bias.detach()[self.order] * scale
            self.norm_log_det = -float(norm.log_scale.detach().double().sum())
        linears = [layer for layer in coupling.net if isinstance(layer, nn.Linear)]
        self.bound = coupling.log_scale_bound
        dim = len(mask)
        weights = [layer.weight.detach() for layer in linears]
        biases = [layer.bias.detach() for layer in linears]
        weights[0] = weights[0][:, conditioning]
        # log-scales of the transformed features (pre-divided by the bound: log_scale =
        # bound * tanh(raw / bound)), then their shifts
        rows = torch.cat([transformed, transformed + dim])
        last_weight, last_bias = weights[-1][rows].clone(), biases[-1][rows].clone()
        last_weight[: len(transformed)] /= self.bound
        last_bias[: len(transformed)] /= self.bound
        weights[-1], biases[-1] = last_weight, last_bias
        # The last layer as two, log-scales and shifts, so that tanh and exp run on contiguous
        # rows (20% of the time at 4096 rows); not for one output: a product with one column
        # takes another kernel, whose rounding depends on the rows.
        n_moved = len(transformed)
        self.split_last = n_moved > 1
        if self.split_last:
            weights[-1:] = [weights[-1][:n_moved], weights[-1][n_moved:]]
            biases[-1:] = [biases[-1][:n_moved], biases[-1][n_moved:]]
        for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            self.register_buffer(f"weight{i}", weight.t().contiguous())  # (in, out) for addmm
            self.register_buffer(f"bias{i}", bias.contiguous())
        self.n_linear = len(linears)

    def forward(self, z: Tensor, activation: str) -> tuple[Tensor, Tensor]:
        """The state after this coupling, and the sum of its ``tanh`` (log-scale / bound)."""
        if self.gather is not None:
            z = z.index_select(1, self.gather)
        if self.norm_scale is not None and self.norm_shift is not None:
            z = torch.addcmul(self.norm_shift, z, self.norm_scale)
        conditioning, moved = z[:, : self.n_conditioning], z[:, self.n_conditioning :]
        h = conditioning
        for i in range(self.n_linear - 1):
            h = torch.addmm(getattr(self, f"bias{i}"), h, getattr(self, f"weight{i}"))
            h = _activation(activation, h)
        last = self.n_linear - 1
        out = torch.addmm(getattr(self, f"bias{last}"), h, getattr(self, f"weight{last}"))
        if self.split_last:
            shift = torch.addmm(getattr(self, f"bias{last + 1}"), h,
                                getattr(self, f"weight{last + 1}"))
        else:
            out, shift = out[:, :1], out[:, 1:]
        tanh = out.tanh_()
        tanh_sum = tanh.sum(dim=1)
        moved = torch.addcmul(shift, moved, tanh.mul_(self.bound).exp_())
        return torch.cat([conditioning, moved], dim=1), tanh_sum


class _FrozenFlow(nn.Module):
    """One RealNVP, frozen.

    Arguments:
        flow: the trained RealNVP (its ``log_prob``, ``inverse`` and ``base_log_prob`` those of
            the class: a subclass that changes them has no frozen form).
    """

    def __init__(self, flow: RealNVP) -> None:
        super().__init__()
        if type(flow) is not RealNVP:
            raise TypeError(f"no frozen form of {type(flow).__name__}: only RealNVP's")
        config = flow.config()
        self.activation = config["activation"]
        self.dim = flow.dim
        order = torch.arange(flow.dim)
        couplings: list[_FrozenCoupling] = []
        norm: ActNorm | None = None
        for layer in flow.layers:
            if isinstance(layer, ActNorm):
                norm = layer
            elif isinstance(layer, AffineCoupling):
                couplings.append(_FrozenCoupling(layer, norm, order))
                order, norm = couplings[-1].order, None
            else:
                raise TypeError(f"no frozen form of the layer {type(layer).__name__}")
        self.couplings = nn.ModuleList(couplings)
        self.bounds = [coupling.bound for coupling in couplings]
        self.log_det = sum(coupling.norm_log_det for coupling in couplings)
        self.register_buffer("student_df", None)
        if flow.log_df is not None:
            self.student_df = flow.log_df.detach().exp()[order]

    def forward(self, x: Tensor) -> Tensor:
        """Exact log-density of each row of ``x`` (at least :data:`MIN_ROWS` rows)."""
        z = x
        log_det = x.new_full((len(x),), self.log_det)
        for coupling, bound in zip(self.couplings, self.bounds, strict=True):
            z, tanh_sum = coupling(z, self.activation)
            log_det.add_(tanh_sum, alpha=bound)
        if self.student_df is None:
            base = z.square().sum(dim=1).add_(self.dim * LOG_2PI).mul_(-0.5)
        else:  # torch.distributions.StudentT(df).log_prob, loc 0 and scale 1, summed
            df = self.student_df
            norm = (0.5 * torch.log(df) + 0.5 * math.log(math.pi) + torch.lgamma(0.5 * df)
                    - torch.lgamma(0.5 * (df + 1.0)))
            base = (-0.5 * (df + 1.0) * torch.log1p(z.square() / df) - norm).sum(dim=1)
        return base.add_(log_det)


class FrozenRealNVP(nn.Module):
    """The exact log-density of a trained RealNVP, or of an equal-weight mixture of RealNVPs,
    for scoring only (no gradients, no sampling).

    Arguments:
        flows: the trained flows (one, or a mixture's components), in eval mode.

    Raises:
        TypeError: a flow that is not a plain :class:`~flowmodels.realnvp.RealNVP`.
    """

    def __init__(self, flows: Sequence[RealNVP]) -> None:
        super().__init__()
        if not flows:
            raise ValueError("nothing to freeze: no flows")
        self.members = nn.ModuleList(_FrozenFlow(flow) for flow in flows)

    @classmethod
    def of(cls, flow: nn.Module) -> FrozenRealNVP:
        """The frozen form of a RealNVP or of a :class:`~flowmodels.mixture.FlowMixture` of
        RealNVPs, on the flow's device.

        Arguments:
            flow: the trained flow.

        Raises:
            TypeError: a flow with no frozen form (FFJORD, a subclass, a mixture of those).
        """
        members = list(flow.components) if type(flow) is FlowMixture else [flow]
        device = next(flow.parameters()).device
        with torch.no_grad():
            return cls(members).to(device).eval()  # type: ignore[arg-type]

    @torch.inference_mode()
    def component_log_probs(self, x: Tensor) -> Tensor:
        """Each flow's exact log-density of each row of ``x``, shape ``(K, n)``.

        Arguments:
            x: ``(n, dim)`` records.
        """
        n = len(x)
        if n < MIN_ROWS:
            x = torch.cat([x, x.new_zeros(MIN_ROWS - n, x.shape[1])])
        return torch.stack([member(x) for member in self.members])[:, :n]

    @torch.inference_mode()
    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of each row of ``x`` in nats, shape ``(n,)``: the mixture's
        ``log((p1 + ... + pK) / K)``, as :meth:`FlowMixture.log_prob` gives it.

        Arguments:
            x: ``(n, dim)`` records.
        """
        return FlowMixture.combine(self.component_log_probs(x))
