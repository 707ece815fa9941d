"""Value checks: a frame, or JSON-like records, against the columns training saw.

:func:`check_frame` verifies a frame and returns its values column by column, raising
:class:`~pipelines.errors.SchemaError` (naming the column and the 0-based positional row) for
anything the encoder cannot score. :func:`plain_values` reads JSON-like records without
building a frame, where their values are plain, giving exactly what :func:`check_frame` of
their frame gives.

At check time a numeric column given as strings (e.g. from CSV or JSON) is accepted if every
non-missing value parses as a number. Values are checked, not only dtypes (a JSON record
holding ``true`` turns a float column into object dtype): numeric columns reject booleans
unless their levels are 0 and 1 (a bool column, or a binary 0/1 column, where they count as 1
and 0); a column trained as bool takes only true, false, 1 and 0; a numeric binary column
given a third value scores it as a discrete column would (an anomaly can take a value normal
records never do); a categorical column rejects containers (:mod:`pipelines.tabular.text`).
A complex number is rejected in any column, whatever the dtype that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from pipelines.errors import SchemaError, shown, shown_names
from pipelines.tabular.columns import BOOL_DTYPES, ColumnSpec
from pipelines.tabular.text import COMPLEX_TYPES, as_text, complex_problem, fold_text, is_text

BOOLEAN_WORDS = {"true": 1.0, "false": 0.0}
FLOAT64_MAX = float(np.finfo(np.float64).max)
# What plain_values reads without a frame in a numeric column, and the largest int it reads:
# up to 2**53 an int is exact in float64, so every dtype pandas may infer for its column
# (int64, uint64, float64, object) gives float(value).
_PLAIN_NUMBERS = frozenset({float, int, bool, type(None)})
EXACT_INT = 2**53


def check_frame(frame: pd.DataFrame, columns: Sequence[ColumnSpec], exclude: Sequence[str],
                text_folding: bool) -> dict[str, NDArray[Any]]:
    """Verifies ``frame`` against the columns and returns its values per column.

    Numeric kinds come back as float64 arrays (NaN where missing), categorical columns as
    object arrays of ``str`` (None where missing). Missing values are allowed only in
    columns that had some in training; infinities never.

    Arguments:
        frame: the records; excluded columns may be present or absent.
        columns: the schema's columns.
        exclude: the columns ignored.
        text_folding: fold categories (``Schema.text_folding``).

    Raises:
        SchemaError: empty frame, missing or unexpected columns, wrong dtypes, values that
            are not numbers (booleans too, unless the column's levels are 0 and 1), a bool
            column's value other than true/false/1/0, a container (dict, list, ...) in a
            categorical column, or missing/infinite values where not allowed.
    """
    given = check_names(frame)
    present = set(given)
    names = [spec.name for spec in columns]
    missing = [name for name in names if name not in present]
    if missing:
        raise SchemaError.of_columns(f"missing column(s): {shown_names(missing)}", missing)
    known = set(names) | set(exclude)
    unexpected = [str(name) for name in given if name not in known]
    if unexpected:
        raise SchemaError.of_columns(
            f"unexpected column(s) not in the schema: {shown_names(unexpected)}", unexpected)
    values: dict[str, NDArray[Any]] = {}
    for spec in columns:
        series = frame[spec.name]
        if spec.kind == "categorical":
            values[spec.name] = as_text(series, fold=text_folding)
        else:
            values[spec.name] = _numeric_values(frame, spec, series)
        if spec.n_missing_train == 0:
            isna = pd.isna(values[spec.name])
            if isna.any():
                raise SchemaError.at(
                    frame, spec.name, int(np.flatnonzero(isna)[0]),
                    "missing value (NaN/None), but the column had none in training")
    return values


def plain_values(columns: Sequence[ColumnSpec], text_folding: bool,
                 records: Sequence[Mapping[str, Any]]) -> dict[str, NDArray[Any]] | None:
    """The checked values of records whose every column is plain (``Schema.check_records``),
    else None.

    Arguments:
        columns: the schema's columns.
        text_folding: fold categories (``Schema.text_folding``).
        records: the records.
    """
    if not records or not all(type(record) is dict for record in records):
        return None
    values: dict[str, NDArray[Any]] = {}
    for spec in columns:
        try:
            column = [record[spec.name] for record in records]
        except KeyError:  # a missing value (or a rejection): the frame decides
            return None
        checked: NDArray[Any] | None
        if spec.kind == "categorical":
            checked = _plain_text(spec, column, text_folding)
        else:
            checked = _plain_numbers(spec, column)
        if checked is None:
            return None
        values[spec.name] = checked
    return values


def _plain_numbers(spec: ColumnSpec, column: list[Any]) -> NDArray[np.float64] | None:
    """A numeric column's values as :func:`_numeric_values` gives them, or None unless every
    value is a float, an int within ``EXACT_INT``, None, or a boolean where the column takes
    booleans, and :func:`_numeric_values` and the missing-value check would accept them all.

    Arguments:
        spec: the column's training spec.
        column: its values, one per record.
    """
    types = set(map(type, column))
    if not types <= _PLAIN_NUMBERS:
        return None
    if bool in types and not (spec.kind == "binary" and (spec.min, spec.max) == (0.0, 1.0)):
        return None  # _reject_booleans
    if int in types and any(type(v) is int and not -EXACT_INT <= v <= EXACT_INT
                            for v in column):
        return None
    x = np.array(column, dtype=np.float64)  # None -> NaN, True -> 1.0, as pandas converts
    missing = np.isnan(x)
    if np.isinf(x).any() or (spec.n_missing_train == 0 and missing.any()):
        return None
    if spec.dtype in BOOL_DTYPES and ((x != 0.0) & (x != 1.0) & ~missing).any():
        return None  # _check_true_or_false
    return x


def _plain_text(spec: ColumnSpec, column: list[Any], fold: bool) -> NDArray[np.object_] | None:
    """A categorical column's values as :func:`as_text` gives them, or None unless every value
    is None or a str that UTF-8 can encode (pandas' Arrow-backed strings cannot hold a lone
    surrogate: building the frame raises, and so must this path), and missing values are
    allowed where there are some.

    Arguments:
        spec: the column's training spec.
        column: its values, one per record.
        fold: fold the text (:func:`fold_text`), as the schema does.
    """
    n_missing = 0
    for value in column:
        if value is None:
            n_missing += 1
        elif type(value) is not str or not (value.isascii() or _encodable(value)):
            return None
    if n_missing and spec.n_missing_train == 0:
        return None
    if fold:
        column = [None if value is None else fold_text(value) for value in column]
    return np.array(column, dtype=object)


def _encodable(text: str) -> bool:
    """Whether UTF-8 can encode ``text`` (not when it holds a lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _numeric_values(
    frame: pd.DataFrame, spec: ColumnSpec, series: pd.Series
) -> NDArray[np.float64]:
    """A numeric column's values as float64, checked against its kind.

    Arguments:
        frame: the frame checked (for messages).
        spec: the column's training spec.
        series: the column.
    """
    if not (spec.kind == "binary" and (spec.min, spec.max) == (0.0, 1.0)):
        _reject_booleans(frame, spec.name, series)
    if spec.dtype in BOOL_DTYPES and is_text(series.dtype):
        return _booleans_from_text(frame, spec.name, series)
    x = as_float(frame, spec.name, series)
    if spec.dtype in BOOL_DTYPES:  # not is_bool_dtype(str): it parses the name, 10 us a call
        _check_true_or_false(frame, spec, series, x)
    return x


def _booleans_from_text(frame: pd.DataFrame, name: str, series: pd.Series
                        ) -> NDArray[np.float64]:
    """A column trained as bool, given as text or mixed values (a CSV reader keeps a column of
    ``True``/``False`` as text once one value is neither): true/false in any case, 1/0, and
    booleans, as 1.0/0.0 (NaN where missing).

    Arguments:
        frame: the frame checked (for messages).
        name: the column name.
        series: the column, object or string dtype.
    """
    text = series.astype("string").str.strip()  # numbers keep their value: str is exact
    x = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    words = text.str.lower().map(BOOLEAN_WORDS).to_numpy(dtype=np.float64, na_value=np.nan)
    x = np.where(np.isnan(x), words, x)
    bad = np.flatnonzero((np.isnan(x) & series.notna().to_numpy())
                        | ((x != 0.0) & (x != 1.0) & ~np.isnan(x)))
    if len(bad):
        row = int(bad[0])
        value = series.iloc[row]
        problem = (complex_problem(value) if isinstance(value, COMPLEX_TYPES)
                   else f"expected true or false (or 1 or 0), got {shown(value)}")
        raise SchemaError.at(frame, name, row, problem)
    return x


def _reject_booleans(frame: pd.DataFrame, name: str, series: pd.Series) -> None:
    """Booleans in a numeric column whose levels are not 0 and 1 are a type error.

    A JSON record holding ``true`` gives the column bool dtype, or object dtype when other
    records hold numbers: only then are values looked at one by one (float columns cost nothing).

    Arguments:
        frame: the frame checked (for messages).
        name: the column name.
        series: the column.
    """
    if pd.api.types.is_bool_dtype(series.dtype):
        flags = series.notna().to_numpy()
    elif pd.api.types.is_object_dtype(series.dtype) or isinstance(
        series.dtype, pd.CategoricalDtype
    ):
        values = series.to_numpy(dtype=object)
        flags = np.fromiter((isinstance(v, bool | np.bool_) for v in values), bool, len(values))
    else:
        return
    if flags.any():
        row = int(np.flatnonzero(flags)[0])
        problem = f"expected a number, got the boolean {shown(series.iloc[row])}"
        raise SchemaError.at(frame, name, row, problem)


def _check_true_or_false(
    frame: pd.DataFrame, spec: ColumnSpec, series: pd.Series, x: NDArray[np.float64]
) -> None:
    """A column trained as bool holds true, false, 1 or 0 (as ``x``: 1.0 or 0.0).

    Only bool columns: a numeric column with two values in training is scored like a discrete
    column when it shows a third (``6_cardio`` has such a column where 6 of its 176 anomalies
    take other values: rejecting them would reject the anomalies).

    Arguments:
        frame: the frame checked (for messages).
        spec: the column's spec.
        series: the column as given (for messages).
        x: its values as float64 (NaN where missing).
    """
    bad = np.flatnonzero((x != 0.0) & (x != 1.0) & ~np.isnan(x))
    if len(bad):
        row = int(bad[0])
        problem = f"expected true or false (or 1 or 0), got {shown(series.iloc[row])}"
        raise SchemaError.at(frame, spec.name, row, problem)


def as_float(frame: pd.DataFrame, name: str, series: pd.Series) -> NDArray[np.float64]:
    """A numeric column as float64 (NaN where missing); strings must parse as numbers."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    if pd.api.types.is_complex_dtype(series.dtype):
        reject_complex(frame, name, series)
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf":
        # NumPy-backed: no NA but NaN, so a plain cast gives what the general branch below
        # does, ~25 us faster for bool columns.
        x = series.to_numpy().astype(np.float64)
    elif pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif is_text(series.dtype):
        try:
            parsed = pd.to_numeric(series, errors="coerce")
        except OverflowError:  # a Python int beyond float64, e.g. a 400-digit JSON literal
            _reject_huge_int(frame, name, series)
            raise
        if pd.api.types.is_complex_dtype(parsed.dtype):  # complex numbers among objects
            reject_complex(frame, name, series)
        bad = np.flatnonzero(parsed.isna().to_numpy() & series.notna().to_numpy())
        if len(bad):
            row = int(bad[0])
            problem = f"expected a number, got {shown(series.iloc[row])}"
            raise SchemaError.at(frame, name, row, problem)
        x = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raise SchemaError(f"expected a numeric column, got dtype {series.dtype}", column=name)
    infinite = np.flatnonzero(np.isinf(x))
    if len(infinite):
        row = int(infinite[0])
        raise SchemaError.at(frame, name, row, f"infinite value {x[row]} is not allowed")
    return x


def reject_complex(frame: pd.DataFrame, name: str, series: pd.Series) -> None:
    """Raises for a column holding complex numbers (of complex dtype, or among objects):
    numpy would cast them to float and discard their imaginary parts with only a warning.
    The row named is the first whose value has an imaginary part (in a column of complex
    dtype every value is complex, the real ones a record held too), else the first complex.

    Arguments:
        frame: the frame checked (for messages).
        name: the column name.
        series: the column.
    """
    values = series.to_numpy(dtype=object)
    complex_rows = [row for row, value in enumerate(values) if isinstance(value, COMPLEX_TYPES)]
    imaginary = [row for row in complex_rows if values[row].imag != 0]
    row = (imaginary or complex_rows)[0]
    raise SchemaError.at(frame, name, row, complex_problem(values[row]))


def _reject_huge_int(frame: pd.DataFrame, name: str, series: pd.Series) -> None:
    """Raises for the first int of an object column that no float64 can hold.

    Arguments:
        frame: the frame checked (for messages).
        name: the column name.
        series: the column (object dtype).
    """
    for row, value in enumerate(series.to_numpy(dtype=object)):
        if isinstance(value, int) and abs(value) > FLOAT64_MAX:  # exact int-float comparison
            problem = (
                f"number out of range: {shown(value)} does not fit a 64-bit float "
                f"(|x| <= {FLOAT64_MAX:.4g}; the model accepts far less, see its encoder)"
            )
            raise SchemaError.at(frame, name, row, problem)


def check_names(frame: pd.DataFrame) -> list[Any]:
    """Checks the frame's type, rows and column names; returns the names as a list.

    Arguments:
        frame: the records.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    if len(frame) == 0:
        raise SchemaError("empty frame: 0 rows")
    # A list, once: iterating a pandas Index costs ~1 us a name (a 1-row check is ~0.2 ms).
    names = frame.columns.tolist()
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        raise SchemaError.of_columns(f"column names must be strings, got {shown_names(bad)} "
                                     "(e.g. frame.columns = frame.columns.astype(str))", bad)
    if not frame.columns.is_unique:  # cached by the Index
        dup = [str(n) for n in frame.columns[frame.columns.duplicated()]]
        raise SchemaError.of_columns(f"duplicate column(s): {shown_names(dup)}", dup)
    return names
