"""Benjamini-Hochberg over a whole file (``flowad score --fdr Q``), and what it can flag.

A record is rejected at false-discovery rate Q when its BH-adjusted p-value (q-value) is at
most Q. BH rejects the k smallest of m p-values when the k-th smallest is at most ``Q k / m``.
A conformal p-value against n calibration scores is at least ``1 / (n + 1)`` (a record more
anomalous than every calibration record), so k records can be flagged only if
``1 / (n + 1) <= Q k / m``, that is ``n >= m / (Q k) - 1``: a small calibration set cannot
flag anything in a large file, however anomalous its records. :func:`rows_needed` computes
that bound, :func:`unflaggable_warning` says it when a file's smallest q-value exceeds Q.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

SHARES = (0.01, 0.1)  # shares of anomalies the warning states the needed rows for


class UnflaggableWarning(UserWarning):
    """No record of a table can be flagged at the false-discovery rate asked for
    (:func:`unflaggable_warning` says why)."""


def bh_q_values(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All p-values, and their Benjamini-Hochberg adjusted values (q-values): a record is
    rejected at false-discovery rate Q exactly when its q-value is <= Q.

    Conformal p-values of normal records are super-uniform and, sharing one calibration set,
    positively dependent (PRDS), under which BH controls the FDR (Bates et al. 2023,
    "Testing for outliers with conformal p-values").

    Arguments:
        chunks: the p-values of consecutive chunks.
    """
    from scipy.stats import false_discovery_control

    parts = list(chunks)
    p_values = np.concatenate(parts) if parts else np.empty(0)
    if len(p_values) == 0:  # scipy refuses an empty array; nothing to adjust
        return p_values, p_values
    return p_values, false_discovery_control(p_values, method="bh")


def rows_needed(rows: int, anomalies: int, fdr: float) -> int:
    """The fewest calibration rows with which BH at level ``fdr`` flags ``anomalies`` records
    of a file of ``rows`` records, assuming those records are more anomalous than every
    calibration record (conformal p-value ``1 / (n + 1)``, the smallest there is) and the
    others' p-values are not smaller (normal records: uniform).

    ``ceil(rows / (fdr * anomalies)) - 1`` in exact arithmetic, then moved to where the
    floating-point q-value ``(1 / (n + 1)) * (rows / anomalies)`` (how scipy computes it) first
    reaches ``fdr``.

    Arguments:
        rows: records in the file (m).
        anomalies: records to flag (k), 1 <= k <= m.
        fdr: the level Q, in (0, 1).
    """
    n = max(0, math.ceil(Fraction(rows) / (Fraction(fdr) * anomalies)) - 1)

    def flags(n: int) -> bool:
        return (1.0 / (n + 1)) * (rows / anomalies) <= fdr

    while not flags(n):
        n += 1
    while n > 0 and flags(n - 1):
        n -= 1
    return n


def unflaggable_warning(q_values: np.ndarray, fdr: float, calibration_rows: int) -> str | None:
    """What to say when no record of a file can be flagged at ``fdr`` (its smallest q-value
    exceeds it): that q-value, and the calibration rows flagging would need (:func:`rows_needed`
    for 1% and 10% of the file's rows); None when something can be flagged.

    Arguments:
        q_values: the file's q-values.
        fdr: the level Q.
        calibration_rows: the model's calibration rows (n).
    """
    if len(q_values) == 0 or q_values.min() <= fdr:
        return None
    rows = len(q_values)
    needs = []
    for share in SHARES:
        anomalies = max(1, round(share * rows))
        needs.append(f"{rows_needed(rows, anomalies, fdr)} if {anomalies} ({share:.0%}) are")
    message = (
        f"nothing can be flagged at FDR {fdr:g}: the smallest q-value of these {rows} rows is "
        f"{q_values.min():.3g}. With n calibration rows no p-value is below 1/(n+1), and BH "
        f"flags k of {rows} rows only if their p-values are at most {fdr:g}*k/{rows}: even "
        "rows more anomalous than every calibration row need n >= "
        f"{rows}/({fdr:g}*k) - 1, i.e. {' and '.join(needs)}; this model has "
        f"{calibration_rows}")
    if calibration_rows >= rows_needed(rows, max(1, round(SHARES[0] * rows)), fdr):
        message += (" (enough: no rows here are that anomalous, or too few are; more calibration "
                    "rows would not help)")
    return message
