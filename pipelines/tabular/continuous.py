"""Continuous columns: their scaler, their atoms, and the check that they scale.

``standard`` (StandardScaler), ``robust`` (RobustScaler: median / IQR, an IQR of 0 counts as
1) or ``quantile`` (:mod:`pipelines.tabular.quantile`). Missing values are imputed with the
column's training median.

Atoms: a value of a continuous column held by at least ``atom_share`` of its observed training
rows (and by two or more) is a point mass, on which a continuous density diverges
(``23_mammography`` has columns with 30-77% of their rows at one value). With standard or
robust scaling, such values are dequantised like codes: a cell of width ``h`` centred on the
value, ``h = 3.49 * std * n^(-1/3)`` (Scott's histogram bin width for that column; Scott, "On
optimal and data-based histograms", Biometrika 1979), so the flow models the atom's mass
spread over one histogram cell. ``TabularEncoder.transform(df, offset)`` moves an atom value
to ``value + (offset - 0.5) * h`` (scoring: the value itself), ``cell_widths`` gives the
per-entry widths for the training noise. Quantile scaling is not linear, so the noise cannot
be added after it: it keeps atoms as they are (no atoms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray
from sklearn.preprocessing import QuantileTransformer, RobustScaler, StandardScaler

from pipelines.errors import SchemaError
from pipelines.tabular.columns import ColumnSpec

ContinuousScaler: TypeAlias = StandardScaler | RobustScaler | QuantileTransformer
N_QUANTILES = 1000
# Smallest span of a non-constant continuous column after scaling: the flows compute in
# float32 (7 digits on values of order 1), to which a narrower column is a constant.
MIN_SCALED_SPREAD = 1e-6
SCOTT_FACTOR = 3.49  # Scott's histogram bin width: 3.49 * std * n^(-1/3)


def new_scaler(scaling: str, n_observed: int) -> ContinuousScaler:
    """The continuous columns' scaler, unfitted.

    Arguments:
        scaling: ``"standard"``, ``"robust"`` or ``"quantile"``.
        n_observed: the fewest non-missing values of a column.
    """
    if scaling == "standard":
        return StandardScaler()
    if scaling == "robust":
        return RobustScaler()
    return QuantileTransformer(
        n_quantiles=min(N_QUANTILES, n_observed), output_distribution="normal", subsample=None
    )


def find_atoms(cont: NDArray[np.float64], atom_share: float | None, scaling: str
               ) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
    """Atom values and cell widths per continuous column (none under quantile scaling).

    Arguments:
        cont: the continuous columns' training values (NaN where missing).
        atom_share: the share of observed rows that makes a value an atom; None: no atoms.
        scaling: the continuous scaling.
    """
    if atom_share is None or scaling == "quantile":
        return [np.empty(0) for _ in range(cont.shape[1])], np.zeros(cont.shape[1])
    atoms, widths = [], []
    for column in cont.T:
        observed = column[~np.isnan(column)]
        values, counts = np.unique(observed, return_counts=True)
        fewest = max(2, math.ceil(atom_share * len(observed)))
        atoms.append(values[counts >= fewest])
        widths.append(SCOTT_FACTOR * observed.std() * len(observed) ** (-1 / 3))
    return atoms, np.array(widths)


def atom_masks(cont: NDArray[np.float64], atoms: Sequence[NDArray[np.float64]]
               ) -> list[tuple[int, NDArray[np.bool_]]]:
    """``(column, rows at one of its atoms)`` for the continuous columns that have atoms.

    Arguments:
        cont: the continuous columns' values.
        atoms: each column's atoms.
    """
    return [(j, np.isin(cont[:, j], column_atoms))
            for j, column_atoms in enumerate(atoms) if len(column_atoms)]


def check_scalable(scaler: ContinuousScaler, cont: NDArray[np.float64],
                   specs: Sequence[ColumnSpec]) -> None:
    """Every continuous column must keep its spread through the scaler: float64 cannot square
    values near 1e155 (a variance overflows), and a spread below 2e-15 (near 1e-200 for a
    variance, which underflows) is taken for none and scaled by 1, leaving a column the flow,
    computing in float32, sees as a constant.

    Arguments:
        scaler: the fitted scaler.
        cont: the continuous columns' training values.
        specs: their specs.
    """
    scaled = scaler.transform(cont)
    variance = getattr(scaler, "var_", None)  # StandardScaler squares
    for j, spec in enumerate(specs):
        observed = ~np.isnan(cont[:, j])
        column = scaled[observed, j]
        overflow = variance is not None and not np.isfinite(variance[j])
        if overflow or not np.isfinite(column).all() or np.ptp(column) < MIN_SCALED_SPREAD:
            largest = float(np.nanmax(np.abs(cont[:, j])))
            raise SchemaError(
                f"values of magnitude up to {largest:.3g} cannot be scaled in 64-bit floats "
                "(their spread over- or underflows); rescale the column, e.g. to its units of "
                "1e-6 or 1e6", column=spec.name)


def impute(x: NDArray[np.float64], statistics: NDArray[np.float64]) -> NDArray[np.float64]:
    """``SimpleImputer.transform`` of a float matrix: NaN replaced by its column's statistic
    (a copy; no column is all-missing, schema checks refuse that at fit).

    Arguments:
        x: the values.
        statistics: the imputer's ``statistics_``.
    """
    return np.where(np.isnan(x), statistics, x)


def centre(scaler: StandardScaler | RobustScaler) -> NDArray[np.float64]:
    """What a scaler subtracts: ``mean_`` (StandardScaler) or ``center_`` (RobustScaler)."""
    return scaler.mean_ if isinstance(scaler, StandardScaler) else scaler.center_
