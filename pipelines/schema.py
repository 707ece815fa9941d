"""What a table looks like: column kinds inferred at fit time, and checks of new frames.

:func:`infer_schema` classifies every column of a training frame; :meth:`Schema.check` verifies
that a later frame matches and returns its values column by column, raising :class:`SchemaError`
(naming the column and the 0-based positional row) for anything the encoder cannot score.
:meth:`Schema.check_records` does the same for JSON-like records, reading plain values without
building a frame and giving exactly what :meth:`Schema.check` of their frame gives.

Column kinds:

* ``categorical``: object, string or category dtype. Values are compared as ``str(value)``,
  folded by :func:`fold_text` (NFC, invisible characters removed, outer white space stripped)
  when the schema says so (``Schema.text_folding``; schemas saved before it compare text as
  given).
* ``binary``: bool dtype, or a numeric column with exactly 2 distinct values.
* ``discrete``: a numeric column with at most ``max_discrete_levels`` distinct values (off a
  regular grid, only when its levels seen once hold at most ``SINGLETON_SHARE`` of its rows:
  80 rows of a continuous column with an atom show ten values once and one 70 times), or whose
  distinct values lie on a regular grid (every ``(v - min) / step`` within ``GRID_TOL`` of an
  integer, ``step`` = smallest gap) with fewer distinct values than half its rows. The grid rule
  finds integer-valued columns even after standardisation (e.g. pixel values 0..255). A constant
  column is discrete with ``step`` 1.0, so that it gets one unit-wide cell, never a point mass.
* ``continuous``: any other numeric column.

Dtype decides at fit time: a column of numeric strings is categorical. At check time a numeric
column given as strings (e.g. from CSV or JSON) is accepted if every non-missing value parses as a
number. Other dtypes (datetime, timedelta, complex, ...) are rejected: exclude or convert them;
a complex number is rejected in any column, whatever the dtype that holds it.

Values are checked, not only dtypes (a JSON record holding ``true`` turns a float column into
object dtype): numeric columns reject booleans unless their levels are 0 and 1 (a bool column,
or a binary 0/1 column, where they count as 1 and 0); a column trained as bool takes only true,
false, 1 and 0; a numeric binary column given a third value scores it as a discrete column
would (an anomaly can take a value normal records never do); a categorical column rejects
containers (dict, list, set, tuple, array), which ``str`` would
otherwise turn into an unseen category. Messages echo values through :func:`shown` (at most
``SHOWN_CHARS`` characters of a repr).
"""

from __future__ import annotations

import reprlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

KINDS = ("continuous", "discrete", "binary", "categorical")
NUMERIC_KINDS = ("continuous", "discrete", "binary")
GRID_TOL = 1e-6  # in units of the grid step
# Most share of a column's rows its levels seen once may hold for a column of few levels off a
# grid to be discrete (infer_schema).
SINGLETON_SHARE = 0.05
SCHEMA_VERSION = 1
BOOL_DTYPES = ("bool", "boolean")  # ColumnSpec.dtype of columns trained as bool
BOOLEAN_WORDS = {"true": 1.0, "false": 0.0}
# A text column whose values are numbers but for fewer than this share's complement is a
# numeric column with bad values (infer_schema).
STRAY_TEXT_SHARE = 0.9
FLOAT64_MAX = float(np.finfo(np.float64).max)
SHOWN_CHARS = 60  # longest echo of a value in an error message
SHOWN_NAMES = 5  # most column names listed in one error message
# Values a categorical column never takes: str() would turn a JSON object or list into an
# unseen category and score it instead of rejecting it.
CONTAINERS = (Mapping, AbstractSet, list, tuple, np.ndarray)
_CONTAINER_REPR = reprlib.Repr()
_CONTAINER_REPR.maxlevel, _CONTAINER_REPR.maxother = 2, SHOWN_CHARS
# What Schema.check_records reads without a frame in a numeric column, and the largest int it
# reads: up to 2**53 an int is exact in float64, so every dtype pandas may infer for its column
# (int64, uint64, float64, object) gives float(value).
_PLAIN_NUMBERS = frozenset({float, int, bool, type(None)})
EXACT_INT = 2**53
# Characters that show as nothing and mean nothing in a category: zero width space, word
# joiner, zero width no-break space (a byte order mark pasted in) and soft hyphen. The zero
# width joiner and non-joiner are kept: they change how emoji and some scripts are written,
# so two texts that differ by one can be two things.
INVISIBLE_CHARACTERS = "\u200b\u2060\ufeff\u00ad"
_DROP_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE_CHARACTERS))
COMPLEX_TYPES = (complex, np.complexfloating)


