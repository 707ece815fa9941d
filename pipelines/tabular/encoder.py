"""``TabularEncoder``: a pandas frame -> float64 matrix for a flow, with the log-Jacobian.

Layout of the output, in this order: continuous columns; discrete and binary codes; one-hot
codes of categorical columns; missing indicators of numeric columns that had missing values in
training (names in ``feature_names_out_``).

Scores stay exact densities (the *score* and *discrete columns* contracts, docs/design.md).
``transform`` returns ``(X, log_jac)`` with ``log_jac = log|det d(encoded)/d(raw)|`` per
record, so ``-(flow.log_prob(X) + log_jac)`` is ``-log p`` of the record in raw units, where
for discrete parts the "raw unit" is one cell:

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
* ``quantile``: ``z = Phi^-1(F(x))`` through the training quantiles, with an exact
  log-Jacobian (:mod:`pipelines.tabular.quantile`).
* Atoms: a continuous value held by at least ``atom_share`` of the training rows is
  dequantised over a histogram cell (:mod:`pipelines.tabular.continuous`).
* A constant column is discrete with step 1 (one cell), never an infinite density.

Policies:

* A value of a discrete or binary column off its support (between the points of a grid; between
  or beyond the levels seen of a column on no grid) is scored at its nearest support point's
  cell with a finite penalty growing with its distance (:mod:`pipelines.tabular.support`,
  ``support_``); the log-Jacobian carries the penalty. A value beyond the training range but on
  a grid keeps its cell and is scored by the flow's tails.
* Unseen categories are scored, not rejected, in the column's "<unknown>" one-hot slot
  (:mod:`pipelines.tabular.onehot`); :meth:`TabularEncoder.unknown_counts` counts them.
* Missing values are allowed only where training had some. Categorical: their own category
  ("<missing>"). Numeric: imputed (median for continuous, most frequent level for discrete) and
  flagged by a missing-indicator code. The log-Jacobian treats an imputed value as observed.
  Imputed continuous values are a point mass the flow may overfit (per-record dequantisation
  would need per-record widths). Infinite values are always an error.
* Input checks: :meth:`~pipelines.tabular.schema.Schema.check` (missing / unexpected columns,
  dtypes, non-numbers, NaN, inf); rows in messages are 0-based positions. :meth:`transform_records`
  takes JSON-like records and checks a few without a frame
  (:meth:`~pipelines.tabular.schema.Schema.check_records`), bit-identical to the frame path.
* Range: an encoded continuous or code entry must be within ``MAX_ENCODED`` (1e6) scale
  units of the centre of the training data, checked on the raw values before encoding and on
  the encoded matrix after (:mod:`pipelines.tabular.ranges`).

Saved with skops (no pickle) by :mod:`pipelines.tabular.artifact`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.base import BaseEstimator
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

from pipelines.errors import InputError
from pipelines.tabular import continuous, ranges
from pipelines.tabular.columns import NUMERIC_KINDS, ColumnSpec
from pipelines.tabular.onehot import count_unknown, one_hot, one_hot_tables, seen, slots, tokens
from pipelines.tabular.quantile import cdf_knots, normal_scores
from pipelines.tabular.schema import infer_schema
from pipelines.tabular.support import LegacySupport, Support
from pipelines.tabular.text import as_text

Scaling = Literal["standard", "robust", "quantile"]
# Most records TabularEncoder.transform_records checks without a frame: faster than through a
# frame up to about this many (its per-value Python work grows with the rows; the frame's
# mostly fixed cost does not; benchmarks/record_path.py, numbers in benchmarks/README.md).
RECORD_PATH_ROWS = 1024


class TabularEncoder(BaseEstimator):
    """Encodes a table for a normalizing flow, with dequantised codes and a log-Jacobian (the
    module docstring says how).

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
    column, its lookup tables: :mod:`pipelines.tabular.onehot`). ``transform`` computes with
    numpy from these attributes, bit-identical to the scikit-learn parts' own ``transform``
    (:meth:`_transform_sklearn`, the reference).
    """

    support_: Support | LegacySupport  # fitted, or read by pipelines.tabular.artifact

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
            raise InputError(f"scaling must be standard, robust or quantile, got {self.scaling!r}")
        if isinstance(self.exclude, str):
            raise TypeError(f"exclude must be a sequence of names, got the string {self.exclude!r}")
        if self.max_discrete_levels < 2 or self.max_categories < 2:
            raise InputError("max_discrete_levels and max_categories must be >= 2")
        if self.atom_share is not None and not 0 < self.atom_share <= 1:
            raise InputError(f"atom_share must be in (0, 1] or None, got {self.atom_share}")
        schema = infer_schema(
            df if schema_rows is None else schema_rows, exclude=self.exclude,
            max_discrete_levels=self.max_discrete_levels,
        )
        values = schema.check(df)
        self.schema_ = schema
        cont = self.continuous_values(values)
        self.cont_imputer_ = self.cont_scaler_ = None
        if cont.shape[1]:
            # Scalers ignore NaN when fitting, so imputed values do not shrink the spread.
            self.cont_imputer_ = SimpleImputer(strategy="median").fit(cont)
            n_observed = int((~np.isnan(cont)).sum(axis=0).min())
            self.cont_scaler_ = continuous.new_scaler(self.scaling, n_observed).fit(cont)
            continuous.check_scalable(self.cont_scaler_, cont, schema.of_kind("continuous"))
        self.atoms_, self.atom_width_ = continuous.find_atoms(cont, self.atom_share, self.scaling)

        # Every row the schema saw shows the support (the levels a column takes).
        self.support_ = Support.fit(
            schema.of_kind("discrete", "binary"),
            self._raw_codes(values if schema_rows is None else schema.check(schema_rows)))
        self.on_grid_ = self.support_.on_grid
        discrete, _ = self._snapped(values)
        self.code_imputer_ = None
        if discrete.shape[1]:
            self.code_imputer_ = SimpleImputer(strategy="most_frequent").fit(discrete)
        categorical = self.schema_.of_kind("categorical")
        self.onehot_ = None
        if categorical:
            self.onehot_ = OneHotEncoder(
                categories=[slots(spec) for spec in categorical],
                max_categories=self.max_categories,
                handle_unknown="error",  # unknowns are mapped to the UNKNOWN slot beforehand
                sparse_output=False,
                dtype=np.float64,
            ).fit(tokens(values, self.schema_.of_kind("categorical")))
        with_missing = self.with_missing()
        self.indicator_ = None
        if with_missing:
            self.indicator_ = MissingIndicator(features="all").fit(
                np.column_stack([values[name] for name in with_missing])
            )

        self.code_scaler_ = None
        codes = self._codes_sklearn(values, discrete)
        if codes.shape[1]:
            self.code_scaler_ = StandardScaler().fit(codes + 0.5)
            # The flow sees c + U(0, 1): mean c + 1/2 and variance var(c) + 1/12.
            self.code_scaler_.scale_ = np.sqrt(self.code_scaler_.var_ + 1.0 / 12.0)
        self.finish()
        return self

    def finish(self) -> None:
        """Sets the attributes derived from the schema and the fitted parts (fit and load)."""
        schema = self.schema_
        self.feature_names_in_ = np.array(schema.names, dtype=object)
        self.n_features_in_ = len(schema.names)
        self.quantile_knots_ = []
        if self.scaling == "quantile" and self.cont_scaler_ is not None:
            scaler = self.cont_scaler_
            self.quantile_knots_ = [
                cdf_knots(scaler.quantiles_[:, j], scaler.references_,
                          schema.n_rows - spec.n_missing_train)
                for j, spec in enumerate(schema.of_kind("continuous"))]
        categorical = schema.of_kind("categorical")
        one_hot_names = ([] if self.onehot_ is None else
                         list(self.onehot_.get_feature_names_out([c.name for c in categorical])))
        self.onehot_width_ = len(one_hot_names)
        self.onehot_slots_ = [] if self.onehot_ is None else one_hot_tables(self.onehot_,
                                                                            categorical)
        names = [spec.name for spec in self.numeric_specs()] + one_hot_names
        names += [f"{name}_missing" for name in self.with_missing()]
        self.feature_names_out_ = np.array(names, dtype=object)
        self.n_features_out_ = len(names)
        n_cont = len(schema.of_kind("continuous"))
        width = np.zeros(self.n_features_out_)
        if self.code_scaler_ is not None:
            width[n_cont:] = 1.0 / self.code_scaler_.scale_
        self.dequantization_width_ = width
        self.raw_range_ = ranges.raw_ranges(self.cont_scaler_, self.quantile_knots_,
                                     schema.of_kind("discrete", "binary"), self.code_scaler_)

    def numeric_specs(self) -> list[ColumnSpec]:
        """Continuous, then discrete and binary specs: the encoded matrix's first columns."""
        return self.schema_.of_kind("continuous") + self.schema_.of_kind("discrete", "binary")

    # ---------------------------------------------------------------------------- transform
    def transform(self, df: pd.DataFrame, offset: float = 0.5
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
        # before encoding: a huge code would overflow to inf
        ranges.check_range(df, values, self.numeric_specs(), self.raw_range_)
        encoded, log_jac = self._encode(values, offset)
        ranges.check_encoded(df, encoded, self.numeric_specs(), self.raw_range_)
        return encoded, log_jac

    def transform_records(
        self, records: Sequence[Mapping[str, Any]]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], dict[str, int]]:
        """:meth:`transform` (scoring offset 0.5) and :meth:`unknown_counts` of
        ``schema_.records_frame(records)``, bit for bit, from one check of the records.

        Up to ``RECORD_PATH_ROWS`` records are checked by ``Schema.check_records``, without a
        frame where their values are plain (a one-record request spent ~0.6 ms in pandas);
        more go through the frame, which is faster per row. Every rejection, even one found on
        the way, is raised by :meth:`transform` of the frame, so that its message is the frame
        path's own.

        Arguments:
            records: one dict per record, keyed by column name (other keys are ignored).

        Raises:
            SchemaError: as :meth:`transform`.
        """
        check_is_fitted(self)
        if len(records) <= RECORD_PATH_ROWS:
            values = self.schema_.check_records(records)
            # range first, as transform: 1e300 would overflow the encoded matrix
            if ranges.within_range(values, self.numeric_specs(), self.raw_range_):
                encoded, log_jac = self._encode(values, 0.5)
                if ranges.encoded_fine(encoded, len(self.raw_range_)).all():
                    unknown = count_unknown(values, self.schema_.of_kind("categorical"),
                                            self.onehot_slots_)
                    return encoded, log_jac, unknown
        frame = self.schema_.records_frame(records)
        encoded, log_jac = self.transform(frame)
        return encoded, log_jac, self.unknown_counts(frame)

    def _transform_sklearn(self, df: pd.DataFrame, offset: float = 0.5
                           ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """:meth:`transform` through the fitted scikit-learn parts: the reference that
        :meth:`_encode` must equal bit for bit (tests/tabular/test_encoder.py).

        Arguments:
            df: records, as for :meth:`transform`.
            offset: position inside each code cell, as for :meth:`transform`.
        """
        check_is_fitted(self)
        values = self.schema_.check(df)
        ranges.check_range(df, values, self.numeric_specs(), self.raw_range_)
        encoded, log_jac = self._encode(values, offset, sklearn=True)
        ranges.check_encoded(df, encoded, self.numeric_specs(), self.raw_range_)
        return encoded, log_jac

    def _encode(self, values: dict[str, NDArray[Any]], offset: float, sklearn: bool = False
                ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The encoded matrix and log-Jacobian of checked values (:meth:`Schema.check`).

        Plain numpy on the fitted attributes by default: the scikit-learn transformers'
        per-call input checks and output wrappers cost most of a few records' encoding. Same
        operations in the same order: bit-identical to ``sklearn=True``, the reference.

        Arguments:
            values: the checked values per column.
            offset: position inside each code cell (see :meth:`transform`).
            sklearn: go through the scikit-learn transformers (the reference path).
        """
        discrete, factors = self._snapped(values)
        log_jac = factors.sum(axis=1)
        blocks = []
        if self.cont_scaler_ is not None and self.cont_imputer_ is not None:
            cont = self.continuous_values(values)
            if sklearn:
                cont = self.cont_imputer_.transform(cont)
            else:
                cont = continuous.impute(cont, self.cont_imputer_.statistics_)
            if offset != 0.5:  # scoring (0.5) puts an atom at its own value: nothing to move
                for j, at_atom in continuous.atom_masks(cont, self.atoms_):
                    cont[at_atom, j] += (offset - 0.5) * self.atom_width_[j]
            if self.scaling == "quantile":
                z = np.empty_like(cont)
                for j, (xk, fk) in enumerate(self.quantile_knots_):
                    z[:, j], log_dz = normal_scores(cont[:, j], xk, fk)
                    log_jac += log_dz
            else:
                if sklearn:
                    z = self.cont_scaler_.transform(cont)
                else:  # StandardScaler.transform and RobustScaler.transform, in place
                    z = cont - continuous.centre(self.cont_scaler_)
                    z /= self.cont_scaler_.scale_
                log_jac -= np.log(self.cont_scaler_.scale_).sum()
            blocks.append(z)
        if self.code_scaler_ is not None:
            codes = (self._codes_sklearn(values, discrete) if sklearn
                     else self._codes(values, discrete)) + offset
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
        if self.cont_scaler_ is not None and self.cont_imputer_ is not None:
            cont = continuous.impute(self.continuous_values(values), self.cont_imputer_.statistics_)
            for j, at_atom in continuous.atom_masks(cont, self.atoms_):
                widths[at_atom, j] = self.atom_width_[j] / self.cont_scaler_.scale_[j]
        return widths

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
        ranges.check_range(df, self.schema_.check(df), self.numeric_specs(), self.raw_range_)

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
            known = seen(text, spec) | pd.isna(text)
            counts[spec.name] = int((~known).sum())
        return counts

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.object_]:
        """Names of the encoded features (``feature_names_out_``)."""
        check_is_fitted(self)
        return self.feature_names_out_

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "schema_")

    # ------------------------------------------------------------------------- the blocks
    def continuous_values(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """The continuous columns' checked values as one matrix."""
        specs = self.schema_.of_kind("continuous")
        if not specs:
            return np.empty((_n_rows(values), 0))
        return np.column_stack([values[spec.name] for spec in specs])

    def off_support(self, values: dict[str, NDArray[Any]]) -> NDArray[np.bool_]:
        """``(n, n_code_columns)``: where a discrete or binary column's value is off its support
        (:mod:`pipelines.tabular.support`). Missing values are not.

        Arguments:
            values: checked values (:meth:`Schema.check`).
        """
        return self.support_.off(self._raw_codes(values))

    def support_factors(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """``(n, n_code_columns)``: each discrete and binary value's factor of the record's
        log-density (:mod:`pipelines.tabular.support`).

        Arguments:
            values: checked values (:meth:`Schema.check`).
        """
        return self._snapped(values)[1]

    def _snapped(self, values: dict[str, NDArray[Any]]
                 ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The flow's codes (off-support ones at their nearest point) and support factors."""
        return self.support_.snap(self._raw_codes(values))

    @property
    def grid_columns(self) -> dict[str, float]:
        """The discrete and binary columns fit put on a grid, with their steps (raw units)."""
        check_is_fitted(self)
        specs = zip(self.schema_.of_kind("discrete", "binary"), self.on_grid_, strict=True)
        return {spec.name: spec.grid[1] for spec, grid in specs if grid}

    def _raw_codes(self, values: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
        """Codes ``(x - min) / step`` of discrete and binary columns (NaN where missing)."""
        specs = self.schema_.of_kind("discrete", "binary")
        if not specs:
            return np.empty((_n_rows(values), 0))
        return np.column_stack([(values[s.name] - s.grid[0]) / s.grid[1] for s in specs])

    def _codes(self, values: dict[str, NDArray[Any]], discrete: NDArray[np.float64]
               ) -> NDArray[np.float64]:
        """All integer codes (cell lower corners): discrete, one-hot, missing indicators.

        Plain numpy from the fitted parts; :meth:`_codes_sklearn` is the reference it equals.

        Arguments:
            values: the checked values per column.
            discrete: their snapped discrete codes (:meth:`_snapped`).
        """
        n = _n_rows(values)
        blocks = [np.empty((n, 0))]
        if self.code_imputer_ is not None:
            blocks.append(continuous.impute(discrete, self.code_imputer_.statistics_))
        if self.onehot_ is not None:
            blocks.append(one_hot(values, self.schema_.of_kind("categorical"), self.onehot_slots_,
                                  self.onehot_width_, n))
        if self.indicator_ is not None:  # MissingIndicator(features="all"): isnan, as 0/1
            present = np.column_stack([values[name] for name in self.with_missing()])
            blocks.append(np.isnan(present).astype(np.float64))
        return np.hstack(blocks)

    def _codes_sklearn(self, values: dict[str, NDArray[Any]], discrete: NDArray[np.float64]
                       ) -> NDArray[np.float64]:
        """:meth:`_codes` through the scikit-learn transformers (fit, and the reference)."""
        blocks = [np.empty((_n_rows(values), 0))]
        if self.code_imputer_ is not None:
            blocks.append(self.code_imputer_.transform(discrete))
        if self.onehot_ is not None:
            categorical = self.schema_.of_kind("categorical")
            blocks.append(self.onehot_.transform(tokens(values, categorical)))
        if self.indicator_ is not None:
            present = np.column_stack([values[name] for name in self.with_missing()])
            blocks.append(self.indicator_.transform(present).astype(np.float64))
        return np.hstack(blocks)

    def with_missing(self) -> list[str]:
        """Numeric columns that get a missing indicator."""
        return [spec.name for spec in self.schema_.of_kind(*NUMERIC_KINDS)
                if spec.n_missing_train > 0]


def _n_rows(values: dict[str, NDArray[Any]]) -> int:
    return len(next(iter(values.values())))
