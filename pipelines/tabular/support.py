"""Where a discrete or binary column's values lie, and the finite score of a value elsewhere
(the *discrete columns* contract, docs/design.md).

A discrete or binary column is encoded by its codes ``c = (x - min) / step``, scored at the
midpoint of their unit cell (:class:`~pipelines.tabular.encoder.TabularEncoder`). Its *support* is:

* on a grid (``on_grid``): every integer code, seen in training or not (a count of 11 when
  training's largest was 10). A grid needs evidence: at least ``GRID_MIN_LEVELS`` training
  levels, all on the lattice of the column's step. Two levels are no evidence: the step is just
  their difference (a column of 0s and 2s in 540 rows may still take 1).
* otherwise the codes of the levels seen in training (two levels, one, or levels on no common
  grid).

A value farther than ``GRID_TOL`` steps from every support point is *off the support*. Each
support point ``s`` owns the values nearer to it than to any other (its *cell*: half a step
either side on a grid; out to the midpoints to its neighbours among levels, unbounded beyond
the outermost). The model of a column's value, given the rest of the record: with probability
``1 - eps`` a support point, with the probability the flow gives it; with probability ``eps``
the nearest support point ``s`` moved by an offset ``u`` (in steps) whose density on ``s``'s
cell is Laplace, ``exp(-|u| / d) / Z(s)``, with ``d`` half the cell's half-width on that side
(a quarter of a step on a grid; an unbounded side takes the other side's; a lone level a
quarter step) and ``Z(s)`` its integral over the cell. Per column and record, the log-density
gains

* ``log(1 - eps)`` for a value on the support,
* ``log(eps) - |u| / d - log Z(s)`` for one off it, scored at ``s``'s cell,

and ``0`` for a missing value (the missing indicator models it). Over a cell the two parts give
``1 - eps`` and ``eps`` of the point's probability: the extension adds no mass and loses none,
so the record's density stays normalised (against counting measure on the support plus
Lebesgue measure in steps off it), and a value off the support scores finite, worse than its
nearest support point, worse the farther it is (2 nats more per half-cell).

``eps``, the probability of a value off the support, is estimated from the training values:
``1 / (2 (n + 1))`` for ``n`` of them on a grid (the Krichevsky-Trofimov estimate of an outcome
never seen in ``n`` draws: 7 nats at 540 rows), and for levels the Good-Turing estimate of the
mass of unseen values, ``(n1 + 1/2) / (n + 1)`` with ``n1`` the levels seen once, at most 1/2:
a column of 15 levels in 80 rows, most of them seen once, is likely to take new values, one
whose every level was seen often is not.

Encoders saved before this rule (no ``off_support_mass``) keep theirs (:class:`LegacySupport`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from pipelines.tabular.columns import GRID_TOL, ColumnSpec

GRID_MIN_LEVELS = 3  # training levels on one lattice that show a grid (two gaps of the step)
# The Laplace scale of the offset, as a share of the cell's half-width on its side: the
# density falls by e^2 from a support point to its cell's edge.
DECAY_SHARE = 0.5
MAX_OFF_SUPPORT_MASS = 0.5  # eps: an unseen value is at most as likely as a seen one


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


def off_support_mass(counts: NDArray[np.int_], on_grid: bool) -> float:
    """``eps``, the probability of a value off the support (see the module docstring).

    Arguments:
        counts: how many training values each level holds.
        on_grid: the support is the column's grid.
    """
    n = int(counts.sum())
    if on_grid:
        return 1.0 / (2.0 * (n + 1))
    return min(MAX_OFF_SUPPORT_MASS, (int((counts == 1).sum()) + 0.5) / (n + 1))


def nearest_support(codes: NDArray[np.float64], on_grid: bool, levels: NDArray[np.float64]
                    ) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """The nearest support point of each code, and its index in ``levels`` (0 on a grid).
    Ties go to the lower point; NaN stays NaN.

    Arguments:
        codes: one column's codes.
        on_grid: the support is every integer code.
        levels: otherwise, the sorted codes of the training levels.
    """
    if on_grid:
        return np.ceil(codes - 0.5), np.zeros(len(codes), dtype=np.intp)
    upper = np.clip(np.searchsorted(levels, codes), 1, max(1, len(levels) - 1))
    if len(levels) == 1:
        index = np.zeros(len(codes), dtype=np.intp)
    else:
        lower_is_nearer = codes - levels[upper - 1] <= levels[upper] - codes
        index = np.where(lower_is_nearer, upper - 1, upper)
    nearest = levels[index]
    return np.where(np.isnan(codes), np.nan, nearest), index


def cells(on_grid: bool, levels: NDArray[np.float64]
          ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per support point (one for a grid): the Laplace scale below and above it, and ``log Z``,
    the log of the kernel's integral over its cell (see the module docstring).

    Arguments:
        on_grid: the support is every integer code (cells of half a step either side).
        levels: otherwise, the sorted codes of the training levels.
    """
    if on_grid or len(levels) == 1:  # a lone level's cell is unbounded: a grid's scale
        below = above = np.array([0.5])
        bounded_below = bounded_above = np.array([on_grid])
    else:
        half_gaps = np.diff(levels) / 2.0
        below = np.concatenate([[np.inf], half_gaps])
        above = np.concatenate([half_gaps, [np.inf]])
        bounded_below, bounded_above = np.isfinite(below), np.isfinite(above)
        below, above = np.where(bounded_below, below, above), np.where(bounded_above, above,
                                                                       below)
    decay_below, decay_above = DECAY_SHARE * below, DECAY_SHARE * above
    # the integral of exp(-u / d) from 0 to the edge (d (1 - e^-2)), or to infinity (d)
    edge = -math.expm1(-1.0 / DECAY_SHARE)
    z = (decay_below * np.where(bounded_below, edge, 1.0)
         + decay_above * np.where(bounded_above, edge, 1.0))
    return decay_below, decay_above, np.log(z)