class SchemaError(ValueError):
    """A frame does not match what the encoder was fitted on.

    Arguments:
        message: the full message; it names the column and the row where they apply.
        column: the offending column, if one.
        row: the 0-based positional row, if one.
        problem: what is wrong, without the column and row.
        label: the row's index label in the frame checked, if one (kept by subsets of a
            frame, where positions are not).
    """

    def __init__(self, message: str, column: str | None = None, row: int | None = None,
                 problem: str | None = None, label: Any = None) -> None:
        super().__init__(message)
        self.label = label
        self.column = column
        self.row = row
        self.problem = problem

    def in_file(self, first_row: int) -> SchemaError:
        """The same error about a chunk that starts at row ``first_row`` of a file, naming
        the row in the file (a chunk's own positions mean nothing to the user)."""
        if self.row is None or self.problem is None:
            return self
        row = first_row + self.row
        if self.column is None:  # about a whole record
            return SchemaError(f"row {row}: {self.problem}", row=row, problem=self.problem)
        return SchemaError(f"column {shown(self.column)}, row {row}: {self.problem}",
                           column=self.column, row=row, problem=self.problem)

    @classmethod
    def at(
        cls, frame: pd.DataFrame | pd.Series, column: str, row: int, problem: str
    ) -> SchemaError:
        """An error about one cell, e.g. "column 'age', row 3: expected a number, got 'abc'".

        Arguments:
            frame: the frame checked, or one of its columns (for the row's index label).
            column: the column name.
            row: the 0-based positional row.
            problem: what is wrong with the value (echo values through :func:`shown`).
        """
        label = frame.index[row]
        plain = isinstance(label, int | np.integer) and label == row
        where = f"row {row}" if plain else f"row {row} (index label {shown(label)})"
        return cls(f"column {shown(column)}, {where}: {problem}", column=column, row=row,
                   problem=problem, label=label)


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters.

    Clients control the values they send: a 1 MB string must not become a 1 MB message. A cut
    repr ends with "…" and the full length (of the string itself for ``str``, else of the repr).

    Arguments:
        value: the value to echo.
        limit: the most characters of the repr kept.
    """
    if isinstance(value, np.generic):  # np.True_, np.float64(1.5): show them as JSON gave them
        value = value.item()
    if isinstance(value, str):
        # repr of a slice: no copy of a huge string just to cut it
        text, size = repr(value[: limit + 1]), len(value)
    elif isinstance(value, int):
        try:
            text = repr(value)
        except ValueError:  # an int beyond sys.get_int_max_str_digits()
            return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
        size = len(text)
    else:  # containers: reprlib stops at a few items and levels (JSON can nest 1000 deep)
        text = _CONTAINER_REPR.repr(value)
        size = len(text) if len(text) <= limit else None
    if len(text) <= limit:
        return text
    if size is None:
        return f"{text[:limit]}…"
    return f"{text[:limit]}… ({size} characters)"


class UnscorableRecordError(SchemaError):
    """The flow gave a record no log-likelihood (NaN) although it passed every input check.

    Scoring raises it instead of returning NaN. It is a :class:`SchemaError`, so a caller that
    rejects bad input rejects this record too, naming its row; but it also means the checks
    missed something or the model is broken, so callers should count or log it apart (the
    service answers 422). ``-inf`` (zero density) is a verdict, not this error.

    Arguments:
        row: the 0-based positional row.
        count: how many records of the batch the model could not score.
    """

    PROBLEM = ("the model gives this record no log-likelihood (NaN) although it passed the "
               "input checks")

    def __init__(self, row: int, count: int = 1) -> None:
        problem = f"{self.PROBLEM} ({count} such record(s)); nothing was scored"
        super().__init__(f"row {row}: {problem}", row=row, problem=problem)


@dataclass(frozen=True)
class ColumnSpec:
    """One column as seen in training.

    Arguments:
        name: column name.
        kind: one of ``KINDS``.
        dtype: the training dtype, as text.
        n_missing_train: missing values (NaN/None) in training; 0 means missing is an error later.
        missing_rate: ``n_missing_train`` / training rows.
        min: smallest training value (numeric kinds).
        max: largest training value (numeric kinds).
        step: grid step of the codes ``(x - min) / step`` (discrete and binary kinds).
        categories: sorted distinct training values as text (categorical kind).
        n_unique: distinct non-missing training values.
    """

    name: str
    kind: str
    dtype: str
    n_missing_train: int
    missing_rate: float
    min: float | None = None
    max: float | None = None
    step: float | None = None
    categories: tuple[str, ...] | None = None
    n_unique: int = 0

    @property
    def dequantized(self) -> bool:
        """Whether the encoder treats this column's values as cells rather than points."""
        return self.kind != "continuous"


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
        """Verifies ``frame`` against the schema and returns its values per column.

        Numeric kinds come back as float64 arrays (NaN where missing), categorical columns as
        object arrays of ``str`` (None where missing). Missing values are allowed only in
        columns that had some in training; infinities never.

        Arguments:
            frame: the records; excluded columns may be present or absent.

        Raises:
            SchemaError: empty frame, missing or unexpected columns, wrong dtypes, values that
                are not numbers (booleans too, unless the column's levels are 0 and 1), a bool
                column's value other than true/false/1/0, a container (dict, list, ...) in a
                categorical column, or missing/infinite values where not allowed.
        """
        given = _check_frame(frame)
        present = set(given)
        missing = [name for name in self.names if name not in present]
        if missing:
            raise SchemaError(f"missing column(s): {_quoted(missing)}", column=missing[0])
        known = set(self.names) | set(self.exclude)
        unexpected = [str(name) for name in given if name not in known]
        if unexpected:
            raise SchemaError(
                f"unexpected column(s) not in the schema: {_quoted(unexpected)}",
                column=unexpected[0],
            )
        values: dict[str, NDArray[Any]] = {}
        for spec in self.columns:
            series = frame[spec.name]
            if spec.kind == "categorical":
                values[spec.name] = as_text(series, fold=self.text_folding)
            else:
                values[spec.name] = _numeric_values(frame, spec, series)
            if spec.n_missing_train == 0:
                isna = pd.isna(values[spec.name])
                if isna.any():
                    raise SchemaError.at(
                        frame,
                        spec.name,
                        int(np.flatnonzero(isna)[0]),
                        "missing value (NaN/None), but the column had none in training",
                    )
        return values

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
        tests/test_schema.py compares the two paths on hostile records.

        Arguments:
            records: one dict per record, keyed by column name (other keys are ignored).

        Raises:
            SchemaError: as :meth:`check` of :meth:`records_frame`.
        """
        values = _plain_values(self, records)
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
    _check_frame(frame)
    excluded = tuple(exclude)
    specs = []
    for name in frame.columns:
        if name in excluded:
            continue
        series = frame[name]
        n_missing = int(series.isna().sum())
        if n_missing == len(series):
            raise SchemaError(f"column {shown(name)} has only missing values", column=name)
        if _is_text(series.dtype):
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
            _reject_complex(frame, name, series)
        elif pd.api.types.is_numeric_dtype(series.dtype):
            x = _as_float(frame, name, series)
            specs.append(_numeric_spec(name, str(series.dtype), x, max_discrete_levels))
        else:
            raise SchemaError(
                f"column {shown(name)}: unsupported dtype {series.dtype}; exclude or convert it",
                column=name,
            )
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
    common = dict(
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


def _plain_values(
    schema: Schema, records: Sequence[Mapping[str, Any]]
) -> dict[str, NDArray[Any]] | None:
    """The checked values of records whose every column is plain (:meth:`Schema.check_records`),
    else None.

    Arguments:
        schema: the schema checked against.
        records: the records.
    """
    if not records or not all(type(record) is dict for record in records):
        return None
    values: dict[str, NDArray[Any]] = {}
    for spec in schema.columns:
        try:
            column = [record[spec.name] for record in records]
        except KeyError:  # a missing value (or a rejection): the frame decides
            return None
        if spec.kind == "categorical":
            checked = _plain_text(spec, column, schema.text_folding)
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
    if spec.dtype in BOOL_DTYPES and _is_text(series.dtype):
        return _booleans_from_text(frame, spec.name, series)
    x = _as_float(frame, spec.name, series)
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
        problem = (_complex_problem(value) if isinstance(value, COMPLEX_TYPES)
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


def _as_float(frame: pd.DataFrame, name: str, series: pd.Series) -> NDArray[np.float64]:
    """A numeric column as float64 (NaN where missing); strings must parse as numbers."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    if pd.api.types.is_complex_dtype(series.dtype):
        _reject_complex(frame, name, series)
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf":
        # NumPy-backed: no NA but NaN, so a plain cast gives what the general branch below
        # does, ~25 us faster for bool columns.
        x = series.to_numpy().astype(np.float64)
    elif pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif _is_text(series.dtype):
        try:
            parsed = pd.to_numeric(series, errors="coerce")
        except OverflowError:  # a Python int beyond float64, e.g. a 400-digit JSON literal
            _reject_huge_int(frame, name, series)
            raise
        if pd.api.types.is_complex_dtype(parsed.dtype):  # complex numbers among objects
            _reject_complex(frame, name, series)
        bad = np.flatnonzero(parsed.isna().to_numpy() & series.notna().to_numpy())
        if len(bad):
            row = int(bad[0])
            problem = f"expected a number, got {shown(series.iloc[row])}"
            raise SchemaError.at(frame, name, row, problem)
        x = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raise SchemaError(
            f"column {shown(name)}: expected a numeric column, got dtype {series.dtype}",
            column=name,
        )
    infinite = np.flatnonzero(np.isinf(x))
    if len(infinite):
        row = int(infinite[0])
        raise SchemaError.at(frame, name, row, f"infinite value {x[row]} is not allowed")
    return x


