"""Records as the detector takes them: a DataFrame with string column names.

scikit-learn's conventions: an array's columns are named ``x0 .. x{d-1}`` (as
``pd.DataFrame(X)`` names them, with an ``x`` before each number) and its shape errors are
worded as scikit-learn words them, which its estimator checks (and users) know.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from pipelines.errors import InputError, SchemaError, shown, shown_names


def as_frame(X: ArrayLike | pd.DataFrame, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Records as a DataFrame with string column names.

    A DataFrame keeps its string names; any other name ``c`` becomes ``f"x{c}"``, so that
    ``pd.DataFrame(X)`` and ``X`` name their columns alike (``x0 .. x{d-1}``). A 2-D array takes
    ``names``, or ``x0 .. x{d-1}`` when None.

    Arguments:
        X: a DataFrame or anything ``np.asarray`` makes 2-D.
        names: the column names of an array (a fitted detector's ``feature_names_in_``).

    Raises:
        TypeError: a sparse matrix.
        InputError: not 2-D, duplicate names, or a width other than ``names``'.
        SchemaError: complex numbers, naming the column and row.
    """
    if isinstance(X, pd.DataFrame):
        if all(isinstance(c, str) for c in X.columns):
            return X
        renamed = [c if isinstance(c, str) else f"x{c}" for c in X.columns]
        if len(set(renamed)) < len(renamed):
            raise InputError(f"column names clash once converted to text: {renamed}")
        return X.set_axis(renamed, axis=1)
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError("sparse input is not supported: pass a dense array or a DataFrame")
    array = np.asarray(X)
    # The messages are scikit-learn's own, which its estimator checks (and users) know.
    if array.ndim != 2:
        raise InputError(f"expected a DataFrame or a 2-D array, got shape {array.shape}. "
                         "Reshape your data: array.reshape(1, -1) for a single record")
    if array.shape[1] == 0:
        raise InputError(f"0 feature(s) (shape={array.shape}) while a minimum of 1 is required.")
    if names is None:
        names = [f"x{j}" for j in range(array.shape[1])]
    elif len(names) != array.shape[1]:
        raise InputError(f"X has {array.shape[1]} features, but Detector is expecting "
                         f"{len(names)} features as input (its feature_names_in_)")
    if np.iscomplexobj(array):
        raise _complex_array_error(array, list(names))
    return pd.DataFrame(array, columns=list(names))


def _complex_array_error(array: np.ndarray, names: list[str]) -> SchemaError:
    """The error for a complex array: the first cell with an imaginary part, named as a cell
    of a frame is (with scikit-learn's words, which its estimator checks look for).

    Arguments:
        array: the 2-D complex array.
        names: its column names.
    """
    cells = np.argwhere(array.imag != 0)
    row, column = (int(cells[0][0]), int(cells[0][1])) if len(cells) else (0, 0)
    problem = (f"complex number {shown(array[row, column].item())} is not supported: flowad "
               "models real values (Complex data not supported)")
    return SchemaError(problem, column=names[column], row=row)



def fitted_frame(X: pd.DataFrame | ArrayLike, names: Sequence[str],
                 input_columns: Sequence[str]) -> pd.DataFrame:
    """``X`` as a fitted detector's encoder takes it: an array's columns are ``names``.

    Arguments:
        X: records.
        names: the detector's ``feature_names_in_``.
        input_columns: the columns the model reads.

    Raises:
        SchemaError: a DataFrame without the columns ``x0 .. x{d-1}`` that a detector fitted
            on an array has, saying so.
    """
    frame = as_frame(X, names)
    if isinstance(X, pd.DataFrame) and list(names) == [f"x{j}" for j in range(len(names))]:
        missing = [name for name in input_columns if name not in set(frame.columns)]
        if missing:
            raise SchemaError.of_columns(
                f"missing column(s): {shown_names(missing)}: this detector was fitted on an "
                f"array, whose columns are named x0 .. x{len(names) - 1}; pass an array with "
                "the columns in their training order, or a DataFrame with those names", missing)
    return frame
