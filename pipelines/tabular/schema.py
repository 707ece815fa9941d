"""What a table looks like: column kinds inferred at fit time (:func:`infer_schema`), and the
:class:`Schema` later frames and records are checked against (:mod:`pipelines.tabular.checks`).

Column kinds (:mod:`pipelines.tabular.columns`):

* ``categorical``: object, string or category dtype (:mod:`pipelines.tabular.text`).
* ``binary``: bool dtype, or a numeric column with exactly 2 distinct values.
* ``discrete``: a numeric column with at most ``max_discrete_levels`` distinct values (off a
  regular grid, only when its levels seen once hold at most ``SINGLETON_SHARE`` of its rows:
  80 rows of a continuous column with an atom show ten values once and one 70 times), or whose
  distinct values lie on a regular grid (every ``(v - min) / step`` within ``GRID_TOL`` of an
  integer, ``step`` = smallest gap) with fewer distinct values than half its rows. The grid rule
  finds integer-valued columns even after standardisation (e.g. pixel values 0..255). A constant
  column is discrete with ``step`` 1.0, so that it gets one unit-wide cell, never a point mass.
* ``continuous``: any other numeric column.

Dtype decides at fit time: a column of numeric strings is categorical. Other dtypes (datetime,
timedelta, complex, ...) are rejected: exclude or convert them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from pipelines.errors import SchemaError, shown
from pipelines.tabular.checks import (
    as_float,
    check_frame,
    check_names,
    plain_values,
    reject_complex,
)
from pipelines.tabular.columns import GRID_TOL, ColumnSpec
from pipelines.tabular.text import as_text, is_text

# Most share of a column's rows its levels seen once may hold for a column of few levels off a
# grid to be discrete (infer_schema).
SINGLETON_SHARE = 0.05
SCHEMA_VERSION = 1
# A text column whose values are numbers but for fewer than this share's complement is a
# numeric column with bad values (infer_schema).
STRAY_TEXT_SHARE = 0.9


@dataclass(frozen=True)
class Schema:
    """The columns an encoder was fitted on, in training order.

    Arguments:
        columns: one spec per encoded column.
        exclude: names ignored at fit and check time (ids, timestamps, labels).
        n_rows: training rows.
        text_folding: categorical text is folded by :func:`fold_text`, at training and
            scoring alike (False: schemas saved before folding existed, which keep comparing
            text as given, so that their models score as they did).
    """

    columns: tuple[ColumnSpec, ...]
    exclude: tuple[str, ...] = ()
    n_rows: int = 0
    text_folding: bool = False

    @property
    def names(self) -> list[str]:
        """Encoded column names, in training order."""
        return [c.name for c in self.columns]

    def of_kind(self, *kinds: str) -> list[ColumnSpec]:
        """The specs of the given kinds, in training order."""
        return [c for c in self.columns if c.kind in kinds]

    def __getitem__(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (plain str, int, float, None and lists)."""
        columns = []
        for spec in self.columns:
            entry = asdict(spec)
            if spec.categories is not None:
                entry["categories"] = list(spec.categories)
            columns.append(entry)
        return {
            "version": SCHEMA_VERSION,
            "n_rows": self.n_rows,
            "exclude": list(self.exclude),
            "columns": columns,
            "text_folding": self.text_folding,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        """Inverse of :meth:`to_dict`.

        Arguments:
            data: a dict written by :meth:`to_dict` (possibly through JSON).
        """
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema version {data.get('version')!r}")
        columns = []
        for entry in data["columns"]:
            entry = dict(entry)
            if entry.get("categories") is not None:
                entry["categories"] = tuple(entry["categories"])
            columns.append(ColumnSpec(**entry))
        return cls(tuple(columns), tuple(data["exclude"]), int(data["n_rows"]),
                   bool(data.get("text_folding", False)))

    def check(self, frame: pd.DataFrame) -> dict[str, NDArray[Any]]:
        """Verifies ``frame`` against the schema and returns its values per column
        (:func:`~pipelines.tabular.checks.check_frame`).

        Arguments:
            frame: the records; excluded columns may be present or absent.

        Raises:
            SchemaError: as :func:`~pipelines.tabular.checks.check_frame`.
        """
        return check_frame(frame, self.columns, self.exclude, self.text_folding)

    def records_frame(self, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """JSON-like records as the frame :meth:`check` takes: one column per name of the
        schema, in training order (other keys dropped, an absent key a missing value).

        Arguments:
            records: one mapping per record, keyed by column name.
        """
        return pd.DataFrame.from_records(records, columns=self.names)

    def check_records(self, records: Sequence[Mapping[str, Any]]) -> dict[str, NDArray[Any]]:
        """:meth:`check` of :meth:`records_frame`, without building the frame when it can.

        A frame costs ~0.5 ms to build and check whatever its rows (pandas' dtype inference,
        Arrow-backed strings): most of a one-record request. Here a column is read value by
        value when its values are plain (numbers, or booleans where the column takes them, and
        None in numeric columns; str and None in categorical ones) and :meth:`check` would
        accept them; then the values are what :meth:`check` gives, bit for bit, whatever dtype
        pandas would infer. Anything else (a string in a numeric column, a number in a
        categorical one, an absent key, any value :meth:`check` rejects) goes through
        :meth:`check` of the frame, so rejections are its own: same message, column and row.
        tests/tabular/test_schema.py compares the two paths on hostile records.

        Arguments:
            records: one dict per record, keyed by column name (other keys are ignored).

        Raises:
            SchemaError: as :meth:`check` of :meth:`records_frame`.
        """
        values = plain_values(self.columns, self.text_folding, records)
        return self.check(self.records_frame(records)) if values is None else values



def infer_schema(
    frame: pd.DataFrame, *, exclude: Iterable[str] = (), max_discrete_levels: int = 20
) -> Schema:
    """Classifies the columns of a training frame (see the module docstring for the rules).

    Arguments:
        frame: training records.
        exclude: columns to ignore (may be absent from ``frame``).
        max_discrete_levels: numeric columns with at most this many distinct values are discrete.

    Raises:
        SchemaError: empty frame, no columns left, unsupported dtype, an all-missing column or an
            infinite value.
    """
    check_names(frame)
    excluded = tuple(exclude)
    specs = []
    for name in frame.columns:
        if name in excluded:
            continue
        series = frame[name]
        n_missing = int(series.isna().sum())
        if n_missing == len(series):
            raise SchemaError("only missing values", column=name)
        if is_text(series.dtype):
            _reject_stray_text(frame, name, series)
            specs.append(_categorical_spec(name, series, n_missing))
        elif pd.api.types.is_bool_dtype(series.dtype):
            # bools code as 0/1 whichever values occur
            specs.append(
                ColumnSpec(
                    name,
                    "binary",
                    str(series.dtype),
                    n_missing,
                    n_missing / len(series),
                    n_unique=int(series.nunique()),
                    min=0.0,
                    max=1.0,
                    step=1.0,
                )
            )
        elif pd.api.types.is_complex_dtype(series.dtype):
            reject_complex(frame, name, series)
        elif pd.api.types.is_numeric_dtype(series.dtype):
            x = as_float(frame, name, series)
            specs.append(_numeric_spec(name, str(series.dtype), x, max_discrete_levels))
        else:
            raise SchemaError(f"unsupported dtype {series.dtype}; exclude or convert it",
                              column=name)
    if not specs:
        raise SchemaError("no columns to encode (all excluded)")
    return Schema(tuple(specs), excluded, len(frame), text_folding=True)


def _reject_stray_text(frame: pd.DataFrame, name: str, series: pd.Series) -> None:
    """A text column whose values are numbers but for a few is taken for a numeric column with
    bad values (a CSV reader makes a numeric column text for one ``abc``): modelled as text,
    every new number would be an unseen category. Pandas' category dtype says text is meant.

    Arguments:
        frame: the training frame (for messages).
        name: the column's name.
        series: the column, of a text dtype.
    """
    if isinstance(series.dtype, pd.CategoricalDtype):
        return
    present = series.notna().to_numpy()
    text = series.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce").notna().to_numpy()
    strays = np.flatnonzero(present & ~numbers)
    if len(strays) and numbers.sum() >= STRAY_TEXT_SHARE * present.sum():
        problem = (f"expected a number: {int(numbers.sum())} of {int(present.sum())} values of "
                   f"this column are numbers, this one is {shown(series.iloc[strays[0]])} "
                   "(fix it; a column of categories that look like numbers needs the pandas "
                   "'category' dtype)")
        raise SchemaError.at(frame, name, int(strays[0]), problem)


def _numeric_spec(name: str, dtype: str, x: NDArray[np.float64], max_levels: int) -> ColumnSpec:
    """Kind and grid step of a numeric column (``x`` finite or NaN, not all NaN)."""
    observed = x[~np.isnan(x)]
    levels, counts = np.unique(observed, return_counts=True)
    n_missing = len(x) - len(observed)
    common: dict[str, Any] = dict(
        n_missing_train=n_missing,
        missing_rate=n_missing / len(x),
        n_unique=len(levels),
        min=float(levels[0]),
        max=float(levels[-1]),
    )
    if len(levels) == 1:
        return ColumnSpec(name, "discrete", dtype, step=1.0, **common)
    gap = float(np.diff(levels).min())
    span = float(levels[-1] - levels[0])
    # Spread the rounding error of the smallest gap over the whole span.
    grid = span / round(span / gap)
    codes = (levels - levels[0]) / grid
    on_grid = bool(np.abs(codes - np.round(codes)).max() <= GRID_TOL)
    if len(levels) == 2:
        return ColumnSpec(name, "binary", dtype, step=span, **common)
    # Levels seen once are the mark of a continuous column a small sample shows few values of
    # (Good-Turing: they estimate the probability of a value not seen yet).
    repeated = (counts == 1).sum() <= SINGLETON_SHARE * len(observed)
    if ((len(levels) <= max_levels and (on_grid or repeated))
            or (on_grid and len(levels) < len(observed) / 2)):
        # Off the grid, the smallest gap keeps every level's unit code cell disjoint.
        return ColumnSpec(name, "discrete", dtype, step=grid if on_grid else gap, **common)
    return ColumnSpec(name, "continuous", dtype, **common)


def _categorical_spec(name: str, series: pd.Series, n_missing: int) -> ColumnSpec:
    """Spec of an object / string / category column."""
    categories = tuple(sorted({value for value in as_text(series, fold=True)
                               if value is not None}))
    return ColumnSpec(
        name,
        "categorical",
        str(series.dtype),
        n_missing,
        n_missing / len(series),
        categories=categories,
        n_unique=len(categories),
    )

