"""Where a discrete or binary column's values lie, and the finite score of a value elsewhere
(the *discrete columns* contract, docs/design.md).

A discrete or binary column is encoded by its codes ``c = (x - min) / step``, scored at the
midpoint of their unit cell (:class:`~pipelines.encoder.TabularEncoder`). Its *support* is:

* on a grid (``on_grid``): every integer code, seen in training or not (a count of 11 when
  training's largest was 10). A grid needs evidence: at least ``GRID_MIN_LEVELS`` training
  levels, all on the lattice of the column's step. Two levels are no evidence: the step is just
  their difference (a column of 0s and 2s in 540 rows may still take 1).
* otherwise the codes of the levels seen in training (two levels, one, or levels on no common
  grid).

A value farther than ``GRID_TOL`` steps from every support point is *off the support*. The model
of a column's value, given the rest of the record: with probability ``1 - eps`` a support
point, with the probability the flow gives its cell; with probability ``eps`` the nearest
support point ``s`` moved by an offset ``u`` (in steps) whose density is Laplace,
``exp(-|u| / OFF_SUPPORT_DECAY)``, restricted to the values nearer ``s`` than any other
support point and normalised there (``Z(s)``). Per column and record, the log-density gains

* ``log(1 - eps)`` for a value on the support,
* ``log(eps) - |u| / OFF_SUPPORT_DECAY - log Z(s)`` for one off it, scored at ``s``'s cell,

and ``0`` for a missing value (the missing indicator models it). Summed over the support, the
two parts give ``1 - eps`` and ``eps`` of every cell's probability: the extension adds no mass
and loses none, so the record's density stays normalised (against counting measure on the
support plus Lebesgue measure in steps off it), and a value off the support scores finite,
worse than its nearest support point, and worse the farther it is. ``eps = 1 / (2 (n + 1))``
for ``n`` observed training values: the Krichevsky-Trofimov (add one half) estimate of the
probability of an outcome never seen in ``n`` draws. More rows on the support, more evidence,
a larger penalty (``log(2 (n + 1))`` nats, 7 at 540 rows).

Encoders saved before this rule (no ``off_support_mass``) keep theirs: a value between the
grid points of a column with two or more levels on a grid has zero density (the encoder's
``on_grid_`` of then), or, saved before that, is scored at its own code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from pipelines.schema import GRID_TOL, ColumnSpec

GRID_MIN_LEVELS = 3  # training levels on one lattice that show a grid (two gaps of the step)
OFF_SUPPORT_DECAY = 0.25  # Laplace scale of the offset, in steps: 4 nats more per step away


def grid_evidence(spec: ColumnSpec, codes: NDArray[np.float64]) -> bool:
    """Whether a discrete or binary column's training values show a grid: at least
    ``GRID_MIN_LEVELS`` levels, every code within ``GRID_TOL`` of an integer.

    Arguments:
        spec: the column's spec.
        codes: its training codes (NaN where missing).
    """
    observed = codes[~np.isnan(codes)]
    return (spec.n_unique >= GRID_MIN_LEVELS
            and bool(np.all(np.abs(observed - np.rint(observed)) <= GRID_TOL)))


def off_support_mass(n_observed: int) -> float:
    """``eps``: the probability of a value off the support after ``n_observed`` training values
    all on it (Krichevsky-Trofimov).

    Arguments:
        n_observed: the column's non-missing training values.
    """
    return 1.0 / (2.0 * (n_observed + 1))


def nearest_support(codes: NDArray[np.float64], on_grid: bool, levels: NDArray[np.float64]
                    ) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """The nearest support point of each code, and its index in ``levels`` (-1 on a grid).
    Ties go to the lower point; NaN stays NaN.

    Arguments:
        codes: one column's codes.
        on_grid: the support is every integer code.
        levels: otherwise, the sorted codes of the training levels.
    """
    if on_grid:
        return np.ceil(codes - 0.5), np.full(len(codes), -1)
    upper = np.clip(np.searchsorted(levels, codes), 1, max(1, len(levels) - 1))
    if len(levels) == 1:
        index = np.zeros(len(codes), dtype=np.intp)
    else:
        lower_is_nearer = codes - levels[upper - 1] <= levels[upper] - codes
        index = np.where(lower_is_nearer, upper - 1, upper)
    nearest = levels[index]
    return np.where(np.isnan(codes), np.nan, nearest), index


def log_normaliser(on_grid: bool, levels: NDArray[np.float64], decay: float) -> NDArray:
    """``log Z`` per support point: the log of the Laplace kernel's integral over the values
    nearer to it than to any other support point (one value on a grid).

    Arguments:
        on_grid: the support is every integer code (cells of half a step either side).
        levels: otherwise, the sorted codes of the training levels.
        decay: the kernel's scale, in steps.
    """
    if on_grid:
        return np.array([math.log(2.0 * decay * -math.expm1(-0.5 / decay))])
    half_gaps = np.diff(levels) / 2.0
    below = np.concatenate([[np.inf], half_gaps])  # the outermost levels' cells are unbounded
    above = np.concatenate([half_gaps, [np.inf]])
    return np.log(decay * (2.0 - np.exp(-below / decay) - np.exp(-above / decay)))


class Support:
    """The support of every discrete and binary column of an encoder, and the per-column
    log-density factors of the module docstring.

    Arguments:
        on_grid: per column, whether its support is its whole grid.
        levels: per column, the sorted codes of its training levels (empty on a grid).
        mass: per column, ``eps``.
        decay: the Laplace scale of the offset, in steps.
    """

    def __init__(self, on_grid: NDArray[np.bool_], levels: Sequence[NDArray[np.float64]],
                 mass: NDArray[np.float64], decay: float) -> None:
        self.on_grid = np.asarray(on_grid, dtype=bool)
        self.levels = [np.asarray(level, dtype=np.float64) for level in levels]
        self.mass = np.asarray(mass, dtype=np.float64)
        self.decay = float(decay)
        self.log_z = [log_normaliser(grid, level, self.decay)
                      for grid, level in zip(self.on_grid, self.levels, strict=True)]

    @classmethod
    def fit(cls, specs: Sequence[ColumnSpec], codes: NDArray[np.float64]) -> Support:
        """The support of columns from their training codes.

        Arguments:
            specs: the discrete and binary columns' specs.
            codes: ``(n, len(specs))`` their codes on every row the schema was inferred from
                (NaN where missing).
        """
        on_grid = np.array([grid_evidence(spec, column)
                            for spec, column in zip(specs, codes.T, strict=True)], dtype=bool)
        levels = [np.empty(0) if grid else np.unique(column[~np.isnan(column)])
                  for grid, column in zip(on_grid, codes.T, strict=True)]
        mass = np.array([off_support_mass(int((~np.isnan(column)).sum())) for column in codes.T])
        return cls(on_grid, levels, mass, OFF_SUPPORT_DECAY)

    def snap(self, codes: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray]:
        """Codes moved to their nearest support point where they are off the support, and the
        per-entry log-density factors; both ``(n, columns)``.

        Arguments:
            codes: the columns' codes (NaN where missing).
        """
        snapped = codes.copy()
        factors = np.zeros_like(codes)
        for j in range(codes.shape[1]):  # column by column: ~5 us each per call
            column = codes[:, j]
            nearest, index = nearest_support(column, self.on_grid[j], self.levels[j])
            offset = column - nearest
            with np.errstate(invalid="ignore"):  # NaN (missing) compares False
                off = np.abs(offset) > GRID_TOL
            observed = ~np.isnan(column)
            factors[observed, j] = math.log1p(-self.mass[j])
            if off.any():
                log_z = self.log_z[j][0] if self.on_grid[j] else self.log_z[j][index[off]]
                factors[off, j] = (math.log(self.mass[j]) - np.abs(offset[off]) / self.decay
                                   - log_z)
                snapped[off, j] = nearest[off]
        return snapped, factors

    def off(self, codes: NDArray[np.float64]) -> NDArray[np.bool_]:
        """``(n, columns)``: where a code is off its column's support (NaN is not).

        Arguments:
            codes: the columns' codes.
        """
        out = np.zeros(codes.shape, dtype=bool)
        for j in range(codes.shape[1]):
            nearest, _ = nearest_support(codes[:, j], self.on_grid[j], self.levels[j])
            with np.errstate(invalid="ignore"):
                out[:, j] = np.abs(codes[:, j] - nearest) > GRID_TOL
        return out

    def to_state(self) -> dict[str, object]:
        """What an encoder saves (skops: arrays, lists, floats)."""
        return {"on_grid_": self.on_grid, "support_levels_": list(self.levels),
                "off_support_mass_": self.mass, "off_support_decay_": self.decay}


def legacy_off_grid(codes: NDArray[np.float64], on_grid: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Encoders saved before :class:`Support`: where a column ``on_grid`` (two or more levels
    on a grid, by the rule of then) holds a value between two grid points, which they give
    zero density.

    Arguments:
        codes: ``(n, columns)`` codes.
        on_grid: per column, the saved ``on_grid_``.
    """
    out = np.zeros(codes.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        for j in np.flatnonzero(on_grid):
            out[:, j] = np.abs(codes[:, j] - np.rint(codes[:, j])) > GRID_TOL
    return out
