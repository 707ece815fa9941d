"""Text cells a spreadsheet would run as formulas, neutralised in CSV output (OWASP's rule).

A cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``@SUM(...)``, DDE payloads), and
the rows ``flowad score`` flags are exactly the ones an analyst opens. Such a cell of a text
column is written with a leading ``'``, which spreadsheets show as text and do not run. A cell
that is a plain number (``-12.5``, ``+3e4``) runs nothing and is left as it is, and numeric
columns are never touched. Parquet output is typed, never escaped.
"""

from __future__ import annotations

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A plain decimal number, as a numeric cell reads: a sign, digits, a point, an exponent.
PLAIN_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
PREFIX = "'"


def escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each text cell that would start a formula prefixed with ``'``; numbers,
    and columns that are not text, unchanged (a copy when anything changes).

    Arguments:
        frame: rows about to be written as CSV.
    """
    escaped = {}
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object)
        if pd.api.types.is_object_dtype(column.dtype):  # numbers, booleans, text: text only
            text = column.where(column.map(lambda value: isinstance(value, str))).astype("string")
        elif pd.api.types.is_string_dtype(column.dtype):
            text = column.astype("string")
        else:
            continue
        starts = text.str.startswith(FORMULA_STARTS) & ~text.str.fullmatch(PLAIN_NUMBER)
        formula = starts.fillna(False).to_numpy(dtype=bool)
        if formula.any():
            column = column.copy()
            column[formula] = (PREFIX + text[formula]).to_numpy(dtype=object)
            escaped[name] = column
    return frame.assign(**escaped) if escaped else frame
