"""``TabularEncoder``: a pandas frame -> float64 matrix for a flow, with the log-Jacobian.

Layout of the output, in this order: continuous columns; discrete and binary codes; one-hot
codes of categorical columns; missing indicators of numeric columns that had missing values in
training (names in ``feature_names_out_``).

Scores stay exact densities (the *score* and *discrete columns* contracts, docs/design.md).
``transform`` returns ``(X, log_jac)``
with ``log_jac = log|det d(encoded)/d(raw)|`` per record, so ``-(flow.log_prob(X) + log_jac)``
is ``-log p`` of the record in raw units, where for discrete parts the "raw unit" is one cell:

* Continuous columns: ``standard`` (StandardScaler), ``robust`` (RobustScaler: median / IQR,
  an IQR of 0 counts as 1) or ``quantile`` (see below). Standard and robust contribute the
  constant ``-sum(log scale)``.
* Codes: a discrete or binary value ``x`` becomes ``c = (x - min) / step``, integer-valued on the
  training data (one unit cell per level); one-hot and missing-indicator entries are 0/1 codes.
  ``transform(df, offset)`` returns ``c + offset`` after standard scaling, so training uses
  ``offset=0`` plus ``U(0, 1)`` noise per cell (``dequantization_width_`` is a cell's width in
  encoded units, 0 for continuous coordinates) and scoring the midpoint ``offset=0.5``. The flow
  then models a density whose integral over a cell is the level's probability: finite, unit-free.
  Codes are scaled by ``sqrt(var(c) + 1/12)``, the standard deviation of the dequantised code
  ``c + U(0, 1)``: unit-variance inputs, and never a zero scale.
* ``quantile``: ``z = Phi^-1(F(x))`` with ``F`` the piecewise-linear CDF through a fitted
  QuantileTransformer's ``quantiles_`` / ``references_``, tied quantiles (point masses) merged
  into one knot at their mean reference so that ``F`` is strictly increasing, and the end
  references moved from 0 and 1 to ``0.5 / n`` and ``1 - 0.5 / n`` (half a training record) so
  that ``z`` is finite. Beyond the training range ``z`` continues as a straight line with the
  slope (in ``z``) of the outermost segment: an extreme value stays extreme, never clipped.
  ``log_jac`` is ``log F'(x) - log phi(z)`` inside, ``log(slope)`` outside.
* Atoms: a value of a continuous column held by at least ``atom_share`` of its observed
  training rows (and by two or more) is a point mass, on which a continuous density diverges
  (``23_mammography`` has columns with 30-77% of their rows at one value). With standard or
  robust scaling, such values are dequantised like codes: a cell of width ``h`` centred on the
  value, ``h = 3.49 * std * n^(-1/3)`` (Scott's histogram bin width for that column; Scott,
  "On optimal and data-based histograms", Biometrika 1979), so the flow models the atom's mass
  spread over one histogram cell. ``transform(df, offset)`` moves an atom value to
  ``value + (offset - 0.5) * h`` (scoring: the value itself), :meth:`cell_widths` gives the
  per-entry widths for the training noise. Quantile scaling is not linear, so the noise cannot
  be added after it: it keeps atoms as they are (``atoms_`` empty).
* A constant column is discrete with step 1 (one cell), never an infinite density.

Policies:

* A value of a discrete or binary column off its support (between the points of a grid, ``2.5``
  children; between or beyond the levels seen of a column on no grid, ``0.5`` for a 0/1 flag)
  is scored at its nearest support point's cell with a finite penalty that grows with its
  distance, the density staying normalised (:mod:`pipelines.support`, ``support_``); the
  log-Jacobian carries the penalty. A value beyond the training range but on a grid keeps its
  cell and is scored by the flow's tails. Encoders saved before keep their rule (zero density
  between grid points: ``-inf``). Real data has such values: 3.4% of `6_cardio`'s anomalies,
  and among inliers a half-year age (one of `38_thyroid`'s 3,679 inliers).
* Unseen categories are scored, not rejected: they go to the column's "<unknown>" one-hot slot
  (a slot never seen in training, so they score as unlikely). When a column has more than
  ``max_categories`` levels, the rarest levels and the unknown slot share OneHotEncoder's
  infrequent slot. :meth:`TabularEncoder.unknown_counts` counts them per column.
* Missing values are allowed only where training had some. Categorical: their own category
  ("<missing>"). Numeric: imputed (median for continuous, most frequent level for discrete) and
  flagged by a missing-indicator code. The log-Jacobian treats an imputed value as observed.
  Imputed continuous values are a point mass the flow may overfit (per-record dequantisation
  would need per-record widths). Infinite values are always an error.
* Input checks: :meth:`pipelines.schema.Schema.check` (missing / unexpected columns, dtypes,
  non-numbers, NaN, inf); rows in messages are 0-based positions. :meth:`transform_records`
  takes JSON-like records and checks a few without a frame
  (:meth:`~pipelines.schema.Schema.check_records`), bit-identical to the frame path.
* Range: an encoded continuous or discrete/binary entry must satisfy
  ``|value| <= MAX_ENCODED = 1e6`` (a million scale units, e.g. standard deviations, from the
  centre of the training data); anything farther is a :class:`SchemaError` naming the column,
  the row and the accepted range in raw units (``raw_range_``, computed for scoring). The flows
  compute in float32; measured on ``mixed_frame`` and ``29_Pima`` (RealNVP mixtures after 15
  and 80 epochs, FFJORD flow matching after 5 and 30), ``flow.log_prob`` stayed finite up to
  ``|x| = 3e13`` in every coordinate and first became ``-inf`` at 1e14 (RealNVP, all
  coordinates at once; one coordinate: 1e15 and beyond) and 1e19 (FFJORD). Values beyond
  float32 (3.4e38) gave NaN. The bound keeps a margin of 1e7 below the first failure; a record
  a million standard deviations out is not one the model can score exactly anyway. The check
  runs on the raw values before encoding (a huge value could overflow a code to inf), in
  :meth:`transform` and :meth:`validate` alike, and :meth:`transform` checks the encoded matrix
  again before returning it.

Saved with skops (no pickle); loading accepts only the allow-listed types in ``TRUSTED_TYPES``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import pandas as pd
import skops.io as sio
from numpy.typing import NDArray
from scipy.special import ndtri
from sklearn.base import BaseEstimator
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.preprocessing import (
    OneHotEncoder,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)
from sklearn.utils.validation import check_is_fitted

from pipelines.schema import (
    NUMERIC_KINDS,
    ColumnSpec,
    Schema,
    SchemaError,
    as_text,
    infer_schema,
    shown,
)
from pipelines.support import Support, legacy_off_grid

Scaling = Literal["standard", "robust", "quantile"]
MISSING = "<missing>"
UNKNOWN = "<unknown>"
N_QUANTILES = 1000
# Largest |encoded value| of a continuous or discrete/binary entry the flows are given (module
# docstring: the float32 flows stayed finite up to 3e13).
MAX_ENCODED = 1e6
# Smallest span of a non-constant continuous column after scaling: the flows compute in
# float32 (7 digits on values of order 1), to which a narrower column is a constant.
MIN_SCALED_SPREAD = 1e-6
# Most records TabularEncoder.transform_records checks without a frame. Scoring on the example
# model (benchmarks/record_path.py, medians): 4.0x faster than through a frame for one record,
# 1.7x for 64, 1.3x for 1024, 0.93x for 4096 (its per-value Python work grows with the rows;
# the frame's mostly fixed cost does not).
RECORD_PATH_ROWS = 1024
SCOTT_FACTOR = 3.49  # Scott's histogram bin width: 3.49 * std * n^(-1/3)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_FORMAT = "flowad.TabularEncoder/1"

# Every type a saved encoder may contain beyond skops' built-in defaults; anything else in a file
# is refused before loading. The scikit-learn classes are listed too in case skops stops
# trusting them by default.
TRUSTED_TYPES = frozenset(
    {
        "numpy.dtype",
        "numpy.ndarray",
        "sklearn.impute._base.MissingIndicator",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.preprocessing._data.QuantileTransformer",
        "sklearn.preprocessing._data.RobustScaler",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
    }
)

# Fitted sub-transformers, all saved by name (None where a group of columns is absent).
_PARTS = ("cont_imputer_", "cont_scaler_", "code_imputer_", "onehot_", "indicator_", "code_scaler_")


class TabularEncoder(BaseEstimator):
    """Encodes a table for a normalizing flow, with dequantised codes and a log-Jacobian.

    See the module docstring for the encoding, the policies and the log-Jacobian.

    Arguments:
        scaling: continuous columns: "standard", "robust" or "quantile" (codes are always
            standardised).
        exclude: columns ignored at fit and transform (ids, timestamps, labels), present or not.
        max_discrete_levels: numeric columns with at most this many distinct values are discrete.
        max_categories: most one-hot slots per categorical column (rarer levels and the unknown
            slot share one).
        atom_share: a continuous column's value held by at least this share of its observed
            training rows is an atom and gets dequantised; ``None`` turns atoms off.

    Fitted attributes: ``schema_``, ``feature_names_in_``, ``n_features_in_``,
    ``feature_names_out_``, ``n_features_out_``, ``dequantization_width_``, ``atoms_`` (atom
    values per continuous column, raw units), ``atom_width_`` (their cell widths) and the
    scikit-learn parts ``cont_imputer_``, ``cont_scaler_``, ``code_imputer_``, ``onehot_``,
    ``indicator_``, ``code_scaler_``, ``quantile_knots_``, ``raw_range_`` (per continuous, then
    discrete/binary column: the raw values whose encoding is within ``MAX_ENCODED``),
    ``onehot_width_`` and ``onehot_slots_`` (the one-hot block's width and, per categorical
    column, its lookup tables: :meth:`_one_hot_tables`). ``transform`` computes with numpy from
    these attributes, bit-identical to the scikit-learn parts' own ``transform``
    (:meth:`_transform_sklearn`, the reference).
    """

    def __init__(
        self,
        *,
        scaling: Scaling = "standard",
        exclude: tuple[str, ...] = (),
        max_discrete_levels: int = 20,
        max_categories: int = 50,
        atom_share: float | None = 0.01,
    ) -> None:
        self.scaling = scaling
        self.exclude = exclude
        self.max_discrete_levels = max_discrete_levels
        self.max_categories = max_categories
        self.atom_share = atom_share

    # ---------------------------------------------------------------------------------- fit
    def fit(self, df: pd.DataFrame, y: Any = None, *,
            schema_rows: pd.DataFrame | None = None) -> TabularEncoder:
        """Infers the schema and fits the scalers on training records; returns ``self``.

        Arguments:
            df: training records (excluded columns may be present).
            y: ignored.
            schema_rows: the records the schema is inferred from (column kinds, which columns
                may be missing, categories, grids), when more than ``df``: the rows a detector
                holds out of training for validation and calibration are training data too,
                and a missing value there must not make its own training data invalid.

        Raises:
            SchemaError: empty frame, an all-missing column, inf, an unsupported dtype.
        """
        if self.scaling not in ("standard", "robust", "quantile"):
            raise ValueError(f"scaling must be standard, robust or quantile, got {self.scaling!r}")
        if isinstance(self.exclude, str):
            raise TypeError(f"exclude must be a sequence of names, got the string {self.exclude!r}")
        if self.max_discrete_levels < 2 or self.max_categories < 2:
            raise ValueError("max_discrete_levels and max_categories must be >= 2")
        if self.atom_share is not None and not 0 < self.atom_share <= 1:
            raise ValueError(f"atom_share must be in (0, 1] or None, got {self.atom_share}")
        schema = infer_schema(
            df if schema_rows is None else schema_rows, exclude=self.exclude,
            max_discrete_levels=self.max_discrete_levels,
        )
        values = schema.check(df)
        self.schema_ = schema
        cont = self._continuous(values)
        self.cont_imputer_ = self.cont_scaler_ = None
        if cont.shape[1]:
            # Scalers ignore NaN when fitting, so imputed values do not shrink the spread.
            self.cont_imputer_ = SimpleImputer(strategy="median").fit(cont)
            n_observed = int((~np.isnan(cont)).sum(axis=0).min())
            self.cont_scaler_ = self._new_scaler(n_observed).fit(cont)
            self._check_scalable(cont)
        self.atoms_, self.atom_width_ = self._find_atoms(cont)

        # Every row the schema saw shows the support (the levels a column takes).
        self.support_ = Support.fit(
            schema.of_kind("discrete", "binary"),
            self._raw_codes(values if schema_rows is None else schema.check(schema_rows)))
        self.on_grid_ = self.support_.on_grid
        discrete = self._discrete_codes(values)
        self.code_imputer_ = None
        if discrete.shape[1]:
            self.code_imputer_ = SimpleImputer(strategy="most_frequent").fit(discrete)
        categorical = self.schema_.of_kind("categorical")
        self.onehot_ = None
        if categorical:
            self.onehot_ = OneHotEncoder(
                categories=[self._slots(spec) for spec in categorical],
                max_categories=self.max_categories,
                handle_unknown="error",  # unknowns are mapped to the UNKNOWN slot beforehand
                sparse_output=False,
                dtype=np.float64,
            ).fit(self._tokens(values))
        with_missing = self._with_missing()
        self.indicator_ = None
        if with_missing:
            self.indicator_ = MissingIndicator(features="all").fit(
                np.column_stack([values[name] for name in with_missing])
            )

        self.code_scaler_ = None
        codes = self._codes_sklearn(values)
        if codes.shape[1]:
            self.code_scaler_ = StandardScaler().fit(codes + 0.5)
            # The flow sees c + U(0, 1): mean c + 1/2 and variance var(c) + 1/12.
            self.code_scaler_.scale_ = np.sqrt(self.code_scaler_.var_ + 1.0 / 12.0)
        self._finish()
        return self

    def _find_atoms(
        self, cont: NDArray[np.float64]
    ) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
        """Atom values and cell widths per continuous column (none under quantile scaling)."""
        if self.atom_share is None or self.scaling == "quantile":
            return [np.empty(0) for _ in range(cont.shape[1])], np.zeros(cont.shape[1])
        atoms, widths = [], []
        for column in cont.T:
            observed = column[~np.isnan(column)]
            values, counts = np.unique(observed, return_counts=True)
            fewest = max(2, math.ceil(self.atom_share * len(observed)))
            atoms.append(values[counts >= fewest])
            widths.append(SCOTT_FACTOR * observed.std() * len(observed) ** (-1 / 3))
        return atoms, np.array(widths)

    def _new_scaler(self, n_observed: int) -> StandardScaler | RobustScaler | QuantileTransformer:
        """The continuous scaler; ``n_observed``: fewest non-missing values of a column."""
        if self.scaling == "standard":
            return StandardScaler()
        if self.scaling == "robust":
            return RobustScaler()
        return QuantileTransformer(
            n_quantiles=min(N_QUANTILES, n_observed), output_distribution="normal", subsample=None
        )

    def _finish(self) -> None:
        """Sets the attributes derived from the schema and the fitted parts (fit and load)."""
        schema = self.schema_
        self.feature_names_in_ = np.array(schema.names, dtype=object)
        self.n_features_in_ = len(schema.names)
        self.quantile_knots_ = []
        if self.scaling == "quantile" and self.cont_scaler_ is not None:
            self.quantile_knots_ = [
                _cdf_knots(
                    self.cont_scaler_.quantiles_[:, j],
                    self.cont_scaler_.references_,
                    schema.n_rows - spec.n_missing_train,
                )
                for j, spec in enumerate(schema.of_kind("continuous"))
            ]
        names = [spec.name for spec in schema.of_kind("continuous")]
        names += [spec.name for spec in schema.of_kind("discrete", "binary")]
        if self.onehot_ is not None:
            names += list(
                self.onehot_.get_feature_names_out(
                    [spec.name for spec in schema.of_kind("categorical")]
                )
            )
        names += [f"{name}_missing" for name in self._with_missing()]
        self.feature_names_out_ = np.array(names, dtype=object)
        self.n_features_out_ = len(names)
        n_cont = len(schema.of_kind("continuous"))
        width = np.zeros(self.n_features_out_)
        if self.code_scaler_ is not None:
            width[n_cont:] = 1.0 / self.code_scaler_.scale_
        self.dequantization_width_ = width
        self.raw_range_ = self._raw_ranges()
        self._set_one_hot_tables()

    def _set_one_hot_tables(self) -> None:
        """Sets ``onehot_width_`` and ``onehot_slots_`` (:meth:`_one_hot_tables`)."""
        self.onehot_width_ = 0
        self.onehot_slots_ = []
        if self.onehot_ is not None:
            self.onehot_width_ = len(self.onehot_.get_feature_names_out())
            self.onehot_slots_ = self._one_hot_tables()

    def _numeric_specs(self) -> list[ColumnSpec]:
        """Continuous, then discrete and binary specs: the encoded matrix's first columns."""
        return self.schema_.of_kind("continuous") + self.schema_.of_kind("discrete", "binary")

    def _raw_ranges(self) -> NDArray[np.float64]:
        """``(lo, hi)`` per numeric column (:meth:`_numeric_specs` order): the raw values whose
        scoring encoding (``offset=0.5``) has magnitude at most ``MAX_ENCODED``."""
        ranges = []
        if self.cont_scaler_ is not None and self.scaling == "quantile":
            for xk, fk in self.quantile_knots_:  # linear in z beyond the outer knots
                zk = ndtri(fk[[0, 1, -2, -1]])
                slope_lo = (zk[1] - zk[0]) / (xk[1] - xk[0])
                slope_hi = (zk[3] - zk[2]) / (xk[-1] - xk[-2])
                ranges.append((xk[0] - (MAX_ENCODED + zk[0]) / slope_lo,
                               xk[-1] + (MAX_ENCODED - zk[3]) / slope_hi))
        elif self.cont_scaler_ is not None:
            scaler = self.cont_scaler_
            centre = scaler.mean_ if self.scaling == "standard" else scaler.center_
            ranges += zip(centre - MAX_ENCODED * scaler.scale_,
                          centre + MAX_ENCODED * scaler.scale_, strict=True)
        specs = self.schema_.of_kind("discrete", "binary")
        if specs:  # encoded = (code + 0.5 - mean) / scale, code = (x - min) / step
            mean = self.code_scaler_.mean_[: len(specs)] - 0.5
            scale = self.code_scaler_.scale_[: len(specs)]
            for spec, m, sc in zip(specs, mean, scale, strict=True):
                ranges.append((spec.min + spec.step * (m - MAX_ENCODED * sc),
                               spec.min + spec.step * (m + MAX_ENCODED * sc)))
        return np.array(ranges, dtype=np.float64).reshape(-1, 2)

    def _check_range(self, df: pd.DataFrame, values: dict[str, NDArray[Any]]) -> None:
        """Raises for the first row (then column) with a raw value outside ``raw_range_``.

        Arguments:
            df: the records (for messages).
            values: their checked values (:meth:`Schema.check`); NaN (missing) passes.
        """
        # One vectorised test first: the loop below costs ~2.5 us a column.
        if self._within_range(values):
            return
        specs = self._numeric_specs()
        first: tuple[int, int] | None = None  # (row, column index)
        for j, spec in enumerate(specs):
            lo, hi = self.raw_range_[j]
            x = values[spec.name]
            outside = np.flatnonzero((x < lo) | (x > hi))
            if len(outside) and (first is None or outside[0] < first[0]):
                first = (int(outside[0]), j)
        if first is not None:
            raise self._out_of_range(df, *first)

    def _within_range(self, values: dict[str, NDArray[Any]]) -> bool:
        """Whether every raw numeric value is within ``raw_range_`` (NaN, missing, is).

        Arguments:
            values: checked values (:meth:`Schema.check`).
        """
        specs = self._numeric_specs()
        if not specs:
            return True
        x = np.column_stack([values[spec.name] for spec in specs])
        return not ((x < self.raw_range_[:, 0]) | (x > self.raw_range_[:, 1])).any()

    def _encoded_fine(self, encoded: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Per entry of the encoded numeric block: whether ``|value| <= MAX_ENCODED``, with a
        margin for rounding at the edge (NaN is not fine).

        Arguments:
            encoded: the encoded matrix.
        """
        numeric = encoded[:, : len(self.raw_range_)]
        return np.abs(numeric) <= MAX_ENCODED * (1 + 1e-9)

    def _check_encoded(self, df: pd.DataFrame, encoded: NDArray[np.float64]) -> None:
        """The guard on the matrix given to the flow: |numeric entries| <= ``MAX_ENCODED``.

        :meth:`_check_range` already rejected the raw values that would fail it; this catches
        rounding at the edge and any map it gets wrong (NaN fails too).

        Arguments:
            df: the records (for messages).
            encoded: the encoded matrix.
        """
        fine = self._encoded_fine(encoded)
        if not fine.all():
            row = int(np.flatnonzero(~fine.all(axis=1))[0])
            raise self._out_of_range(df, row, int(np.flatnonzero(~fine[row])[0]))

    def _out_of_range(self, df: pd.DataFrame, row: int, j: int) -> SchemaError:
        """The error for numeric column ``j`` (:meth:`_numeric_specs` order) at ``row``."""
        spec = self._numeric_specs()[j]
        lo, hi = self.raw_range_[j]
        problem = (
            f"{shown(df[spec.name].iloc[row])} is out of range: the model scores values in "
            f"[{lo:.6g}, {hi:.6g}] (at most {MAX_ENCODED:.0e} scale units from the centre of the "
            "training data; farther, the flow cannot give an exact finite score)"
        )
        return SchemaError.at(df, spec.name, row, problem)

    # ---------------------------------------------------------------------------- transform
    def transform(
        self, df: pd.DataFrame, offset: float = 0.5
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Encodes records; returns ``(X, log_jacobian)`` of shapes ``(n, n_out)`` and ``(n,)``.

        Arguments:
            df: records with the training columns (excluded columns may be present or absent).
            offset: position inside each code cell, in [0, 1): 0.5 (midpoint) for scoring, 0 for
                training before adding ``U(0, 1) * dequantization_width_`` noise.

        Raises:
            SchemaError: see :meth:`validate`.
        """
        check_is_fitted(self)
        values = self.schema_.check(df)
        self._check_range(df, values)  # before encoding: a huge code would overflow to inf
        encoded, log_jac = self._encode(values, offset)
        self._check_encoded(df, encoded)
        return encoded, log_jac

    def transform_records(
        self, records: Sequence[Mapping[str, Any]]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], dict[str, int]]:
        """:meth:`transform` (scoring offset 0.5) and :meth:`unknown_counts` of
        ``schema_.records_frame(records)``, bit for bit, from one check of the records.

        Up to ``RECORD_PATH_ROWS`` records are checked by
        :meth:`~pipelines.schema.Schema.check_records`, without a frame where their values are
        plain (a one-record request spent ~0.6 ms in pandas); more go through the frame, which
        is faster per row. Every rejection, even one found on the way, is raised by
        :meth:`transform` of the frame, so that its message is the frame path's own.

        Arguments:
            records: one dict per record, keyed by column name (other keys are ignored).

        Raises:
            SchemaError: as :meth:`transform`.
        """
        check_is_fitted(self)
        if len(records) <= RECORD_PATH_ROWS:
            values = self.schema_.check_records(records)
            if self._within_range(values):  # first, as transform: 1e300 would overflow encoded
                encoded, log_jac = self._encode(values, 0.5)
                if self._encoded_fine(encoded).all():
                    return encoded, log_jac, self._count_unknown(values)
        frame = self.schema_.records_frame(records)
        encoded, log_jac = self.transform(frame)
        return encoded, log_jac, self.unknown_counts(frame)

    def _transform_sklearn(
        self, df: pd.DataFrame, offset: float = 0.5
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """:meth:`transform` through the fitted scikit-learn parts: the reference that
        :meth:`_encode` must equal bit for bit (tests/test_encoder.py).

        Arguments:
            df: records, as for :meth:`transform`.
            offset: position inside each code cell, as for :meth:`transform`.
        """
        check_is_fitted(self)
        values = self.schema_.check(df)
        self._check_range(df, values)
        encoded, log_jac = self._encode(values, offset, sklearn=True)
        self._check_encoded(df, encoded)
        return encoded, log_jac

    def _encode(
        self, values: dict[str, NDArray[Any]], offset: float, sklearn: bool = False
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The encoded matrix and log-Jacobian of checked values (:meth:`Schema.check`).

        Plain numpy on the fitted attributes by default: the scikit-learn transformers' own
        ``transform`` costs ~0.1 ms a call in input checks and output wrappers whatever the
        rows (~0.7 ms of a 1-row ``transform``), and the numpy path was as fast or faster at
        every size measured (1 to 4096 rows). Same operations in the same order, so the
        result is bit-identical to ``sklearn=True``, the reference.

        Arguments:
            values: the checked values per column.
            offset: position inside each code cell (see :meth:`transform`).
            sklearn: go through the scikit-learn transformers (the reference path).
        """
        log_jac = self._support_factors(values).sum(axis=1)
        blocks = []
        if self.cont_scaler_ is not None:
            cont = self._continuous(values)
            if sklearn:
                cont = self.cont_imputer_.transform(cont)
            else:
                cont = _impute(cont, self.cont_imputer_.statistics_)
            if offset != 0.5:  # scoring (0.5) puts an atom at its own value: nothing to move
                for j, at_atom in self._atom_masks(cont):
                    cont[at_atom, j] += (offset - 0.5) * self.atom_width_[j]
            if self.scaling == "quantile":
                z = np.empty_like(cont)
                for j, (xk, fk) in enumerate(self.quantile_knots_):
                    z[:, j], log_dz = _normal_scores(cont[:, j], xk, fk)
                    log_jac += log_dz
            else:
                if sklearn:
                    z = self.cont_scaler_.transform(cont)
                else:  # StandardScaler.transform and RobustScaler.transform, in place
                    z = cont - _centre(self.cont_scaler_)
                    z /= self.cont_scaler_.scale_
                log_jac -= np.log(self.cont_scaler_.scale_).sum()
            blocks.append(z)
        if self.code_scaler_ is not None:
            codes = (self._codes_sklearn(values) if sklearn else self._codes(values)) + offset
            if sklearn:
                blocks.append(self.code_scaler_.transform(codes))
            else:
                codes -= self.code_scaler_.mean_
                codes /= self.code_scaler_.scale_
                blocks.append(codes)
            log_jac -= np.log(self.code_scaler_.scale_).sum()
        return np.hstack(blocks), log_jac

    def cell_widths(self, df: pd.DataFrame) -> NDArray[np.float64]:
        """Dequantisation cell width of every encoded entry, in encoded units, ``(n, n_out)``:
        ``dequantization_width_`` for codes, the atom's width where a continuous value is an
        atom, 0 elsewhere. Training adds ``U(0, 1) * cell_widths`` to ``transform(df, 0)``.

        Arguments:
            df: records (the training rows).
        """
        check_is_fitted(self)
        values = self.schema_.check(df)
        widths = np.tile(self.dequantization_width_, (len(df), 1))
        if self.cont_scaler_ is not None:
            cont = _impute(self._continuous(values), self.cont_imputer_.statistics_)
            for j, at_atom in self._atom_masks(cont):
                widths[at_atom, j] = self.atom_width_[j] / self.cont_scaler_.scale_[j]
        return widths

    def _atom_masks(self, cont: NDArray[np.float64]) -> list[tuple[int, NDArray[np.bool_]]]:
        """``(column, rows at one of its atoms)`` for the continuous columns that have atoms."""
        return [
            (j, np.isin(cont[:, j], atoms)) for j, atoms in enumerate(self.atoms_) if len(atoms)
        ]

    def validate(self, df: pd.DataFrame) -> None:
        """Checks ``df`` against the schema (also done by :meth:`transform`).

        Arguments:
            df: records to check.

        Raises:
            SchemaError: empty frame; missing or unexpected columns; a wrong dtype; a value that
                is not a number in a numeric column; NaN/None where training had none; inf; a
                value outside ``raw_range_`` (see the module docstring); the other checks of
                :meth:`Schema.check`.
        """
        check_is_fitted(self)
        self._check_range(df, self.schema_.check(df))

    def unknown_counts(self, df: pd.DataFrame) -> dict[str, int]:
        """Values per categorical column not seen in training (scored via the unknown slot).

        Reads only the categorical columns and checks nothing else: call it on a frame that
        :meth:`validate` or :meth:`transform` accepted (the service does, so that a request
        is checked once).

        Arguments:
            df: records with the categorical columns.
        """
        check_is_fitted(self)
        counts = {}
        for spec in self.schema_.of_kind("categorical"):
            text = as_text(df[spec.name], fold=self.schema_.text_folding)
            known = _seen(text, spec) | pd.isna(text)
            counts[spec.name] = int((~known).sum())
        return counts

    def feature_sources(self) -> NDArray[np.int_]:
        """The input column (position in ``feature_names_in_``) each encoded feature comes
        from: a one-hot slot from its categorical column, a missing indicator from its numeric
        column. Encoded features of one input column change together."""
        check_is_fitted(self)
        position = {name: j for j, name in enumerate(self.schema_.names)}
        sources = [position[spec.name] for spec in self._numeric_specs()]
        for spec, (slot_of, missing, unknown) in zip(
            self.schema_.of_kind("categorical"), self.one_hot_slots(), strict=True
        ):
            # OneHotEncoder writes each column's slots contiguously, in column order.
            n_slots = len({*slot_of.values(), unknown, missing} - {-1})
            sources += [position[spec.name]] * n_slots
        sources += [position[name] for name in self._with_missing()]
        return np.array(sources)

    def column_log_jacobians(self, df: pd.DataFrame) -> NDArray[np.float64]:
        """The log-Jacobian of :meth:`transform` (scoring offset) split by input column,
        ``(n, n_features_in_)``; each row sums to ``transform(df)[1]``. The encoding maps each
        input column on its own, so its log-Jacobian is a sum of per-column terms: constants
        under standard and robust scaling, ``log dz/dx`` of the value under quantile scaling.

        Arguments:
            df: records, checked as by :meth:`transform`.
        """
        check_is_fitted(self)
        values = self.schema_.check(df)
        per_feature = np.zeros((_n_rows(values), self.n_features_out_))
        n_cont = 0
        if self.cont_scaler_ is not None:
            cont = _impute(self._continuous(values), self.cont_imputer_.statistics_)
            n_cont = cont.shape[1]
            if self.scaling == "quantile":
                for j, (xk, fk) in enumerate(self.quantile_knots_):
                    per_feature[:, j] = _normal_scores(cont[:, j], xk, fk)[1]
            else:
                per_feature[:, :n_cont] = -np.log(self.cont_scaler_.scale_)
        if self.code_scaler_ is not None:
            per_feature[:, n_cont:] = -np.log(self.code_scaler_.scale_)
        by_column = np.zeros((self.n_features_out_, self.n_features_in_))
        by_column[np.arange(self.n_features_out_), self.feature_sources()] = 1.0
        per_column = per_feature @ by_column
        # After the product: -inf (an old encoder's zero density) times the zeros of other
        # columns would be NaN.
        position = {name: j for j, name in enumerate(self.schema_.names)}
        code_columns = [position[spec.name] for spec in self.schema_.of_kind("discrete", "binary")]
        per_column[:, code_columns] += self._support_factors(values)
        return per_column

    def _count_unknown(self, values: dict[str, NDArray[Any]]) -> dict[str, int]:
        """:meth:`unknown_counts` from checked values, by the one-hot tables' lookups (for a
        few records, pandas' ``isin`` in :func:`_seen` costs more than the rest of a check).

        Arguments:
            values: checked values (:meth:`Schema.check`).
        """
        return {
            spec.name: sum(value is not None and value not in slot_of
                           for value in values[spec.name])
            for spec, (slot_of, _, _) in zip(
                self.schema_.of_kind("categorical"), self.one_hot_slots(), strict=True
            )
        }

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.object_]:
        """Names of the encoded features (``feature_names_out_``)."""
        check_is_fitted(self)
        return self.feature_names_out_

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "schema_")

    # ------------------------------------------------------------------------- the blocks
    def _check_scalable(self, cont: NDArray[np.float64]) -> None:
        """Every continuous column must keep its spread through the scaler: float64 cannot
        square values near 1e155 (a variance overflows), and a spread below 2e-15 (near 1e-200
        for a variance, which underflows) is taken for none and scaled by 1, leaving a column
        the flow, computing in float32, sees as a constant."""
        scaled = self.cont_scaler_.transform(cont)
        variance = getattr(self.cont_scaler_, "var_", None)  # StandardScaler squares
        for j, spec in enumerate(self.schema_.of_kind("continuous")):
            observed = ~np.isnan(cont[:, j])
            column = scaled[observed, j]
            overflow = variance is not None and not np.isfinite(variance[j])
            if overflow or not np.isfinite(column).all() or np.ptp(column) < MIN_SCALED_SPREAD:
                largest = float(np.nanmax(np.abs(cont[:, j])))
                raise SchemaError(
                    f"column {shown(spec.name)}: values of magnitude up to {largest:.3g} cannot "
                    "be scaled in 64-bit floats (their spread over- or underflows); rescale the "
                    "column, e.g. to its units of 1e-6 or 1e6", column=spec.name)

    def _continuous(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        specs = self.schema_.of_kind("continuous")
        if not specs:
            return np.empty((_n_rows(values), 0))
        return np.column_stack([values[spec.name] for spec in specs])

    def off_support(self, values: dict[str, NDArray[Any]]) -> NDArray[np.bool_]:
        """``(n, n_code_columns)``: where a discrete or binary column's value is off its support
        (:mod:`pipelines.support`; an encoder saved before it: between the points of a grid).
        Missing values are not.

        Arguments:
            values: checked values (:meth:`Schema.check`).
        """
        raw = self._raw_codes(values)
        if getattr(self, "support_", None) is None:
            return legacy_off_grid(raw, self.on_grid_)
        return self.support_.off(raw)

    def _support_factors(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """``(n, n_code_columns)``: each discrete and binary value's factor of the record's
        log-density (:mod:`pipelines.support`; an encoder saved before it: ``-inf`` between the
        points of a grid, else 0).

        Arguments:
            values: checked values (:meth:`Schema.check`).
        """
        raw = self._raw_codes(values)
        if getattr(self, "support_", None) is None:
            return np.where(legacy_off_grid(raw, self.on_grid_), -np.inf, 0.0)
        return self.support_.snap(raw)[1]

    @property
    def grid_columns(self) -> dict[str, float]:
        """The discrete and binary columns fit put on a grid, with their steps (raw units)."""
        check_is_fitted(self)
        specs = self.schema_.of_kind("discrete", "binary")
        return {spec.name: spec.step for spec, grid in zip(specs, self.on_grid_, strict=True)
                if grid}

    def _raw_codes(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """Codes ``(x - min) / step`` of discrete and binary columns (NaN where missing)."""
        specs = self.schema_.of_kind("discrete", "binary")
        if not specs:
            return np.empty((_n_rows(values), 0))
        return np.column_stack([(values[spec.name] - spec.min) / spec.step for spec in specs])

    def _discrete_codes(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """The codes the flow sees: :meth:`_raw_codes`, a value off its column's support moved
        to its nearest support point (its penalty is in :meth:`_support_factors`)."""
        raw = self._raw_codes(values)
        if getattr(self, "support_", None) is None or not raw.shape[1]:
            return raw
        return self.support_.snap(raw)[0]

    def _tokens(self, values: dict[str, NDArray[Any]]) -> NDArray[np.object_]:
        """Categorical values as OneHotEncoder input: missing and unseen ones as tokens."""
        columns = []
        for spec in self.schema_.of_kind("categorical"):
            text = values[spec.name].copy()
            missing = pd.isna(text)
            unseen = ~_seen(text, spec) & ~missing
            text[missing] = MISSING
            text[unseen] = UNKNOWN
            columns.append(text)
        return np.column_stack(columns)

    def _codes(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """All integer codes (cell lower corners): discrete, one-hot, missing indicators.

        Plain numpy from the fitted parts; :meth:`_codes_sklearn` is the reference it equals.
        """
        n = _n_rows(values)
        blocks = [np.empty((n, 0))]
        if self.code_imputer_ is not None:
            blocks.append(_impute(self._discrete_codes(values), self.code_imputer_.statistics_))
        if self.onehot_ is not None:
            blocks.append(self._one_hot(values, n))
        if self.indicator_ is not None:  # MissingIndicator(features="all"): isnan, as 0/1
            present = np.column_stack([values[name] for name in self._with_missing()])
            blocks.append(np.isnan(present).astype(np.float64))
        return np.hstack(blocks)

    def _codes_sklearn(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """:meth:`_codes` through the scikit-learn transformers (fit, and the reference)."""
        blocks = [np.empty((_n_rows(values), 0))]
        if self.code_imputer_ is not None:
            blocks.append(self.code_imputer_.transform(self._discrete_codes(values)))
        if self.onehot_ is not None:
            blocks.append(self.onehot_.transform(self._tokens(values)))
        if self.indicator_ is not None:
            present = np.column_stack([values[name] for name in self._with_missing()])
            blocks.append(self.indicator_.transform(present).astype(np.float64))
        return np.hstack(blocks)

    def _one_hot(self, values: dict[str, NDArray[Any]], n: int) -> NDArray[np.float64]:
        """``onehot_.transform(self._tokens(values))`` by dictionary lookups (:meth:`_finish`
        builds the tables): one 1.0 per row and categorical column."""
        tables = self.one_hot_slots()
        out = np.zeros((n, self.onehot_width_))
        rows = np.arange(n)
        for spec, (slot_of, missing_slot, unknown_slot) in zip(
            self.schema_.of_kind("categorical"), tables, strict=True
        ):
            # as_text gives str, or None where missing; a value that merely reads
            # "<missing>" or "<unknown>" is no training level, so it is unknown (_tokens).
            slots = [
                missing_slot if value is None else slot_of.get(value, unknown_slot)
                for value in values[spec.name]
            ]
            out[rows, slots] = 1.0
        return out

    def one_hot_slots(self) -> list[tuple[dict[str, int], int, int]]:
        """Per categorical column, ``(output column of each training level, of the missing
        slot, of the unknown slot)`` (-1: none): ``onehot_slots_``, built first for an encoder
        unpickled from before they existed."""
        if not hasattr(self, "onehot_slots_"):
            self._set_one_hot_tables()
        return self.onehot_slots_

    def _one_hot_tables(self) -> list[tuple[dict[str, int], int, int]]:
        """Per categorical column: ``(output column of each training level, of the missing
        token, of the unknown token)``, read off ``onehot_.transform`` of every slot, so that
        infrequent levels share the infrequent column exactly as scikit-learn maps them."""
        slots_per_column = self.onehot_.categories_
        longest = max(len(slots) for slots in slots_per_column)
        # Row r holds every column's slot r (shorter columns repeat theirs).
        grid = np.column_stack([np.resize(slots, longest) for slots in slots_per_column])
        ones = self.onehot_.transform(grid)
        # One 1 per column in each row, in column order: column i's is the i-th.
        columns = np.stack([np.flatnonzero(row) for row in ones])
        tables = []
        for i, (spec, slots) in enumerate(
            zip(self.schema_.of_kind("categorical"), slots_per_column, strict=True)
        ):
            slot_of = {str(slot): int(columns[r, i]) for r, slot in enumerate(slots)}
            missing = slot_of.pop(MISSING, -1)  # -1: never used (no missing values allowed)
            unknown = slot_of.pop(UNKNOWN)
            assert set(slot_of) == set(spec.categories)
            tables.append((slot_of, missing, unknown))
        return tables

    def _slots(self, spec: ColumnSpec) -> list[str]:
        """One-hot slots of a categorical column: its levels, "<missing>", "<unknown>"."""
        if MISSING in spec.categories or UNKNOWN in spec.categories:
            raise SchemaError(
                f"column {spec.name!r} holds a reserved value {MISSING!r} or {UNKNOWN!r}",
                column=spec.name,
            )
        return [*spec.categories, *([MISSING] if spec.n_missing_train else []), UNKNOWN]

    def _with_missing(self) -> list[str]:
        """Numeric columns that get a missing indicator."""
        return [
            spec.name for spec in self.schema_.of_kind(*NUMERIC_KINDS) if spec.n_missing_train > 0
        ]

    # ------------------------------------------------------------------------ persistence
    def save(self, path: str | PathLike[str]) -> None:
        """Writes the fitted encoder with skops (no pickle).

        Arguments:
            path: file to write (conventionally ``*.skops``).
        """
        check_is_fitted(self)
        state = {
            "format": _FORMAT,
            "params": {**self.get_params(), "exclude": list(self.exclude)},
            "schema": json.dumps(self.schema_.to_dict()),
            **{name: getattr(self, name) for name in _PARTS},
            "atoms_": self.atoms_,
            "atom_width_": self.atom_width_,
            "on_grid_": self.on_grid_,
            **({} if getattr(self, "support_", None) is None else self.support_.to_state()),
        }
        sio.dump(state, path)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> TabularEncoder:
        """Reads an encoder written by :meth:`save`; transforms are bit-identical.

        Arguments:
            path: file written by :meth:`save`.

        Raises:
            ValueError: the file holds a type outside ``TRUSTED_TYPES`` or is not an encoder.
        """
        untrusted = sio.get_untrusted_types(file=path)
        refused = sorted(set(untrusted) - TRUSTED_TYPES)
        if refused:
            raise ValueError(f"refusing to load {path}: untrusted types {refused}")
        state = sio.load(path, trusted=untrusted)
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved TabularEncoder")
        params = dict(state["params"])
        params["exclude"] = tuple(params["exclude"])
        params.setdefault("atom_share", None)  # saved before atoms existed
        encoder = cls(**params)
        encoder.schema_ = Schema.from_dict(json.loads(state["schema"]))
        for name in _PARTS:
            setattr(encoder, name, state[name])
        n_cont = len(encoder.schema_.of_kind("continuous"))
        # Encoders saved before atoms existed had none.
        encoder.atoms_ = list(state.get("atoms_", [np.empty(0)] * n_cont))
        encoder.atom_width_ = state.get("atom_width_", np.zeros(n_cont))
        # Encoders saved before the support rule keep theirs (a loaded model scores as it did
        # when saved): zero density between grid points, or before that none.
        n_codes = len(encoder.schema_.of_kind("discrete", "binary"))
        encoder.on_grid_ = np.asarray(state.get("on_grid_", np.zeros(n_codes, dtype=bool)),
                                      dtype=bool)
        encoder.support_ = None
        if "off_support_mass_" in state:
            encoder.support_ = Support(encoder.on_grid_, state["support_levels_"],
                                       state["off_support_mass_"])
        encoder._finish()
        return encoder


def _seen(text: NDArray[np.object_], spec: ColumnSpec) -> NDArray[np.bool_]:
    """Which values of a categorical column occurred in training (hash lookup, None-safe)."""
    return pd.Series(text, dtype=object).isin(spec.categories).to_numpy()


def _n_rows(values: dict[str, NDArray[Any]]) -> int:
    return len(next(iter(values.values())))


def _impute(x: NDArray[np.float64], statistics: NDArray[np.float64]) -> NDArray[np.float64]:
    """``SimpleImputer.transform`` of a float matrix: NaN replaced by its column's statistic
    (a copy; no column is all-missing, schema checks refuse that at fit)."""
    return np.where(np.isnan(x), statistics, x)


def _centre(scaler: StandardScaler | RobustScaler) -> NDArray[np.float64]:
    """What a scaler subtracts: ``mean_`` (StandardScaler) or ``center_`` (RobustScaler)."""
    return scaler.mean_ if isinstance(scaler, StandardScaler) else scaler.center_


def _cdf_knots(
    quantiles: NDArray[np.float64], references: NDArray[np.float64], n_observed: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Knots ``(x, F)`` of a strictly increasing piecewise-linear CDF with 0 < F < 1."""
    x, group = np.unique(quantiles, return_inverse=True)
    # Tied quantiles are a point mass: one knot at their mean reference keeps F' finite.
    cdf = np.bincount(group, weights=references) / np.bincount(group)
    eps = 0.5 / n_observed
    return x, np.clip(cdf, eps, 1.0 - eps)


def _normal_scores(
    x: NDArray[np.float64], xk: NDArray[np.float64], fk: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``z = Phi^-1(F(x))`` and ``log dz/dx``, linear in ``z`` beyond the outer knots."""
    seg = np.clip(np.searchsorted(xk, x, side="right") - 1, 0, len(xk) - 2)
    slope = (fk[seg + 1] - fk[seg]) / (xk[seg + 1] - xk[seg])
    inside = np.clip(x, xk[0], xk[-1])
    z = ndtri(fk[seg] + slope * (inside - xk[seg]))
    # dz/dx = F'(x) / phi(z)
    log_dz = np.log(slope) + 0.5 * z**2 + LOG_SQRT_2PI
    zk = ndtri(fk[[0, 1, -2, -1]])
    for outside, z_end, x_end, z_slope in (
        (x < xk[0], zk[0], xk[0], (zk[1] - zk[0]) / (xk[1] - xk[0])),
        (x > xk[-1], zk[3], xk[-1], (zk[3] - zk[2]) / (xk[-1] - xk[-2])),
    ):
        z[outside] = z_end + z_slope * (x[outside] - x_end)
        log_dz[outside] = np.log(z_slope)
    return z, log_dz
