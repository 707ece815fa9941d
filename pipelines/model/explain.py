"""Why a record scores high: each input column's contribution to its anomaly score ``-log p``.

A contribution is a Shapley value (Shapley, "A value for n-person games", 1953) of the game whose
players are the record's input columns and whose payoff for a set ``S`` of them is the score of
the *hybrid* record that takes the columns in ``S`` from the record and the others from the
reference record (:func:`reference_record`): "baseline Shapley" in the terms of Sundararajan and
Najmi, "The many Shapley values for model explanation", ICML 2020. Column ``j``'s contribution
is its average marginal effect ``score(S + j) - score(S)`` over orderings of the columns, so

* the contributions of a record sum to ``score(record) - score(reference)`` (completeness):
  every ordering telescopes to that difference, so the sum is exact up to float32 rounding,
  however few orderings are sampled;
* a column holding the reference's value contributes 0 (it changes no hybrid), and for a
  density that factorises over columns each column contributes exactly its own factor's change;
* a categorical column's one-hot slots and a numeric column's missing indicator move together
  with their column, so every hybrid is a record the encoder could have produced (discrete
  values stay at their cells' midpoints, where they are scored).

The hybrids are formed in the encoded space (the encoder maps each column on its own) and scored
by the flow; the encoder's log-Jacobian is a sum of per-column terms
(:func:`~pipelines.tabular.columnwise.column_log_jacobians`), whose Shapley values are each
column's own change, added exactly. Orderings are sampled (Castro, Gomez and Tejada, "Polynomial
calculation of the Shapley value based on sampling", 2009) in antithetic pairs from a fixed seed
(:func:`_orderings`), so a record gets the same explanation every time, whatever batch it is in.
Cost: ``n_samples * (columns + 1)`` flow evaluations per record, forward only, all of a batch in
one flow call. ``tests/model/test_explain.py`` checks the result against Captum's exact enumeration
(``captum.attr.ShapleyValues``). Captum's own sampler (``ShapleyValueSampling``) was not used:
it calls the flow once per ordering (35-60 ms to explain one record, against 3 ms here), draws
from the global torch generator, and has no antithetic pairs (10x the error at equal cost).

Integrated gradients (Sundararajan, Taly and Yan, "Axiomatic attribution for deep networks",
ICML 2017) was measured first and not chosen: along the straight path the ReLU conditioners of
the default flow make the integrand piecewise smooth, so the completeness error shrank only as
1/steps (Gauss-Legendre, the default flow on 3000 mixed records: largest error 0.09 nats at 32
steps, 0.011 at 256, which took ~6 ms a record).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from flowmodels import Flow, FlowMixture
from pipelines.tabular.columns import BOOL_DTYPES
from pipelines.tabular.columnwise import column_log_jacobians, feature_sources
from pipelines.tabular.encoder import TabularEncoder

N_SAMPLES = 16  # orderings per record: 8 antithetic pairs (docs/design.md, "Explanations")
BATCH_ROWS = 16_384  # hybrid records per flow call
SEED = 0


def reference_values(encoder: TabularEncoder) -> dict[str, Any]:
    """The typical record contributions are measured from, as plain Python values per column:
    the training median of each continuous column and the most frequent training value of
    each discrete, binary and categorical column (none missing).

    Arguments:
        encoder: the detector's fitted encoder.
    """
    schema = encoder.schema_
    record: dict[str, Any] = {}
    continuous = schema.of_kind("continuous")
    if continuous and encoder.cont_imputer_ is not None:
        # the imputer's statistic is the median of the observed training values
        for spec, median in zip(continuous, encoder.cont_imputer_.statistics_, strict=True):
            record[spec.name] = float(median)
    discrete = schema.of_kind("discrete", "binary")
    if discrete and encoder.code_imputer_ is not None:
        # the imputer's statistic is the most frequent code
        for spec, code in zip(discrete, encoder.code_imputer_.statistics_, strict=True):
            low, step = spec.grid
            value = float(low + step * code)
            record[spec.name] = bool(value) if spec.dtype in BOOL_DTYPES else value
    if encoder.onehot_ is not None and encoder.code_scaler_ is not None:
        # a one-hot slot's mean code is its level's share
        shares = encoder.code_scaler_.mean_[len(discrete) :] - 0.5
        for spec, (slot_of, _, _) in zip(schema.of_kind("categorical"), encoder.onehot_slots_,
                                         strict=True):
            record[spec.name] = max(spec.categories or (),
                                    key=lambda level: shares[slot_of[level]])
    return {name: record[name] for name in schema.names}


def reference_record(encoder: TabularEncoder) -> pd.DataFrame:
    """:func:`reference_values` as a one-row frame, ready to score.

    Arguments:
        encoder: the detector's fitted encoder.
    """
    return pd.DataFrame([reference_values(encoder)])


def contributions(encoder: TabularEncoder, flow: Flow | FlowMixture, data: pd.DataFrame,
                  n_samples: int = N_SAMPLES) -> pd.DataFrame:
    """Each input column's contribution to each record's score ``-log p``, in nats, measured
    from :func:`reference_record`; a record's contributions sum to its score minus the
    reference's (see the module docstring).

    Arguments:
        encoder: the detector's fitted encoder.
        flow: the detector's flow.
        data: records with the training columns.
        n_samples: sampled orderings of the columns per record, rounded up to an even number
            (more: less sampling noise in each contribution; their sum is exact either way).

    Returns:
        A frame with ``data``'s index and one column per input column.

    Raises:
        SchemaError: a record the encoder rejects.
    """
    if flow.training:  # what scoring does too
        flow.eval()
    reference = reference_record(encoder)
    x, _ = encoder.transform(data)
    base, _ = encoder.transform(reference)
    n_columns = encoder.n_features_in_
    rank = np.argsort(_orderings(n_columns, n_samples), axis=1)  # column -> its position
    # present[m, t, j]: hybrid t of ordering m takes column j from the record
    present = rank[:, None, :] < np.arange(n_columns + 1)[None, :, None]
    # ... and so every encoded feature of that column
    device = next(flow.parameters()).device
    take = torch.as_tensor(present[:, :, feature_sources(encoder)], device=device)
    base_t = torch.as_tensor(base[0], dtype=torch.float32, device=device)
    per_record = take.shape[0] * take.shape[1]  # hybrids of one record
    step = max(1, BATCH_ROWS // per_record)
    out = np.empty((len(x), n_columns))
    with torch.inference_mode():
        for start in range(0, len(x), step):
            batch = torch.as_tensor(x[start : start + step], dtype=torch.float32, device=device)
            hybrids = torch.where(take, batch[:, None, None, :], base_t)
            scores = -flow.log_prob(hybrids.reshape(-1, x.shape[1])).double().cpu().numpy()
            # the step from hybrid t to t + 1 adds the column at position t of the ordering
            marginal = np.diff(scores.reshape(len(batch), *take.shape[:2]), axis=2)
            out[start : start + len(batch)] = np.take_along_axis(
                marginal, rank[None], axis=2).mean(axis=1)
    # score = -(flow log-density + log-Jacobian): a column's log-Jacobian change counts negated.
    out -= column_log_jacobians(encoder, data) - column_log_jacobians(encoder, reference)
    return pd.DataFrame(out, index=data.index, columns=list(encoder.schema_.names))


def _orderings(n_columns: int, n_samples: int) -> NDArray[np.int_]:
    """``n_samples`` (rounded up to even) orderings of the columns from a fixed seed: random
    ones and their reverses. A reversed pair credits each pairwise interaction half to each of
    its columns, so for scores with no higher interactions (a Gaussian density) the average
    is already the exact Shapley value (antithetic sampling)."""
    rng = np.random.default_rng(SEED)
    half = np.stack([rng.permutation(n_columns) for _ in range(-(-n_samples // 2))])
    return np.concatenate([half, half[:, ::-1]])


def _ranked(contributions: pd.DataFrame, k: int) -> NDArray[np.int_]:
    """Per record, the positions of its ``k`` largest contributions, largest first."""
    values = contributions.to_numpy()
    # NaN (a record of infinite score) sorts last
    return np.argsort(np.where(np.isnan(values), -np.inf, -values), axis=1, kind="stable")[:, :k]


def top_contributions(contributions: pd.DataFrame, data: pd.DataFrame,
                      k: int) -> list[list[dict[str, Any]]]:
    """Per record, its ``k`` largest contributions as ``{"column", "value", "contribution"}``
    (the record's own value of the column), largest first: what ``POST /score?explain=true``
    adds to each result.

    Arguments:
        contributions: :func:`contributions` of ``data``.
        data: the records explained.
        k: contributions kept per record.
    """
    columns = list(contributions.columns)
    values = data[columns].astype(object).where(data[columns].notna(), None).to_numpy()
    amounts = contributions.to_numpy()
    return [
        [{"column": columns[j], "value": _plain(values[i, j]), "contribution": float(amounts[i, j])}
         for j in row]
        for i, row in enumerate(_ranked(contributions, k))
    ]


def top_columns(contributions: pd.DataFrame, k: int) -> pd.DataFrame:
    """``top1_column, top1_contribution, ..., top{k}_column, top{k}_contribution`` per record,
    largest first: what ``flowad score --explain`` adds to each row.

    Arguments:
        contributions: :func:`contributions` of the records.
        k: contributions kept per record.
    """
    names = np.array(contributions.columns, dtype=object)
    ranked = _ranked(contributions, k)
    amounts = np.take_along_axis(contributions.to_numpy(), ranked, axis=1)
    out: dict[str, Any] = {}
    for i in range(ranked.shape[1]):
        out[f"top{i + 1}_column"] = names[ranked[:, i]]
        out[f"top{i + 1}_contribution"] = amounts[:, i]
    return pd.DataFrame(out, index=contributions.index)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON encoders take."""
    return value.item() if isinstance(value, np.generic) else value