class Support:
    """The support of every discrete and binary column of an encoder, and the per-column
    log-density factors of the module docstring.

    Arguments:
        on_grid: per column, whether its support is its whole grid.
        levels: per column, the sorted codes of its training levels (empty on a grid).
        mass: per column, ``eps``.
    """

    def __init__(self, on_grid: NDArray[np.bool_], levels: Sequence[NDArray[np.float64]],
                 mass: NDArray[np.float64]) -> None:
        self.on_grid = np.asarray(on_grid, dtype=bool)
        self.levels = [np.asarray(level, dtype=np.float64) for level in levels]
        self.mass = np.asarray(mass, dtype=np.float64)
        self.cells = [cells(grid, level)
                      for grid, level in zip(self.on_grid, self.levels, strict=True)]

    @classmethod
    def fit(cls, specs: Sequence[ColumnSpec], codes: NDArray[np.float64]) -> Support:
        """The support of columns from their training codes.

        Arguments:
            specs: the discrete and binary columns' specs.
            codes: ``(n, len(specs))`` their codes on every row the schema was inferred from
                (NaN where missing).
        """
        on_grid, levels, mass = [], [], []
        for spec, column in zip(specs, codes.T, strict=True):
            grid = grid_evidence(spec, column)
            seen, counts = np.unique(column[~np.isnan(column)], return_counts=True)
            on_grid.append(grid)
            levels.append(np.empty(0) if grid else seen)
            mass.append(off_support_mass(counts, grid))
        return cls(np.array(on_grid, dtype=bool), levels, np.array(mass))

    def snap(self, codes: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray]:
        """Codes moved to their nearest support point where they are off the support, and the
        per-entry log-density factors; both ``(n, columns)``.

        Arguments:
            codes: the columns' codes (NaN where missing).
        """
        snapped = codes.copy()
        on_support = np.array([math.log1p(-mass) for mass in self.mass])
        factors = np.where(np.isnan(codes), 0.0, on_support)  # a missing value: no factor
        for j in range(codes.shape[1]):  # column by column: ~5 us each per call
            column = codes[:, j]
            nearest, index = nearest_support(column, self.on_grid[j], self.levels[j])
            offset = column - nearest
            with np.errstate(invalid="ignore"):  # NaN (missing) compares False
                off = np.abs(offset) > GRID_TOL
            if off.any():
                decay_below, decay_above, log_z = self.cells[j]
                u, at = offset[off], index[off]
                decay = np.where(u < 0, decay_below[at], decay_above[at])
                factors[off, j] = math.log(self.mass[j]) - np.abs(u) / decay - log_z[at]
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
        """What an encoder saves (skops: arrays and lists)."""
        return {"on_grid_": self.on_grid, "support_levels_": list(self.levels),
                "off_support_mass_": self.mass}


class LegacySupport:
    """The rule of encoders saved before :class:`Support` (their files have no
    ``off_support_mass_``), with its interface: a value between the grid points of a column
    ``on_grid`` (two or more levels on a grid, by the rule of then) has zero density; saved
    before ``on_grid_`` existed, no column is on a grid and every value is scored at its own
    code.

    Arguments:
        on_grid: per column, the saved ``on_grid_``.
    """

    def __init__(self, on_grid: NDArray[np.bool_]) -> None:
        self.on_grid = np.asarray(on_grid, dtype=bool)

    def off(self, codes: NDArray[np.float64]) -> NDArray[np.bool_]:
        """``(n, columns)``: where a column on a grid holds a value between two grid points.

        Arguments:
            codes: the columns' codes.
        """
        out = np.zeros(codes.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            for j in np.flatnonzero(self.on_grid):
                out[:, j] = np.abs(codes[:, j] - np.rint(codes[:, j])) > GRID_TOL
        return out

    def snap(self, codes: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray]:
        """The codes as they are, and the factors: ``-inf`` off the grid, else 0.

        Arguments:
            codes: the columns' codes.
        """
        return codes, np.where(self.off(codes), -np.inf, 0.0)

    def to_state(self) -> dict[str, object]:
        """What an encoder saves: ``on_grid_`` alone, so that it loads with this rule again."""
        return {"on_grid_": self.on_grid}
