"""The training loop: maximum likelihood with dequantisation, early stopping and a NaN guard.

Read top to bottom: a config dataclass, the learning-rate schedule, ``estimate_nll`` under
``no_grad``, the loss, the data-parallel hook (:class:`Parallel`: one process unless
:mod:`pipelines.model.distributed` supplies one), then :func:`train_flow`, which returns the best
weights' history.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
from scipy.stats import trim1
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from flowmodels import Flow, FlowMixture
from pipelines.errors import InputError, TrainingError
from pipelines.model.separation import nll_separation

OBJECTIVES = ("likelihood", "flow_matching")
EPOCH_SELECTIONS = ("validation", "separation")


@runtime_checkable
class FlowMatching(Protocol):
    """A flow that can be trained by flow matching (FFJORD)."""

    def flow_matching_loss(self, x: Tensor, generator: torch.Generator | None = None
                           ) -> Tensor: ...


@runtime_checkable
class RegularisedFlow(Protocol):
    """A flow whose likelihood training adds regularisers (FFJORD's RNODE terms)."""

    def training_terms(self, x: Tensor, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Tensor]: ...


@dataclass
class TrainConfig:
    """Optimisation settings; :func:`default_train_config` picks them from the data size.

    Arguments:
        batch_size: rows per optimisation step.
        max_epochs: upper bound on passes over the training rows.
        max_steps: upper bound on optimiser steps (whole epochs: training stops at the end of
            the epoch that reaches it); ``None``: only ``max_epochs`` bounds it.
        learning_rate: peak Adam learning rate, reached after ``warmup_steps``.
        min_learning_rate: the cosine schedule's floor.
        warmup_steps: linear warm-up, which keeps ActNorm-initialised flows from jumping early.
        weight_decay: AdamW decoupled weight decay.
        grad_clip: maximum global gradient norm.
        patience: epochs without a validation improvement before stopping; ``None``: never
            stop early (the step budget ends training; the best epoch's weights are kept).
        noise_std: standard deviation of Gaussian noise added to every training batch (in
            encoded units), a smoothing regulariser: the flow then fits the data density
            convolved with that kernel, as a kernel density estimate does.
        ema_decay: when set, validation, early stopping and the returned weights use an
            exponential moving average of the weights with this decay per step (Polyak and
            Juditsky, "Acceleration of stochastic approximation by averaging", 1992): one flow,
            still an exact density, with less of the last steps' noise. ``None``: off.
        validation_trim: share of the worst validation rows left out of the early-stopping
            NLL. Normal data holds rare records (a level seen once in training, say) whose NLL
            can be thousands of nats; left in, they decide when to stop instead of the bulk.
            Raised to ``trim_share`` when that is larger: validation rows drawn from
            contaminated training data hold anomalies in the same share.
        trim_share: trimmed likelihood, for training data that holds anomalies: the share of
            each batch with the highest NLL (the worst-fitting rows) left out of the loss, so
            they stop pulling density towards themselves. The likelihood analogue of least
            trimmed squares (Rousseeuw, "Least median of squares regression", JASA 1984;
            Neykov and Müller, "Breakdown point and computation of trimmed likelihood
            estimators in generalized linear models", 2003), done per batch as a stochastic
            version of the concentration step. It ramps up linearly from 0 over the first
            ``trim_ramp`` of the step budget: an untrained flow fits every row badly, and
            trimming then would leave out genuine but not yet learnt parts of the data. 0: off
            (plain maximum likelihood, bit for bit). Maximum likelihood objective only; the
            recorded training NLL is then the trimmed mean.
        trim_ramp: share of the step budget over which the trimmed share rises to
            ``trim_share``.
        variance_penalty: ``lambda`` of variance-stabilised density estimation (Rozner et al.,
            "Anomaly detection with variance stabilized density estimation", UAI 2024): the
            loss adds ``lambda * Var(log p(x))`` over each batch's (kept) rows, which flattens
            the density over the normal data; the epoch kept is then the best by the same
            objective on the (trimmed) validation rows. 0: off (the plain loss bit for bit).
            Maximum likelihood objective of RealNVP only.
        epoch_selection: which epoch's weights are kept: ``"validation"`` (the lowest trimmed
            validation NLL) or ``"separation"`` (the largest label-free separation of the
            per-row training NLL, :func:`pipelines.separation.nll_separation`: the epoch at
            which the training rows split most clearly into a well-fitted bulk and the rest,
            the inlier-memorisation effect of ODIM, Kim et al., ICML 2023; for training data
            that holds anomalies).
        objective: ``"likelihood"`` (maximum likelihood) or ``"flow_matching"`` (FFJORD only:
            regress the field on straight paths from base samples to the data, no ODE solve;
            early stopping still uses the exact validation likelihood).
        kinetic_weight, jacobian_weight: RNODE regularisers (FFJORD maximum likelihood only).
        seed: seeds weight init, batching and dequantisation noise.
        progress: show a progress bar.
    """

    batch_size: int = 256
    max_epochs: int = 200
    max_steps: int | None = None
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    patience: int | None = 20
    noise_std: float = 0.0
    ema_decay: float | None = None
    validation_trim: float = 0.05
    trim_share: float = 0.0
    trim_ramp: float = 0.25
    variance_penalty: float = 0.0
    epoch_selection: str = "validation"
    objective: str = "likelihood"
    kinetic_weight: float = 0.01
    jacobian_weight: float = 0.01
    seed: int = 0
    progress: bool = True

    @property
    def effective_validation_trim(self) -> float:
        """The validation NLL's trimmed share: ``validation_trim``, at least ``trim_share``."""
        return max(self.validation_trim, self.trim_share)


def default_train_config(n_rows: int, **overrides: Any) -> TrainConfig:
    """Batch size and epoch budget scaled to the number of training rows.

    Small tables get small batches (enough steps per epoch to learn), large ones larger batches
    and fewer epochs, so the number of optimiser steps stays between about 2k and 30k.
    """
    batch_size = int(np.clip(2 ** round(math.log2(max(n_rows, 1) / 16)), 64, 1024))
    steps_per_epoch = max(1, math.ceil(n_rows / batch_size))
    max_epochs = int(np.clip(30_000 // steps_per_epoch, 20, 1000))
    config = TrainConfig(batch_size=batch_size, max_epochs=max_epochs)
    return TrainConfig(**{**asdict(config), **overrides})


@dataclass
class TrainResult:
    """What :func:`train_flow` measured: one dict per epoch, and the restored best epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_nll: float = math.inf
    recovered_nonfinite: int = 0


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_learning_rate`` (as in nanoGPT)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_learning_rate + cosine * (config.learning_rate - config.min_learning_rate)


def trimmed_share(step: int, total_steps: int, config: TrainConfig) -> float:
    """The share of the batch left out of the loss at ``step``: 0 at the start, rising linearly
    to ``trim_share`` over the first ``trim_ramp`` of ``total_steps``, then constant."""
    ramp_steps = config.trim_ramp * total_steps
    if config.trim_share <= 0 or ramp_steps <= 0:
        return config.trim_share
    return config.trim_share * min(1.0, step / ramp_steps)


def _best_fitting(log_prob: Tensor, trim: float) -> Tensor | slice:
    """The rows kept by a trimmed loss: all but the ``floor(trim * n)`` of lowest likelihood
    (chosen without gradient: a step fits the kept rows only)."""
    n_out = math.floor(trim * len(log_prob))
    if n_out == 0:
        return slice(None)  # every row, in order: the untrimmed loss bit for bit
    return torch.topk(log_prob.detach(), len(log_prob) - n_out, sorted=False).indices


@torch.no_grad()
def per_row_nll(flow: Flow | FlowMixture, x: Tensor, batch_size: int = 8192) -> np.ndarray:
    """Each row's NLL under ``flow`` (eval mode; the caller's mode is restored).

    Arguments:
        flow: the model.
        x: encoded rows.
        batch_size: rows per forward pass.
    """
    was_training = flow.training
    flow.eval()
    nll = torch.cat([-flow.log_prob(x[start : start + batch_size])
                     for start in range(0, len(x), batch_size)])
    flow.train(was_training)
    return nll.double().cpu().numpy()


@torch.no_grad()
def estimate_nll(
    flow: Flow | FlowMixture,
    x: Tensor,
    log_jacobian: Tensor,
    *,
    trim: float = 0.0,
    batch_size: int = 8192,
) -> float:
    """Mean negative log-likelihood (nats per row, in the units of the raw data).

    ``trim`` leaves out that share of the highest per-row NLLs (a one-sided trimmed mean).
    """
    flow.eval()
    nll = torch.cat([
        -(flow.log_prob(x[start : start + batch_size]) + log_jacobian[start : start + batch_size])
        for start in range(0, len(x), batch_size)
    ])
    return float(np.mean(trim1(nll.double().cpu().numpy(), trim, tail="right")))


def training_loss(flow: Flow, batch: Tensor, config: TrainConfig,
                  generator: torch.Generator | None = None, trim: float = 0.0) -> Tensor:
    """Negative log-likelihood, plus the RNODE regularisers for flows that have them; or the
    flow-matching loss.

    Arguments:
        flow: the model being trained.
        batch: the (dequantised) training rows.
        config: the objective and regulariser weights.
        generator: the source of the loss's own draws (Hutchinson probes, flow-matching times).
        trim: share of the rows with the lowest likelihood left out of every term (a trimmed
            likelihood, :func:`trimmed_share`).
    """
    if config.objective == "flow_matching" and isinstance(flow, FlowMatching):
        return flow.flow_matching_loss(batch, generator).mean()
    if isinstance(flow, RegularisedFlow):  # RNODE's terms
        log_prob, kinetic, jacobian = flow.training_terms(batch, generator)
        keep = _best_fitting(log_prob, trim)
        return (
            -log_prob[keep].mean()
            + config.kinetic_weight * kinetic[keep].mean()
            + config.jacobian_weight * jacobian[keep].mean()
        )
    kept = flow.log_prob(batch)
    kept = kept[_best_fitting(kept, trim)]
    if config.variance_penalty > 0:
        return -kept.mean() + config.variance_penalty * kept.var()
    return -kept.mean()


class TrainingLoss(torch.nn.Module):
    """:func:`training_loss` as a module's ``forward``: what ``DistributedDataParallel`` wraps
    (it averages the gradients of what runs through ``forward``; a flow's ``log_prob`` is not
    its ``forward``).

    Arguments:
        flow: the model being trained.
        config: the objective and regulariser weights.
    """

    def __init__(self, flow: Flow, config: TrainConfig) -> None:
        super().__init__()
        self.flow, self.config = flow, config

    def forward(self, batch: Tensor, generator: torch.Generator | None = None,
                trim: float = 0.0) -> Tensor:
        return training_loss(self.flow, batch, self.config, generator, trim)


class Parallel:
    """How one training process shares the work with the others: here, alone.

    :class:`pipelines.model.distributed.DataParallel` overrides these for data-parallel training, in
    which every process runs the same loop on its own shard of each epoch's rows.
    """

    rank: int = 0
    world_size: int = 1

    def wrap(self, loss: TrainingLoss) -> torch.nn.Module:
        """The module whose ``forward`` gives the loss to minimise."""
        return loss

    def shard(self, order: Tensor) -> Tensor:
        """This process's rows of an epoch's permutation of all training rows."""
        return order

    def mean(self, value: Tensor) -> float:
        """``value`` averaged over the processes (the same number in each)."""
        return float(value)

    def broadcast(self, module: torch.nn.Module) -> None:
        """Makes every process's weights those of the first."""


def train_flow(
    flow: Flow,
    train_lower: Tensor,
    dequantization_width: Tensor,
    val_x: Tensor,
    val_log_jacobian: Tensor,
    config: TrainConfig,
    train_log_jacobian_mean: float = 0.0,
    parallel: Parallel | None = None,
) -> TrainResult:
    """Trains ``flow`` in place and leaves it in eval mode with the best validation weights.

    Arguments:
        flow: the model, already on the target device.
        train_lower: encoded training rows, discrete coordinates at their cell's lower corner.
        dequantization_width: cell widths, per feature ``(d,)`` or per entry ``(n, d)`` (0 for
            continuous values); each step adds fresh ``U(0, width)`` noise, i.e. uniform
            dequantisation.
        val_x, val_log_jacobian: encoded validation rows (cell midpoints) and the encoder's
            per-row log-Jacobian, so the validation NLL is in raw-data units.
        config: see :class:`TrainConfig`.
        train_log_jacobian_mean: the encoder's mean log-Jacobian on the training rows, which
            puts the recorded training NLL in the same raw-data units as the validation NLL.
        parallel: data-parallel training (:mod:`pipelines.model.distributed`); None: one process.
            Each process then takes ``batch_size / world_size`` rows of its shard per step, so
            a step still averages the gradient over ``batch_size`` rows.
    """
    if config.objective not in OBJECTIVES:
        raise InputError(f"unknown objective {config.objective!r}; choose one of {OBJECTIVES}")
    if config.objective == "flow_matching" and not isinstance(flow, FlowMatching):
        raise InputError(f"{type(flow).__name__} cannot be trained by flow matching (FFJORD can)")
    if not 0 <= config.trim_share < 1:
        raise InputError(f"trim_share must be in [0, 1), not {config.trim_share}")
    if config.trim_share > 0 and config.objective != "likelihood":
        raise InputError("trim_share trims a likelihood: it needs objective='likelihood'")
    if config.epoch_selection not in EPOCH_SELECTIONS:
        raise InputError(f"unknown epoch_selection {config.epoch_selection!r}; choose one of "
                         f"{EPOCH_SELECTIONS}")
    generator = torch.Generator(device=train_lower.device).manual_seed(config.seed)
    # fused: one kernel for all parameters; a step of the default flow costs 25% less on CPU.
    parameters = list(flow.parameters())  # once: walking the modules each step costs 10%
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )
    parallel = parallel or Parallel()
    model = parallel.wrap(TrainingLoss(flow, config))
    n = len(train_lower)
    batch_size = max(1, min(config.batch_size, n) // parallel.world_size)
    steps_per_epoch = max(1, n // parallel.world_size // batch_size)
    total_steps = steps_per_epoch * config.max_epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    result = TrainResult()
    best_criterion = math.inf
    if config.epoch_selection == "separation":  # each training row at its cell's centre
        train_midpoints = train_lower + dequantization_width / 2
    best_state = copy.deepcopy(flow.state_dict())
    epochs_without_improvement = 0
    consecutive_failures = 0
    lr_scale = 1.0  # halved after each non-finite loss
    step = 0
    average: AveragedModel | None = None  # created after the first step (ActNorm initialised)

    bar = tqdm(range(config.max_epochs), desc="training", unit="epoch",
               disable=not config.progress or parallel.rank > 0)
    for epoch in bar:
        flow.train()
        # the same permutation in every process (one seed), each taking its shard of it
        order = parallel.shard(torch.randperm(n, generator=generator, device=train_lower.device))
        epoch_loss, epoch_batches = 0.0, 0
        for i in range(steps_per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            noise = torch.rand(
                len(index), train_lower.shape[1], generator=generator, device=train_lower.device
            )
            width = dequantization_width
            if width.dim() == 2:  # per-entry widths (atoms of continuous columns)
                width = width[index]
            batch = train_lower[index] + noise * width
            if config.noise_std > 0:
                batch = batch + config.noise_std * torch.randn(
                    batch.shape, generator=generator, device=batch.device
                )
            for group in optimizer.param_groups:
                group["lr"] = lr_scale * learning_rate(step, total_steps, config)
            loss = model(batch, generator, trim=trimmed_share(step, total_steps, config))
            mean_loss = parallel.mean(loss.detach())  # so that every process decides alike
            if not math.isfinite(mean_loss):
                # Recover: go back to the best weights, halve the step size and carry on.
                consecutive_failures += 1
                result.recovered_nonfinite += 1
                if consecutive_failures > 5:
                    raise TrainingError(f"non-finite loss {consecutive_failures} times in a row")
                flow.load_state_dict(best_state)
                optimizer.state.clear()
                lr_scale /= 2
                continue
            consecutive_failures = 0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip, foreach=True)
            optimizer.step()
            if step == 0:  # ActNorm initialised itself from each process's own first batch
                parallel.broadcast(flow)
            if config.ema_decay is not None:
                if average is None:
                    average = AveragedModel(
                        flow, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay)
                    )
                average.update_parameters(flow)
            epoch_loss += mean_loss
            epoch_batches += 1
            step += 1

        evaluated = flow if average is None else cast(Flow, average.module)
        val_nll = parallel.mean(torch.tensor(
            estimate_nll(evaluated, val_x, val_log_jacobian,
                         trim=config.effective_validation_trim),
            dtype=torch.float64))
        train_nll = epoch_loss / max(1, epoch_batches) - train_log_jacobian_mean
        result.history.append(
            {"epoch": epoch, "train_nll": train_nll, "val_nll": val_nll, "step": step}
        )
        bar.set_postfix(train_nll=f"{train_nll:.3f}", val_nll=f"{val_nll:.3f}")
        # The criterion to minimise: the validation NLL (plus the variance penalty, so that
        # the epoch kept is the best by the objective trained), or minus the training NLL's
        # separation.
        criterion = val_nll
        if config.variance_penalty > 0:
            kept = trim1(per_row_nll(evaluated, val_x), config.effective_validation_trim,
                         tail="right")
            criterion += config.variance_penalty * float(np.var(kept, ddof=1))
            result.history[-1]["val_variance"] = float(np.var(kept, ddof=1))
        if config.epoch_selection == "separation":
            criterion = -nll_separation(per_row_nll(evaluated, train_midpoints), config.seed)
            result.history[-1]["separation"] = -criterion
        if math.isfinite(criterion) and criterion < best_criterion - 1e-4:
            best_criterion, result.best_epoch = criterion, epoch
            result.best_val_nll = val_nll
            best_state = copy.deepcopy(evaluated.state_dict())
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            if config.patience is not None and epochs_without_improvement >= config.patience:
                break
        if step >= total_steps:
            break
    bar.close()
    flow.load_state_dict(best_state)
    flow.eval()
    return result
