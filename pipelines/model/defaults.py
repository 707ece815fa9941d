"""The detector's defaults: the thresholding rule, and the flow and its training scaled to the
data.

Each default was chosen on the development datasets by a rule written before the candidates
ran (docs/design.md, "Evaluation protocol"); the measurements behind them are in
benchmarks/README.md ("RealNVP, default configuration: a fast default"), not here, so that
they are kept in one place.
"""

from __future__ import annotations

from typing import Any

DEFAULT_TARGET_FPR = 0.01
CALIBRATIONS = ("auto", "split", "cross")
# Training rows from which RealNVP gets wider and deeper flows (a rule not measured: large
# tables are rare in the benchmark).
LARGE_TABLE_ROWS = 200_000


def default_flow_options(model: str, n_rows: int) -> dict[str, Any]:
    """Architecture scaled to the data: wider and deeper only when there are rows to fit it.

    RealNVP is an equal-weight mixture of two flows trained with different seeds on the same
    split (``members``), each of 6 couplings with one hidden layer of 128 ReLU units: among the
    fast candidates it had the lowest validation NLL, the evidence the choice rests on. FFJORD
    stays one flow.

    Arguments:
        model: ``"realnvp"`` or ``"ffjord"``.
        n_rows: the training rows.
    """
    if model == "realnvp":
        large = n_rows >= LARGE_TABLE_ROWS
        return {"n_layers": 8 if large else 6, "hidden": 256 if large else 128, "depth": 1,
                "activation": "relu", "members": 2}
    return {}


def default_train_options(model: str) -> dict[str, Any]:
    """Training overrides of :func:`~pipelines.model.training.default_train_config` per model.

    RealNVP: 30 epochs (at most 3000 steps) at a peak learning rate of 2e-2 after 30 warm-up
    steps; the cosine schedule runs to its end and the weights of the best validation epoch
    are kept (no early stop: stopping at a high learning rate cost validation NLL). Of the
    candidates that fit ``6_cardio`` within 30x an IsolationForest fit it had the lowest
    validation NLL. FFJORD: the generic budget.

    Arguments:
        model: ``"realnvp"`` or ``"ffjord"``.
    """
    if model == "realnvp":
        return {"max_epochs": 30, "max_steps": 3000, "learning_rate": 2e-2, "warmup_steps": 30,
                "patience": None}
    return {}
