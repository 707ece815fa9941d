"""The levers of issue 28 on the development suite, and what each costs on ``6_cardio``.

Candidates (fixed with the rule in ``dev_suite.py`` before any ran):

* options of the detector (``CANDIDATES``): VSDE's variance penalty with K = 2 or 4 flows
  (``TrainConfig.variance_penalty``; the members' random coupling masks differ, and the mixture
  takes the log-mean-exp of their densities), K = 4 alone, spectral norm on the couplings
  (``RealNVP(spectral_norm=True)``), a Student-t base, a peak learning rate of 1e-2, the epoch
  chosen by the training NLL's separation (``TrainConfig.epoch_selection="separation"``, ODIM);
* detectors built around the default one (``WRAPPED``): the flow + encoded-space KDE mixture
  (w = 0.5, M and h by validation NLL: ``flow_kde_mixture.py`` as a protocol detector), the
  product with a Ledoit-Wolf Gaussian (each log-density standardised by its median and IQR on
  the fitted rows, then summed), the SRR refit (three folds; a row both out-of-fold flows score
  in their top 10% is dropped, then the default is fitted on the rest); and the Ledoit-Wolf
  Gaussian alone for reference (not a candidate).

Run (one thread; results in ``results/dev/[unsupervised/]CANDIDATE/``)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/levers28.py run CANDIDATE \
        [--protocol unsupervised] [--data DIR] [--out DIR]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/levers28.py cost CANDIDATE [CANDIDATE ...] \
        [--dataset 6_cardio]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/levers28.py spikes
    PYTHONPATH=$PWD .venv/bin/python benchmarks/levers28.py pareto   # results/dev/pareto-28.png

``cost`` fits and scores each candidate on ``6_cardio`` (one-class split, seed 0) interleaved
with the default detector and ``IsolationForest(100)`` (3 fits, 15 scoring rounds, medians,
one thread), prints
fit seconds and scoring rows/s, each also as a ratio to IsolationForest's, and adds them to
``results/dev/cost.json`` (what ``dev_suite.py decide28 --cost`` reads; another
``--dataset``: ``cost-DATASET.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy and torch load

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flow_kde_mixture import GRID_H, GRID_M
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from pipelines.evaluation import protocol
from pipelines.evaluation.benchmark import ProtocolDetector, _run
from pipelines.model.fitting import split_rows
from pipelines.model.frames import as_frame

DEV = Path(__file__).resolve().parent / "data" / "dev"
ADBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "adbench"  # 6_cardio
RESULTS = Path(__file__).resolve().parent / "results" / "dev"
FOREST = "IsolationForest(100)"
# The candidates of the Pareto plot (those run under a protocol are plotted in its panel).
PARETO = ("flow-kde-0.5", "flow-kde-0.5-m256", "mix4", "student", "spectral-norm", "lr-1e-2",
          "odim", "vsde-l1-k2", "trim-0.1", "gauss-product", "srr")
# The development datasets with under 250 training rows, where the issue saw the spike.
SMALL_DEV = ("14_glass", "15_Hepatitis", "18_Ionosphere", "21_Lymphography", "37_Stamps",
             "39_vertebral", "45_wine")

CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "vsde-l1-k2": {"train_options": {"variance_penalty": 1.0}},
    "vsde-l3.3-k2": {"train_options": {"variance_penalty": 3.3}},
    "vsde-l1-k4": {"flow_options": {"members": 4}, "train_options": {"variance_penalty": 1.0}},
    "vsde-l3.3-k4": {"flow_options": {"members": 4},
                     "train_options": {"variance_penalty": 3.3}},
    "mix4": {"flow_options": {"members": 4}},
    "spectral-norm": {"flow_options": {"spectral_norm": True}},
    "student": {"flow_options": {"base": "student"}},
    "lr-1e-2": {"train_options": {"learning_rate": 1e-2}},
    "odim": {"train_options": {"epoch_selection": "separation"}},
    "trim-0.1": {"train_options": {"trim_share": 0.1}},
}


def robust_standardised(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(scores - median) / IQR`` of the reference scores (``+inf`` stays ``+inf``).

    Arguments:
        scores: anomaly scores to rescale.
        reference: the fitted rows' scores, whose median and interquartile range are used.
    """
    low, median, high = np.quantile(reference, [0.25, 0.5, 0.75])
    return (scores - median) / max(high - low, 1e-12)


