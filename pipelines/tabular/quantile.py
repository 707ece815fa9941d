"""Quantile scaling of a continuous column with an exact log-Jacobian.

``z = Phi^-1(F(x))`` with ``F`` the piecewise-linear CDF through a fitted QuantileTransformer's
``quantiles_`` / ``references_`` (:func:`cdf_knots`): tied quantiles (point masses) merged into
one knot at their mean reference so that ``F`` is strictly increasing, and the end references
moved from 0 and 1 to ``0.5 / n`` and ``1 - 0.5 / n`` (half a training record) so that ``z`` is
finite. Beyond the training range ``z`` continues as a straight line with the slope (in ``z``)
of the outermost segment: an extreme value stays extreme, never clipped. The log-Jacobian is
``log F'(x) - log phi(z)`` inside, ``log(slope)`` outside (:func:`normal_scores`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
Knots = tuple[NDArray[np.float64], NDArray[np.float64]]


def cdf_knots(quantiles: NDArray[np.float64], references: NDArray[np.float64],
              n_observed: int) -> Knots:
    """Knots ``(x, F)`` of a strictly increasing piecewise-linear CDF with 0 < F < 1.

    Arguments:
        quantiles: the fitted transformer's quantiles of the column.
        references: their CDF values.
        n_observed: the column's non-missing training values.
    """
    x, group = np.unique(quantiles, return_inverse=True)
    # Tied quantiles are a point mass: one knot at their mean reference keeps F' finite.
    cdf = np.bincount(group, weights=references) / np.bincount(group)
    eps = 0.5 / n_observed
    return x, np.clip(cdf, eps, 1.0 - eps)


def _outer_slopes(xk: NDArray[np.float64], fk: NDArray[np.float64]
                  ) -> tuple[NDArray[np.float64], float, float]:
    """``z`` at the two outermost knots on each side, and the slopes in ``z`` beyond them."""
    zk = ndtri(fk[[0, 1, -2, -1]])
    return zk, (zk[1] - zk[0]) / (xk[1] - xk[0]), (zk[3] - zk[2]) / (xk[-1] - xk[-2])


def normal_scores(x: NDArray[np.float64], xk: NDArray[np.float64], fk: NDArray[np.float64]
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``z = Phi^-1(F(x))`` and ``log dz/dx``, linear in ``z`` beyond the outer knots.

    Arguments:
        x: the column's values.
        xk, fk: its knots (:func:`cdf_knots`).
    """
    seg = np.clip(np.searchsorted(xk, x, side="right") - 1, 0, len(xk) - 2)
    slope = (fk[seg + 1] - fk[seg]) / (xk[seg + 1] - xk[seg])
    inside = np.clip(x, xk[0], xk[-1])
    z = ndtri(fk[seg] + slope * (inside - xk[seg]))
    # dz/dx = F'(x) / phi(z)
    log_dz = np.log(slope) + 0.5 * z**2 + LOG_SQRT_2PI
    zk, slope_lo, slope_hi = _outer_slopes(xk, fk)
    for outside, z_end, x_end, z_slope in ((x < xk[0], zk[0], xk[0], slope_lo),
                                           (x > xk[-1], zk[3], xk[-1], slope_hi)):
        z[outside] = z_end + z_slope * (x[outside] - x_end)
        log_dz[outside] = np.log(z_slope)
    return z, log_dz


def raw_range(knots: Knots, bound: float) -> tuple[float, float]:
    """The raw values whose ``z`` is within ``[-bound, bound]`` (linear beyond the knots).

    Arguments:
        knots: the column's knots.
        bound: the largest ``|z|``.
    """
    xk, fk = knots
    zk, slope_lo, slope_hi = _outer_slopes(xk, fk)
    return (float(xk[0] - (bound + zk[0]) / slope_lo),
            float(xk[-1] + (bound - zk[3]) / slope_hi))
