"""RealNVP: a stack of affine coupling layers.

Reference: Dinh, Sohl-Dickstein and Bengio, "Density estimation using Real NVP", ICLR 2017.
Student-t base: Jaini, Kobyzev, Yu and Brubaker, "Tails of Lipschitz triangular flows",
ICML 2020 (an affine-coupling flow keeps the tails of its base, so heavy-tailed data needs a
heavy-tailed base).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributions import StudentT

from flowmodels.base import Flow, linear

# Conditioner activations by name. GELU (exact, erf-based) was ~30% of RealNVP's scoring time
# on CPU; ReLU and tanh cost a fraction of that.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU,
}


def student_t_sample(df: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of independent Student-t coordinates with degrees of freedom ``df`` (one
    per coordinate), from uniforms only, so that a ``generator`` can drive them
    (``torch.distributions.StudentT`` draws gammas from the global RNG).

    Bailey's polar method (Bailey, "Polar generation of random variates with the
    t-distribution", Mathematics of Computation 1994): ``(u, v)`` uniform on the unit disc,
    ``w = u^2 + v^2``, then ``u * sqrt(df (w^(-2/df) - 1) / w)`` is exactly t-distributed.

    Arguments:
        df: ``(dim,)`` positive degrees of freedom.
        n: the number of rows.
        generator: the source of the uniforms (None: the global RNG).
    """
    shape = (n, len(df))
    out = torch.empty(shape, dtype=df.dtype, device=df.device)
    todo = torch.ones(shape, dtype=torch.bool, device=df.device)
    while todo.any():  # each pair lands in the disc with probability pi/4
        u, v = torch.rand((2, *shape), dtype=df.dtype, device=df.device,
                          generator=generator) * 2 - 1
        w = u * u + v * v
        accept = todo & (w <= 1) & (w > 0)
        t = u * torch.sqrt(df * (w.pow(-2 / df) - 1) / w)
        out = torch.where(accept, t, out)
        todo &= ~accept
    return out


class ActNorm(nn.Module):
    """Per-feature affine map ``y = (x - bias) * exp(-log_scale)``, initialised from data.

    Reference: Kingma and Dhariwal, "Glow", NeurIPS 2018. The first batch seen in training mode
    sets bias and scale so that the output has zero mean and unit variance. Unlike BatchNorm the
    statistics are then frozen parameters, so a score never depends on the batch.

    Arguments:
        dim: the number of features.
    """

    initialized: Tensor  # a buffer

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        # A buffer, not a Python bool: a reloaded model must not re-initialise itself.
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        self.bias.copy_(x.mean(dim=0))
        std = x.std(dim=0) if len(x) > 1 else torch.ones_like(x[0])
        self.log_scale.copy_(torch.log(std.clamp_min(1e-3)))
        self.initialized.fill_(True)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            self._initialize(x)
        y = (x - self.bias) * torch.exp(-self.log_scale)
        return y, (-self.log_scale.sum()).expand(len(x))

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x = y * torch.exp(self.log_scale) + self.bias
        return x, self.log_scale.sum().expand(len(y))


# Power-iteration steps per training step of a spectrally normalised layer.
SPECTRAL_NORM_ITERATIONS = 4