class GaussianScore:
    """Half the squared Ledoit-Wolf Mahalanobis distance: a Gaussian's NLL up to a constant."""

    def fit(self, X: np.ndarray) -> GaussianScore:
        self.model_ = LedoitWolf().fit(X)
        self.info_ = f"shrinkage={self.model_.shrinkage_:.3g}"
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return 0.5 * self.model_.mahalanobis(X)


class GaussianProduct:
    """The default flow's NLL plus a Ledoit-Wolf Gaussian's, each robustly standardised on the
    fitted rows: a product of the two densities whose weights are the inverse spreads of their
    scores (no labels).

    Arguments:
        seed: the protocol seed (the flow's ``random_state``).
    """

    def __init__(self, seed: int) -> None:
        self.flow = ProtocolDetector("realnvp", seed)
        self.gaussian = GaussianScore()

    def fit(self, X: np.ndarray) -> GaussianProduct:
        self.flow.fit(X)
        self.gaussian.fit(X)
        self.flow_reference_ = self.flow.decision_function(X)
        self.gaussian_reference_ = self.gaussian.decision_function(X)
        self.info_ = f"{self.flow.info_} {self.gaussian.info_}"
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return (robust_standardised(self.flow.decision_function(X), self.flow_reference_)
                + robust_standardised(self.gaussian.decision_function(X),
                                      self.gaussian_reference_))


class FoldVoteRefit:
    """SRR (Yoon et al., "Self-supervise, refine, repeat", TMLR 2022) with flows: the default
    detector on each of ``folds`` disjoint folds scores the rows outside its fold; a row that
    every out-of-fold detector scores above its own ``1 - share`` quantile is dropped, and the
    default detector is fitted on the rest.

    Arguments:
        seed: the protocol seed (folds and flows).
        folds: the number of folds.
        share: each detector's share of flagged rows.
    """

    def __init__(self, seed: int, folds: int = 3, share: float = 0.1) -> None:
        self.seed, self.folds, self.share = seed, folds, share

    def fit(self, X: np.ndarray) -> FoldVoteRefit:
        fold_of = np.random.default_rng(self.seed).permutation(len(X)) % self.folds
        flagged = np.ones(len(X), dtype=bool)
        for k in range(self.folds):
            inside = fold_of == k
            scores = ProtocolDetector("realnvp", self.seed + k).fit(
                X[inside]).decision_function(X[~inside])
            flags = np.zeros(len(X), dtype=bool)
            flags[~inside] = scores > np.quantile(scores, 1 - self.share)
            flagged[~inside] &= flags[~inside]  # every out-of-fold detector must agree
        self.final = ProtocolDetector("realnvp", self.seed).fit(X[~flagged])
        self.info_ = f"dropped={int(flagged.sum())}/{len(X)} {self.final.info_}"
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.final.decision_function(X)


