"""The raw values a model scores: a bound on every encoded continuous and code entry.

An encoded continuous or discrete/binary entry must satisfy ``|value| <= MAX_ENCODED = 1e6``
(a million scale units, e.g. standard deviations, from the centre of the training data);
anything farther is a :class:`~pipelines.errors.SchemaError` naming the column, the row and
the accepted range in raw units (:func:`raw_ranges`, computed once at fit and load). The flows
compute in float32; measured on ``mixed_frame`` and ``29_Pima`` (RealNVP mixtures after 15
and 80 epochs, FFJORD flow matching after 5 and 30), ``flow.log_prob`` stayed finite up to
``|x| = 3e13`` in every coordinate and first became ``-inf`` at 1e14 (RealNVP, all
coordinates at once; one coordinate: 1e15 and beyond) and 1e19 (FFJORD). Values beyond
float32 (3.4e38) gave NaN. The bound keeps a margin of 1e7 below the first failure; a record
a million standard deviations out is not one the model can score exactly anyway. The raw
values are checked before encoding (a huge value could overflow a code to inf,
:func:`check_range`), and the encoded matrix again before it reaches the flow
(:func:`check_encoded`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.preprocessing import QuantileTransformer, RobustScaler, StandardScaler

from pipelines.errors import SchemaError, shown
from pipelines.tabular.columns import ColumnSpec
from pipelines.tabular.quantile import Knots, raw_range

MAX_ENCODED = 1e6


def raw_ranges(continuous_scaler: StandardScaler | RobustScaler | QuantileTransformer | None,
               quantile_knots: Sequence[Knots], code_specs: Sequence[ColumnSpec],
               code_scaler: StandardScaler | None) -> NDArray[np.float64]:
    """``(lo, hi)`` per numeric column (continuous, then discrete and binary): the raw values
    whose scoring encoding (``offset=0.5``) has magnitude at most ``MAX_ENCODED``.

    Arguments:
        continuous_scaler: the continuous columns' fitted scaler, or None.
        quantile_knots: under quantile scaling, each continuous column's knots (else empty).
        code_specs: the discrete and binary columns' specs.
        code_scaler: the codes' fitted scaler, or None.
    """
    ranges: list[tuple[float, float]] = []
    if quantile_knots:  # linear in z beyond the outer knots
        ranges += [raw_range(knots, MAX_ENCODED) for knots in quantile_knots]
    elif continuous_scaler is not None:
        centre = (continuous_scaler.mean_ if isinstance(continuous_scaler, StandardScaler)
                  else continuous_scaler.center_)
        scale = continuous_scaler.scale_
        ranges += zip(centre - MAX_ENCODED * scale, centre + MAX_ENCODED * scale, strict=True)
    if code_specs and code_scaler is not None:
        # encoded = (code + 0.5 - mean) / scale, code = (x - min) / step
        mean = code_scaler.mean_[: len(code_specs)] - 0.5
        scale = code_scaler.scale_[: len(code_specs)]
        for spec, m, sc in zip(code_specs, mean, scale, strict=True):
            low, step = spec.grid
            ranges.append((low + step * (m - MAX_ENCODED * sc),
                           low + step * (m + MAX_ENCODED * sc)))
    return np.array(ranges, dtype=np.float64).reshape(-1, 2)


def within_range(values: Mapping[str, NDArray[Any]], specs: Sequence[ColumnSpec],
                 ranges: NDArray[np.float64]) -> bool:
    """Whether every raw numeric value is within its range (NaN, missing, is).

    Arguments:
        values: checked values per column.
        specs: the numeric columns' specs, in the order of ``ranges``.
        ranges: :func:`raw_ranges`.
    """
    if not specs:
        return True
    x = np.column_stack([values[spec.name] for spec in specs])
    return not ((x < ranges[:, 0]) | (x > ranges[:, 1])).any()


def check_range(frame: pd.DataFrame, values: Mapping[str, NDArray[Any]],
                specs: Sequence[ColumnSpec], ranges: NDArray[np.float64]) -> None:
    """Raises for the first row (then column) with a raw value outside its range.

    Arguments:
        frame: the records (for messages).
        values: their checked values; NaN (missing) passes.
        specs: the numeric columns' specs, in the order of ``ranges``.
        ranges: :func:`raw_ranges`.
    """
    # One vectorised test first: the loop below costs ~2.5 us a column.
    if within_range(values, specs, ranges):
        return
    first: tuple[int, int] | None = None  # (row, column index)
    for j, spec in enumerate(specs):
        lo, hi = ranges[j]
        x = values[spec.name]
        outside = np.flatnonzero((x < lo) | (x > hi))
        if len(outside) and (first is None or outside[0] < first[0]):
            first = (int(outside[0]), j)
    if first is not None:
        raise out_of_range(frame, specs, ranges, *first)


def encoded_fine(encoded: NDArray[np.float64], n_numeric: int) -> NDArray[np.bool_]:
    """Per entry of the encoded numeric block: whether ``|value| <= MAX_ENCODED``, with a
    margin for rounding at the edge (NaN is not fine).

    Arguments:
        encoded: the encoded matrix.
        n_numeric: its numeric entries (the first columns).
    """
    return np.abs(encoded[:, :n_numeric]) <= MAX_ENCODED * (1 + 1e-9)


def check_encoded(frame: pd.DataFrame, encoded: NDArray[np.float64],
                  specs: Sequence[ColumnSpec], ranges: NDArray[np.float64]) -> None:
    """The guard on the matrix given to the flow: |numeric entries| <= ``MAX_ENCODED``.

    :func:`check_range` already rejected the raw values that would fail it; this catches
    rounding at the edge and any map it gets wrong (NaN fails too).

    Arguments:
        frame: the records (for messages).
        encoded: the encoded matrix.
        specs: the numeric columns' specs, in the order of ``ranges``.
        ranges: :func:`raw_ranges`.
    """
    fine = encoded_fine(encoded, len(ranges))
    if not fine.all():
        row = int(np.flatnonzero(~fine.all(axis=1))[0])
        raise out_of_range(frame, specs, ranges, row, int(np.flatnonzero(~fine[row])[0]))


def out_of_range(frame: pd.DataFrame, specs: Sequence[ColumnSpec],
                 ranges: NDArray[np.float64], row: int, j: int) -> SchemaError:
    """The error for numeric column ``j`` at ``row``.

    Arguments:
        frame: the records.
        specs: the numeric columns' specs, in the order of ``ranges``.
        ranges: :func:`raw_ranges`.
        row: the row.
        j: the column's position in ``specs``.
    """
    spec = specs[j]
    lo, hi = ranges[j]
    problem = (
        f"{shown(frame[spec.name].iloc[row])} is out of range: the model scores values in "
        f"[{lo:.6g}, {hi:.6g}] (at most {MAX_ENCODED:.0e} scale units from the centre of the "
        "training data; farther, the flow cannot give an exact finite score)"
    )
    return SchemaError.at(frame, spec.name, row, problem)
