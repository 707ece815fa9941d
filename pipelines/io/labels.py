"""One reading of a label column, shared by ``flowad train``, ``evaluate`` and ``retrain``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.errors import InputError

ANOMALY_WORDS = frozenset({"1", "true", "yes", "anomaly"})
NORMAL_WORDS = frozenset({"0", "false", "no", "normal"})


def parse_labels(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A label column as 0/1 integers, 1 = anomaly.

    Booleans and numbers: true / non-zero is an anomaly. Text (case and surrounding spaces
    ignored): "1", "true", "yes", "anomaly" or a non-zero number is an anomaly; "0", "false",
    "no", "normal" or zero is normal. Any other word is an error rather than a guess: read as
    normal, a mislabelled anomaly would be trained on as normal data.

    Arguments:
        frame: the records, including the label column.
        column: the label column's name.

    Raises:
        InputError: naming the column, when it is absent, has missing values or holds a word
            that is neither an anomaly nor a normal label.
    """
    if column not in frame.columns:
        raise InputError(f"label column {column!r} not in the data")
    values = frame[column]
    if values.isna().any():
        raise InputError(f"label column {column!r} has {int(values.isna().sum())} missing values")
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return (values.to_numpy() != 0).astype(int)
    text = values.astype(str).str.strip().str.lower()
    numbers = pd.to_numeric(text, errors="coerce")
    anomaly = text.isin(ANOMALY_WORDS) | (numbers.notna() & (numbers != 0))
    known = anomaly | text.isin(NORMAL_WORDS) | numbers.notna()
    if not known.all():
        unknown = sorted(set(values[~known].astype(str)))[:5]
        raise InputError(f"label column {column!r} has values that are neither anomaly "
                         f"(1/true/yes/anomaly) nor normal (0/false/no/normal): {unknown}")
    return anomaly.to_numpy(dtype=int)
