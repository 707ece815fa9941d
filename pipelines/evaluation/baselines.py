"""The ten classical baselines, built as the reference script ``baselines.py`` builds them.

PyOD 3.6.7's IForest (``random_state=seed``), KNN, LOF, OCSVM, HBOS and PCA with their defaults;
ECOD and COPOD scored inductively against the training ECDFs (PyOD's batch
``decision_function`` recomputes them on train + the scored batch, so a row's score would depend
on the rest of its batch); scikit-learn's GaussianMixture with BIC-chosen k and KernelDensity
with Scott's bandwidth. They run through :func:`pipelines.evaluation.protocol.run_protocol`, so
any of its protocols can be benchmarked: ``flowad benchmark --baselines``. PyOD is imported
only here, when a PyOD detector is built (it is a development dependency, not a runtime one).
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import skew
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

from pipelines.evaluation.protocol import BASELINE_DETECTORS, AnomalyDetector

__all__ = ["ECDFInductive", "GaussianMixtureBIC", "KernelDensityScott", "make_baseline",
           "warm_up"]


class GaussianMixtureBIC:
    """Full-covariance GaussianMixture, k in 1..``max_k`` chosen by BIC on the training rows;
    score = -log-likelihood.

    Arguments:
        seed: the mixtures' ``random_state``.
        max_k: the largest number of components tried.
        reg_covar: added to the covariances' diagonals (collinear columns make them singular).
    """

    def __init__(self, seed: int, max_k: int = 10, reg_covar: float = 1e-4) -> None:
        self.seed, self.max_k, self.reg_covar = seed, max_k, reg_covar

    def fit(self, X: NDArray[np.float64]) -> GaussianMixtureBIC:
        best, best_bic, fails = None, np.inf, []
        for k in range(1, self.max_k + 1):
            try:
                mixture = GaussianMixture(n_components=k, covariance_type="full",
                                          reg_covar=self.reg_covar, random_state=self.seed).fit(X)
                bic = mixture.bic(X)
            except Exception as e:  # a k that fails is skipped, as in the reference script
                fails.append(f"k={k}:{type(e).__name__}")
                continue
            if bic < best_bic:
                best, best_bic = mixture, bic
        if best is None:
            raise RuntimeError("all GMM fits failed: " + ";".join(fails))
        self.model_ = best
        self.info_ = f"k={best.n_components}" + (f" fails={';'.join(fails)}" if fails else "")
        return self

    def decision_function(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        return -self.model_.score_samples(X)


class KernelDensityScott:
    """Gaussian KernelDensity with Scott's bandwidth ``n ** (-1 / (d + 4))``; score = -log
    density."""

    def fit(self, X: NDArray[np.float64]) -> KernelDensityScott:
        self.model_ = KernelDensity(kernel="gaussian", bandwidth="scott").fit(X)
        self.info_ = f"bw={self.model_.bandwidth_:.4g}"
        return self

    def decision_function(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        return -self.model_.score_samples(X)


class ECDFInductive:
    """PyOD's ECOD or COPOD, scored against the training ECDFs (the reference script's class).

    Equals PyOD's ``decision_function`` applied to one row at a time, except that the skewness
    signs are the training data's. ECDF convention of ``pyod.utils.stat_models.column_ecdf``:
    ``P(X <= x)`` counting ties.

    Arguments:
        kind: ``"ECOD"`` or ``"COPOD"``.
    """

    def __init__(self, kind: str) -> None:
        if kind not in ("ECOD", "COPOD"):
            raise ValueError(f"kind must be ECOD or COPOD, not {kind!r}")
        self.kind = kind

    def fit(self, X: NDArray[np.float64]) -> ECDFInductive:
        X = np.asarray(X, dtype=np.float64)
        self.sorted_ = np.sort(X, axis=0)
        self.n_ = X.shape[0]
        with np.errstate(all="ignore"):  # a constant column has no skewness: sign 0
            self.skew_sign_ = np.nan_to_num(np.sign(skew(X, axis=0)))
        return self

    def decision_function(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        X = np.asarray(X, dtype=np.float64)
        n = self.n_
        le, ge = np.empty(X.shape), np.empty(X.shape)
        for j in range(X.shape[1]):
            column = self.sorted_[:, j]
            le[:, j] = np.searchsorted(column, X[:, j], side="right")  # train values <= x
            ge[:, j] = n - np.searchsorted(column, X[:, j], side="left")  # train values >= x
        u_left = -np.log((le + 1.0) / (n + 1.0))
        u_right = -np.log((ge + 1.0) / (n + 1.0))
        sign = self.skew_sign_
        u_skew = u_left * -1 * np.sign(sign - 1) + u_right * np.sign(sign + 1)
        if self.kind == "ECOD":
            outlying = np.maximum(np.maximum(u_left, u_right), u_skew)
        else:
            outlying = np.maximum(u_skew, (u_left + u_right) / 2)
        return outlying.sum(axis=1)


def make_baseline(name: str, seed: int) -> AnomalyDetector:
    """A fresh baseline detector, as the reference script builds it.

    Arguments:
        name: one of :data:`pipelines.evaluation.protocol.BASELINE_DETECTORS`.
        seed: the run's seed (IForest's and the GMM's ``random_state``).
    """
    if name in ("ECOD", "COPOD"):
        return ECDFInductive(name)
    if name == "GMM":
        return GaussianMixtureBIC(seed)
    if name == "KDE":
        return KernelDensityScott()
    pyod: dict[str, tuple[str, str, dict[str, Any]]] = {
        "IForest": ("iforest", "IForest", {"random_state": seed}),
        "KNN": ("knn", "KNN", {}), "LOF": ("lof", "LOF", {}), "OCSVM": ("ocsvm", "OCSVM", {}),
        "HBOS": ("hbos", "HBOS", {}), "PCA": ("pca", "PCA", {}),
    }
    if name not in pyod:
        raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINE_DETECTORS}")
    module, cls, kwargs = pyod[name]
    return getattr(import_module(f"pyod.models.{module}"), cls)(**kwargs)


def warm_up(names: tuple[str, ...] = BASELINE_DETECTORS) -> None:
    """Fit and score each baseline once on tiny data, so that numba's JIT compilation (HBOS,
    ...) is not timed in the first run."""
    X = np.random.default_rng(0).standard_normal((60, 3))
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector = make_baseline(name, 0)
            detector.fit(X)
            detector.decision_function(X[:7])
