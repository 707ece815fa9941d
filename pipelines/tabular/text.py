"""Category text: how a categorical column's values are read and compared.

A category is compared as ``str(value)``, folded by :func:`fold_text` (NFC, invisible
characters removed, outer white space stripped) when the schema says so
(``Schema.text_folding``; schemas saved before it compare text as given). A container (dict,
list, set, tuple, array), an infinite or a complex number is refused: ``str`` would turn it
into an unseen category and score it instead of rejecting it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from pipelines.errors import SchemaError, shown

# Values a categorical column never takes: str() would turn a JSON object or list into an
# unseen category and score it instead of rejecting it.
CONTAINERS = (Mapping, AbstractSet, list, tuple, np.ndarray)
# Characters that show as nothing and mean nothing in a category: zero width space, word
# joiner, zero width no-break space (a byte order mark pasted in) and soft hyphen. The zero
# width joiner and non-joiner are kept: they change how emoji and some scripts are written,
# so two texts that differ by one can be two things.
INVISIBLE_CHARACTERS = "\u200b\u2060\ufeff\u00ad"
_DROP_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE_CHARACTERS))
COMPLEX_TYPES = (complex, np.complexfloating)


def complex_problem(value: Any) -> str:
    """What is wrong with a complex number, in any column."""
    return (f"complex number {shown(value)} is not supported: flowad models real values "
            "(convert it, e.g. to its real and imaginary parts as two columns, or exclude it)")


def is_text(dtype: Any) -> bool:
    """Whether a pandas dtype holds text (object, string or category)."""
    return pd.api.types.is_object_dtype(dtype) or isinstance(
        dtype, (pd.StringDtype, pd.CategoricalDtype)
    )


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
    text = series.to_numpy(dtype=object, copy=True)
    missing = pd.isna(text)
    text[missing] = None
    present = text[~missing]
    plain = all(type(value) is str for value in present)
    if not plain:
        _reject_non_scalars(series, present, np.flatnonzero(~missing))
    if fold or not plain:  # all str and not folded: nothing to write back
        strings = [str(value) for value in present]
        text[~missing] = [fold_text(value) for value in strings] if fold else strings
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
            raise SchemaError.at(series, str(series.name), int(row), complex_problem(value))