class FlowKDE:
    """``p = 0.5 p_flow + 0.5 KDE_h`` in the encoded space (``flow_kde_mixture.py``), the KDE
    over ``M`` of the detector's dequantised training rows; ``M`` and ``h`` chosen by the mean
    NLL of its validation rows.

    Arguments:
        seed: the protocol seed.
        weight: the flow's weight ``w``.
        sizes: the numbers of centres ``M`` tried (at most the training rows).
    """

    def __init__(self, seed: int, weight: float = 0.5,
                 sizes: tuple[int, ...] = GRID_M) -> None:
        self.seed, self.weight, self.sizes = seed, weight, sizes
        self.flow = ProtocolDetector("realnvp", seed)

    def fit(self, X: np.ndarray) -> FlowKDE:
        self.flow.fit(X)
        detector = self.flow.detector
        data = as_frame(X)
        train_rows, val_rows, _ = split_rows(len(data), (detector.validation_fraction, 0.0),
                                             self.seed)
        rng = np.random.default_rng(self.seed)
        train = torch.as_tensor(self._dequantised(data.iloc[train_rows], rng)[0])
        val, val_jacobian = self._dequantised(data.iloc[val_rows], rng)
        best = math.inf
        for m in self.sizes:
            if m > len(train) and m != self.sizes[0]:
                continue
            centres = train[np.random.default_rng(self.seed + m).permutation(len(train))[:m]]
            for h in GRID_H:
                self.centres_, self.bandwidth_ = centres, h
                nll = -(self._log_density(val) + val_jacobian).mean()
                if nll < best:
                    best, chosen = nll, (centres, h)
        self.centres_, self.bandwidth_ = chosen
        self.info_ = f"{self.flow.info_} M={len(self.centres_)} h={self.bandwidth_}"
        return self

    def _dequantised(self, frame: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rows encoded as in training (uniform noise within each cell) and log-Jacobians."""
        encoder = self.flow.detector.encoder_
        lower, log_jacobian = encoder.transform(frame, offset=0.0)
        width = (encoder.cell_widths(frame) if any(len(a) for a in encoder.atoms_)
                 else np.broadcast_to(encoder.dequantization_width_, lower.shape))
        return lower + rng.random(lower.shape) * width, log_jacobian

    def _log_density(self, encoded: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(encoded, dtype=torch.float64)
        with torch.inference_mode():
            log_flow = self.flow.detector.flow_.log_prob(x.float()).double()
            log_kde = torch.cat([self._kde(chunk) for chunk in torch.split(x, 4096)])
            mixed = torch.logaddexp(log_flow + math.log(self.weight),
                                    log_kde + math.log(1 - self.weight))
        return mixed.numpy()

    def _kde(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`latent_base.kde` with squared distances from one matrix product (``|x|^2 +
        |c|^2 - 2 x c'``, float64: equal to 1e-13 nats, 2.4x faster than ``torch.cdist``)."""
        centres, h = self.centres_, self.bandwidth_
        squared = (x.square().sum(1, keepdim=True) + centres.square().sum(1)).addmm_(
            x, centres.T, alpha=-2).clamp_min_(0)
        return (torch.logsumexp(squared.mul_(-0.5 / (h * h)), 1) - math.log(len(centres))
                - 0.5 * x.shape[1] * math.log(2 * math.pi * h * h))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        detector = self.flow.detector
        encoded, log_jacobian = detector.encoder_.transform(
            as_frame(X, list(detector.feature_names_in_)))
        scores = -(self._log_density(encoded) + log_jacobian)
        return np.nan_to_num(scores, posinf=np.finfo(np.float64).max)


WRAPPED: dict[str, Callable[[int], protocol.AnomalyDetector]] = {
    "flow-kde-0.5": FlowKDE,
    "flow-kde-0.5-m256": lambda seed: FlowKDE(seed, sizes=(256,)),
    "gauss-product": GaussianProduct,
    "srr": FoldVoteRefit,
    "lw-gaussian": lambda seed: GaussianScore(),
}


def make(candidate: str) -> Callable[[int], protocol.AnomalyDetector]:
    """The protocol's ``make_detector(seed)`` of a candidate."""
    if candidate in WRAPPED:
        return WRAPPED[candidate]
    options = CANDIDATES[candidate]
    return lambda seed: ProtocolDetector("realnvp", seed, **options)


def run(candidate: str, kind: str, data: Path, out: Path) -> None:
    """Every dataset and seed of protocol ``kind`` for ``candidate``, resumable."""
    torch.set_num_threads(1)
    folder = out / candidate if kind == "one-class" else out / kind / candidate
    stem = "flowad-realnvp" + ("" if kind == "one-class" else f"-{kind}")
    _run(data, folder, stem, ["flowad-realnvp"], lambda _: make(candidate),
         seeds=protocol.SEEDS, datasets=None, kind=kind, log=print)


def cost(candidates: list[str], data: Path, dataset: str = "6_cardio", rounds: int = 3,
         scoring_rounds: int = 15) -> dict[str, dict[str, float]]:
    """Fit seconds and scoring rows/s on ``dataset`` against the default and IsolationForest,
    printed as a table; returns them per detector, with the ratios to IsolationForest's.

    Fits: ``rounds`` rounds, each fitting every detector once (A B C A B C ...). Scoring: the
    last fitted detectors, ``scoring_rounds`` interleaved rounds of at least 0.5 s each, so
    that a 10% difference stands out of a loaded machine's noise. Medians.

    Arguments:
        candidates: the candidates measured beside the default and IsolationForest(100).
        data: the folder of ``dataset``.
        dataset: the protocol's one-class split of it, seed 0.
        rounds, scoring_rounds: see above.
    """
    torch.set_num_threads(1)
    X, y = protocol.load_npz(data / f"{dataset}.npz")
    train, _, test, _ = protocol.split(y, 0)
    scaler = StandardScaler().fit(X[train])
    X_train, X_test = scaler.transform(X[train]), scaler.transform(X[test])
    makers = {FOREST: lambda seed: IsolationForest(n_estimators=100, n_jobs=1,
                                                   random_state=seed)}
    makers |= {c: make(c) for c in dict.fromkeys(["default", *candidates])}
    fits: dict[str, list[float]] = {name: [] for name in makers}
    fitted: dict[str, Any] = {}
    for _ in range(rounds):  # A B C A B C ...: load changes hit every side alike
        for name, maker in makers.items():
            fitted[name] = maker(0)
            start = time.perf_counter()
            fitted[name].fit(X_train)
            fits[name].append(time.perf_counter() - start)
    speeds: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(scoring_rounds):
        for name, detector in fitted.items():
            score = detector.score_samples if name == FOREST else detector.decision_function
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < 0.5 or calls == 0:
                score(X_test)
                calls += 1
            speeds[name].append(calls * len(X_test) / elapsed)
    forest_fit, forest_speed = np.median(fits[FOREST]), np.median(speeds[FOREST])
    print(f"{dataset}, {len(X_train)} training rows, {len(X_test)} test rows; medians of "
          f"{rounds} fits and {scoring_rounds} scoring rounds, interleaved; one thread")
    print("| detector | fit s | fit / IsolationForest | scoring rows/s | "
          "scoring / IsolationForest |")
    print("|---|---|---|---|---|")
    measured = {}
    for name in makers:
        fit, speed = float(np.median(fits[name])), float(np.median(speeds[name]))
        measured[name] = {"fit_s": fit, "rows_per_s": speed, "fit_ratio": fit / forest_fit,
                          "scoring_ratio": speed / forest_speed}
        print(f"| {name} | {fit:.3f} | {fit / forest_fit:.1f}x | {speed:,.0f} | "
              f"{speed / forest_speed:.2f}x |", flush=True)
    return measured


def spikes(data: Path, datasets: tuple[str, ...] = SMALL_DEV) -> None:
    """Per small development dataset and peak learning rate: each member's largest rise of the
    training NLL from one epoch to the next (nats), seeds 0-2 of the one-class protocol."""
    torch.set_num_threads(1)
    print("| dataset | training rows | peak learning rate | largest epoch-to-epoch rise of "
          "the training NLL, per seed and member (nats) |\n|---|---|---|---|")
    for name in datasets:
        X, y = protocol.load_npz(data / f"{name}.npz")
        for rate in (2e-2, 1e-2):
            rises = []
            for seed in protocol.SEEDS:
                train = protocol.split(y, seed)[0]
                rows = StandardScaler().fit_transform(X[train])
                detector = ProtocolDetector("realnvp", seed, train_options={
                    "learning_rate": rate}).fit(rows).detector
                for member in range(detector.metrics_["members"]):
                    nll = [e["train_nll"] for e in detector.history_ if e["member"] == member]
                    rises.append(float(np.diff(nll).max()))
            print(f"| {name} | {len(train)} | {rate:g} | "
                  + " ".join(f"{r:.1f}" for r in rises) + " |", flush=True)


def pareto(candidates: dict[str, list[str]], path: Path) -> None:
    """Development-suite mean rank of 11 against scoring rows/s over IsolationForest's on
    ``6_cardio`` (``results/dev/cost.json``), one panel per protocol, with the speed gate and
    the best baseline's rank.

    Arguments:
        candidates: per protocol, the candidates to plot (the default is added).
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dev_suite import MIN_SCORING_RATIO, evidence_28, runs_28

    measured = json.loads((RESULTS / "cost.json").read_text())
    fig, axes = plt.subplots(1, len(candidates), figsize=(7 * len(candidates), 5.5))
    for ax, (kind, names) in zip(np.atleast_1d(axes), candidates.items(), strict=True):
        default = runs_28("default", RESULTS, kind)
        for name in ["default", *names]:
            if name not in measured:
                continue
            evidence = evidence_28(name, default, RESULTS, kind)
            x, y = measured[name]["scoring_ratio"], evidence["rank"]
            ax.scatter(x, y, color="tab:red" if name == "default" else "tab:blue", zorder=3)
            fit = measured[name]["fit_ratio"] / measured["default"]["fit_ratio"]
            ax.annotate(f"{name} (fit {fit:.1f}x default's)", (x, y),
                        textcoords="offset points", xytext=(4, 3), fontsize=7)
        best = evidence_28("default", default, RESULTS, kind)["best_baseline"]  # beside it
        ax.axhline(float(best.split(" ")[1]), color="tab:gray", ls="--",
                   label=f"best baseline beside the default: {best}")
        ax.axvline(MIN_SCORING_RATIO, color="tab:green", ls=":", label="speed gate (1.5x)")
        ax.invert_yaxis()
        ax.set_xlabel("scoring rows/s / IsolationForest(100)'s, 6_cardio (one interleaved run, "
                      "medians of 15 rounds)")
        ax.set_ylabel(f"mean rank of 11, development suite, {kind} (1 = best)")
        ax.set_title(f"{kind} protocol")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("issue 28 levers: development-suite rank against scoring speed (up and right "
                 "is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    data = Path(rest[rest.index("--data") + 1]) if "--data" in rest else None
    if command == "spikes":
        spikes(data or DEV)
    elif command == "pareto":
        pareto({kind: [c for c in PARETO if (RESULTS / (c if kind == "one-class" else
                                                         f"{kind}/{c}")).exists()]
                for kind in ("one-class", "unsupervised")}, RESULTS / "pareto-28.png")
    elif command == "run":
        run(rest[0], rest[rest.index("--protocol") + 1] if "--protocol" in rest else "one-class",
            data or DEV, Path(rest[rest.index("--out") + 1]) if "--out" in rest else RESULTS)
    else:  # cost: measurements are added to (or replace those in) results/dev/cost.json
        dataset = rest[rest.index("--dataset") + 1] if "--dataset" in rest else "6_cardio"
        options = {str(data), dataset}
        measured = cost([c for c in rest if not c.startswith("--") and c not in options],
                        data or ADBENCH, dataset)
        path = RESULTS / ("cost.json" if dataset == "6_cardio" else f"cost-{dataset}.json")
        previous = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(previous | measured, indent=1) + "\n")
