"""One column as training saw it (:class:`ColumnSpec`), and the column kinds.

Column kinds (:func:`~pipelines.tabular.schema.infer_schema` decides them):

* ``categorical``: object, string or category dtype, compared as text
  (:func:`~pipelines.tabular.text.as_text`).
* ``binary``: bool dtype, or a numeric column with exactly 2 distinct values.
* ``discrete``: a numeric column of few distinct values, or whose values lie on a grid.
* ``continuous``: any other numeric column.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("continuous", "discrete", "binary", "categorical")
NUMERIC_KINDS = ("continuous", "discrete", "binary")
GRID_TOL = 1e-6  # in units of the grid step
BOOL_DTYPES = ("bool", "boolean")  # ColumnSpec.dtype of columns trained as bool


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
    def grid(self) -> tuple[float, float]:
        """``(min, step)`` of a discrete or binary column: its codes are ``(x - min) / step``."""
        if self.min is None or self.step is None:
            raise ValueError(f"column {self.name!r} is {self.kind}: it has no codes")
        return self.min, self.step

    @property
    def dequantized(self) -> bool:
        """Whether the encoder treats this column's values as cells rather than points."""
        return self.kind != "continuous"
