"""One-hot codes of categorical columns by dictionary lookups.

A categorical column's one-hot slots are its training levels, ``MISSING`` (when training had
missing values) and ``UNKNOWN``, a slot no training record takes, where unseen categories go
(scored, not rejected). scikit-learn's ``OneHotEncoder`` is fitted on those slots (with
``max_categories``, the rarest levels and the unknown slot share its infrequent slot); its
``transform`` costs ~0.1 ms a call whatever the rows, so scoring reads the slot each value goes
to from tables built once from the fitted encoder (:func:`one_hot_tables`): bit-identical
codes (``tests/tabular/test_encoder.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.preprocessing import OneHotEncoder

from pipelines.errors import SchemaError, shown
from pipelines.tabular.columns import ColumnSpec

MISSING = "<missing>"
UNKNOWN = "<unknown>"
# Per categorical column: the output column of each training level, of the missing slot and of
# the unknown slot (-1: none).
SlotTable = tuple[dict[str, int], int, int]


def slots(spec: ColumnSpec) -> list[str]:
    """The one-hot slots of a categorical column: its levels, "<missing>", "<unknown>".

    Arguments:
        spec: the column's spec.
    """
    categories = spec.categories or ()
    if MISSING in categories or UNKNOWN in categories:
        raise SchemaError(f"holds a reserved value {shown(MISSING)} or {shown(UNKNOWN)}",
                          column=spec.name)
    return [*categories, *([MISSING] if spec.n_missing_train else []), UNKNOWN]


def seen(text: NDArray[np.object_], spec: ColumnSpec) -> NDArray[np.bool_]:
    """Which values of a categorical column occurred in training (hash lookup, None-safe).

    Arguments:
        text: the column's checked values.
        spec: its spec.
    """
    return pd.Series(text, dtype=object).isin(spec.categories or ()).to_numpy()


def tokens(values: Mapping[str, NDArray[Any]], specs: Sequence[ColumnSpec]
           ) -> NDArray[np.object_]:
    """Categorical values as ``OneHotEncoder`` takes them: missing and unseen ones as tokens.

    Arguments:
        values: checked values per column.
        specs: the categorical columns' specs.
    """
    columns = []
    for spec in specs:
        text = values[spec.name].copy()
        missing = pd.isna(text)
        unseen = ~seen(text, spec) & ~missing
        text[missing] = MISSING
        text[unseen] = UNKNOWN
        columns.append(text)
    return np.column_stack(columns)


def one_hot_tables(onehot: OneHotEncoder, specs: Sequence[ColumnSpec]) -> list[SlotTable]:
    """Per categorical column, its :data:`SlotTable`, read off ``onehot.transform`` of every
    slot, so that infrequent levels share the infrequent column exactly as scikit-learn maps
    them.

    Arguments:
        onehot: the fitted encoder.
        specs: the categorical columns' specs, in its order.
    """
    slots_per_column = onehot.categories_
    longest = max(len(column_slots) for column_slots in slots_per_column)
    # Row r holds every column's slot r (shorter columns repeat theirs).
    grid = np.column_stack([np.resize(column_slots, longest)
                            for column_slots in slots_per_column])
    ones = onehot.transform(grid)
    # One 1 per column in each row, in column order: column i's is the i-th.
    columns = np.stack([np.flatnonzero(row) for row in ones])
    tables = []
    for i, (spec, column_slots) in enumerate(zip(specs, slots_per_column, strict=True)):
        slot_of = {str(slot): int(columns[r, i]) for r, slot in enumerate(column_slots)}
        missing = slot_of.pop(MISSING, -1)  # -1: never used (no missing values allowed)
        unknown = slot_of.pop(UNKNOWN)
        if set(slot_of) != set(spec.categories or ()):
            raise RuntimeError(f"one-hot slots of {spec.name!r} differ from its categories")
        tables.append((slot_of, missing, unknown))
    return tables


def one_hot(values: Mapping[str, NDArray[Any]], specs: Sequence[ColumnSpec],
            tables: Sequence[SlotTable], width: int, n: int) -> NDArray[np.float64]:
    """``onehot.transform(tokens(values, specs))`` by the tables' lookups: one 1.0 per row and
    categorical column.

    Arguments:
        values: checked values per column.
        specs: the categorical columns' specs.
        tables: their :func:`one_hot_tables`.
        width: the one-hot block's width.
        n: the rows.
    """
    out = np.zeros((n, width))
    rows = np.arange(n)
    for spec, (slot_of, missing_slot, unknown_slot) in zip(specs, tables, strict=True):
        # as_text gives str, or None where missing; a value that merely reads "<missing>" or
        # "<unknown>" is no training level, so it is unknown (as tokens() makes it).
        column_slots = [missing_slot if value is None else slot_of.get(value, unknown_slot)
                        for value in values[spec.name]]
        out[rows, column_slots] = 1.0
    return out


def count_unknown(values: Mapping[str, NDArray[Any]], specs: Sequence[ColumnSpec],
                  tables: Sequence[SlotTable]) -> dict[str, int]:
    """Per categorical column, the values training never saw, by the tables' lookups (for a
    few records, pandas' ``isin`` in :func:`seen` costs more than the rest of a check).

    Arguments:
        values: checked values per column.
        specs: the categorical columns' specs.
        tables: their :func:`one_hot_tables`.
    """
    return {spec.name: sum(value is not None and value not in slot_of
                           for value in values[spec.name])
            for spec, (slot_of, _, _) in zip(specs, tables, strict=True)}