class AffineCoupling(nn.Module):
    """Transforms the unmasked features with a scale and shift computed from the masked ones.

    Data -> base: ``y = x_a + (1 - m) * (x * exp(s(x_a)) + t(x_a))`` with ``x_a = m * x``. One
    network outputs both ``s`` and ``t``; ``s`` is soft-clamped to ``(-bound, bound)`` so one step
    can never scale a feature by more than ``exp(bound)``, which keeps training from blowing up.

    Arguments:
        mask: a 0/1 vector; features where it is 1 condition the others and pass unchanged.
        hidden: width of the conditioner's hidden layers.
        depth: number of hidden layers.
        log_scale_bound: the soft clamp on the log-scale.
        activation: the hidden layers' activation, a key of ``ACTIVATIONS``.
        generator: the source of the initial weights (None: the global RNG).
        spectral_norm: divide every layer's weight by its largest singular value (Miyato et
            al., ICLR 2018), so the conditioner is 1-Lipschitz (RobustRealNVP, Liu et al.,
            AAAI 2022). The output layer then starts from small random weights, not zeros
            (a zero matrix has no spectral norm to divide by).
    """

    mask: Tensor  # a buffer

    def __init__(self, mask: Tensor, hidden: int, depth: int, log_scale_bound: float,
                 activation: str = "gelu", generator: torch.Generator | None = None,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        dim = len(mask)
        self.register_buffer("mask", mask.float())
        self.log_scale_bound = log_scale_bound
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth):
            layers += [linear(width, hidden, generator), ACTIVATIONS[activation]()]
            width = hidden
        out = linear(width, 2 * dim, generator)
        # Zero output layer: every coupling starts as the identity, so training starts from
        # the (ActNorm-standardised) Gaussian instead of a random distortion of it.
        nn.init.zeros_(out.bias)
        if not spectral_norm:
            nn.init.zeros_(out.weight)
        layers.append(out)
        if spectral_norm:  # power iteration underestimates the norm while the weights move:
            # one step per update let a layer end 0.9% over 1 (SPECTRAL_NORM_ITERATIONS)
            layers = [nn.utils.parametrizations.spectral_norm(
                          layer, n_power_iterations=SPECTRAL_NORM_ITERATIONS)
                      if isinstance(layer, nn.Linear) else layer for layer in layers]
        self.net = nn.Sequential(*layers)

    def _scale_shift(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = self.net(x_a).chunk(2, dim=-1)
        bound = self.log_scale_bound
        log_scale = bound * torch.tanh(raw_scale / bound) * (1 - self.mask)
        return log_scale, shift * (1 - self.mask)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a = x * self.mask
        log_scale, shift = self._scale_shift(x_a)
        y = x_a + (1 - self.mask) * (x * torch.exp(log_scale) + shift)
        return y, log_scale.sum(dim=-1)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y_a = y * self.mask
        log_scale, shift = self._scale_shift(y_a)
        x = y_a + (1 - self.mask) * (y - shift) * torch.exp(-log_scale)
        return x, -log_scale.sum(dim=-1)


def coupling_masks(dim: int, n_layers: int,
                   generator: torch.Generator | None = None) -> list[Tensor]:
    """Random balanced masks, each followed by its complement, so every feature is transformed.

    In one dimension there is nothing to condition on: every mask is 0 and each coupling is a
    learned affine map of the single feature.

    Arguments:
        dim: the number of features.
        n_layers: the number of masks.
        generator: the source of the random halves (None: the global RNG).
    """
    masks = []
    for i in range(n_layers):
        if dim == 1:
            masks.append(torch.zeros(1))
        elif i % 2 == 0:
            mask = torch.zeros(dim)
            mask[torch.randperm(dim, generator=generator)[: dim // 2]] = 1
            masks.append(mask)
        else:
            masks.append(1 - masks[-1])
    return masks


class RealNVP(Flow):
    """RealNVP with fused scale/shift conditioners, bounded log-scales and optional ActNorm.

    Masks live in buffers, so they are part of the state_dict: a reloaded model scores exactly
    like the saved one, whatever random seed built the fresh instance.

    Arguments:
        dim: the number of features, >= 1.
        n_layers: number of coupling layers.
        hidden: width of each conditioner's hidden layers.
        depth: number of hidden layers per conditioner.
        log_scale_bound: soft clamp on every log-scale.
        actnorm: put a data-initialised ActNorm before each coupling.
        base: ``"normal"``, or ``"student"``: independent Student-t coordinates, each with
            its own learned degrees of freedom (starting at 30, close to normal).
        activation: the conditioners' activation: ``"gelu"``, ``"relu"``, ``"tanh"`` or
            ``"silu"``.
        spectral_norm: 1-Lipschitz conditioners (:class:`AffineCoupling`).
        generator: the source of the initial weights and masks (None: the global RNG); not
            part of :meth:`config`.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_layers: int = 8,
        hidden: int = 128,
        depth: int = 2,
        log_scale_bound: float = 3.0,
        actnorm: bool = True,
        base: str = "normal",
        activation: str = "gelu",
        spectral_norm: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(dim)
        if base not in ("normal", "student"):
            raise ValueError(f"base must be normal or student, got {base!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self._config = dict(
            n_layers=n_layers,
            hidden=hidden,
            depth=depth,
            log_scale_bound=log_scale_bound,
            actnorm=actnorm,
            base=base,
            activation=activation,
        )
        if spectral_norm:  # only when on: saved configs of other flows stay as they were
            self._config["spectral_norm"] = True
        self.log_df: nn.Parameter | None = None
        if base == "student":
            self.log_df = nn.Parameter(torch.full((dim,), math.log(30.0)))
        layers: list[nn.Module] = []
        for mask in coupling_masks(dim, n_layers, generator):
            if actnorm:
                layers.append(ActNorm(dim))
            layers.append(AffineCoupling(mask, hidden, depth, log_scale_bound, activation,
                                         generator, spectral_norm))
        self.layers = nn.ModuleList(layers)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def steps(self) -> list[ActNorm | AffineCoupling]:
        """``layers``, as the types they hold."""
        return [cast(ActNorm | AffineCoupling, layer) for layer in self.layers]

    def base_log_prob(self, z: Tensor) -> Tensor:
        if self.log_df is None:
            return super().base_log_prob(z)
        return StudentT(df=self.log_df.exp()).log_prob(z).sum(dim=-1)

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.log_df is None:
            return super().base_sample(n, generator)
        return student_t_sample(self.log_df.exp().detach(), n, generator)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(len(x))
        for layer in self.steps():
            x, layer_log_det = layer.inverse(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = z.new_zeros(len(z))
        for layer in reversed(self.steps()):
            z, layer_log_det = layer(z)
            log_det = log_det + layer_log_det
        return z, log_det