def _complex_problem(value: Any) -> str:
    return (f"complex number {shown(value)} is not supported: flowad models real values "
            "(convert it, e.g. to its real and imaginary parts as two columns, or exclude it)")


def _reject_complex(frame: pd.DataFrame, name: str, series: pd.Series) -> None:
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
    raise SchemaError.at(frame, name, row, _complex_problem(values[row]))


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


def fold_text(text: str) -> str:
    """One spelling per category: Unicode NFC (a macOS client's NFD ``'cafe\u0301'`` is
    ``'café'``), ``INVISIBLE_CHARACTERS`` removed, outer white space stripped (as numbers
    given as text are). Case and inner spaces are kept: they can tell categories apart.

    Arguments:
        text: a category as given.
    """
    if text.isascii():  # NFC and the invisible characters are not ASCII
        return text.strip()
    return unicodedata.normalize("NFC", text.translate(_DROP_INVISIBLE)).strip()


def as_text(series: pd.Series, *, fold: bool) -> NDArray[np.object_]:
    """A categorical column as an object array of ``str`` (None where missing).

    Arguments:
        series: the column; numbers and other scalars become ``str(value)``.
        fold: fold the text (:func:`fold_text`), as the schema does (``Schema.text_folding``).

    Raises:
        SchemaError: a container (dict, list, set, tuple, array), a complex number or an
            infinite number in the column.
    """
    text = series.to_numpy(dtype=object, na_value=None, copy=True)
    missing = pd.isna(text)
    text[missing] = None
    present = text[~missing]
    plain = all(type(value) is str for value in present)
    if not plain:
        _reject_non_scalars(series, present, np.flatnonzero(~missing))
        present = [str(value) for value in present]
    if fold:
        present = [fold_text(value) for value in present]
    if fold or not plain:  # all str and not folded: nothing to write back
        text[~missing] = present
    return text


