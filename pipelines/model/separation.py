"""A label-free measure of how clearly per-row NLLs split into a well-fitted bulk and the rest.

ODIM (Kim et al., "ODIM: Outlier detection via likelihood of under-fitted generative models",
ICML 2023) observed that a likelihood model trained on rows that hold anomalies fits the inliers
first ("inlier memorisation"), and chooses how long to train by the Wasserstein distance between
the two components of a two-Gaussian fit to the per-row losses: the larger, the more clearly the
rows separate. :func:`nll_separation` is that distance, on NLLs made comparable between epochs.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.mixture import GaussianMixture

# The share of rows clipped at each end before standardising: a few rows of near-zero density
# (thousands of nats) would otherwise be a component of their own and decide the distance.
WINSOR_SHARE = 0.01


def nll_separation(nll: ArrayLike, seed: int = 0) -> float:
    """The 2-Wasserstein distance between the two components of a two-Gaussian mixture fitted
    to the NLLs, after winsorising them at ``WINSOR_SHARE`` and standardising them (mean 0,
    standard deviation 1), so that it does not grow with the NLLs' scale; 0 when the NLLs are
    constant, fewer than 4, or any is NaN (an infinite NLL counts as the largest finite one).

    Between two normals the distance has a closed form: ``sqrt((m1 - m2)^2 + (s1 - s2)^2)``.

    Arguments:
        nll: per-row negative log-likelihoods.
        seed: the mixture fit's initialisation.
    """
    values = np.asarray(nll, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if len(values) < 4 or np.isnan(values).any() or len(finite) == 0:
        return 0.0
    # a row of zero density (+inf) is clipped with the other worst-fitting ones
    values = np.clip(values, finite.min(), finite.max())
    low, high = np.quantile(values, [WINSOR_SHARE, 1 - WINSOR_SHARE])
    values = np.clip(values, low, high)
    spread = values.std()
    if spread == 0:
        return 0.0
    values = ((values - values.mean()) / spread)[:, None]
    mixture = GaussianMixture(n_components=2, random_state=seed).fit(values)
    means = mixture.means_.ravel()
    stds = np.sqrt(mixture.covariances_.ravel())
    return float(np.hypot(means[0] - means[1], stds[0] - stds[1]))