def _reject_non_scalars(
    series: pd.Series, present: NDArray[np.object_], rows: NDArray[np.intp]
) -> None:
    """Raises for the first container, infinite or complex number among a categorical
    column's non-missing values (inf and complex numbers are rejected in every column, not
    made the categories "inf" and "(1+2j)").

    Arguments:
        series: the column (for its name and index).
        present: its non-missing values.
        rows: their 0-based positions in ``series``.
    """
    for row, value in zip(rows, present, strict=True):
        if isinstance(value, CONTAINERS):
            problem = f"expected text or a number, got a {type(value).__name__} {shown(value)}"
            raise SchemaError.at(series, str(series.name), int(row), problem)
        if isinstance(value, float | np.floating) and np.isinf(value):
            raise SchemaError.at(series, str(series.name), int(row),
                                 f"infinite value {value} is not allowed")
        if isinstance(value, COMPLEX_TYPES):
            raise SchemaError.at(series, str(series.name), int(row), _complex_problem(value))


def _is_text(dtype: Any) -> bool:
    return pd.api.types.is_object_dtype(dtype) or isinstance(
        dtype, (pd.StringDtype, pd.CategoricalDtype)
    )


def _check_frame(frame: pd.DataFrame) -> list[Any]:
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
        raise SchemaError(
            f"column names must be strings, got {_quoted(bad)} "
            "(e.g. frame.columns = frame.columns.astype(str))",
            column=str(bad[0]),
        )
    if not frame.columns.is_unique:  # cached by the Index
        dup = [str(n) for n in frame.columns[frame.columns.duplicated()]]
        raise SchemaError(f"duplicate column(s): {_quoted(dup)}", column=dup[0])
    return names


def _quoted(names: list[str]) -> str:
    """Names for a message: each cut by :func:`shown`, at most ``SHOWN_NAMES`` of them."""
    listed = ", ".join(shown(n) for n in names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return f"{listed} and {more} more" if more > 0 else listed
