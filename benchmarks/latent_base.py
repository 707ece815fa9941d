"""A lever for issue 19: refit the base density of each trained flow on its training latents.

``p(x) = q(f(x)) |det J_f(x)|`` is still an exact density for any density ``q`` of the latent
space. Two families of ``q``, each mixed with the standard normal the flow was trained with
(weight ``w`` on the normal):

* a Gaussian KDE over ``M`` training latents (bandwidth ``h``): a "kNN in latent space";
* a Gaussian mixture with ``K`` components (full or diagonal covariances) fitted by EM
  (``sklearn.mixture.GaussianMixture``) on all training latents.

Each variant is scored on the detector's own validation rows (dequantised as in training: at
cell midpoints, a kernel centred on a training row of the same discrete cell would be rewarded
for nothing but the duplicate) and on the protocol's test and calibration splits. Selection per
dataset and seed is by validation NLL only; test ROC-AUC is read afterwards.

Run (one-class protocol, one thread; ~3 min per dataset, ~6 min per ``5_campaign`` seed)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/latent_base.py run OUT.json [--datasets a,b]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/latent_base.py summarize OUT.json [OUT2.json]

Results: ``results/levers/latent_base/``.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from pipelines.evaluation import protocol
from pipelines.evaluation.ranking import rankable_scores
from pipelines.model.detector import Detector
from pipelines.model.fitting import split_rows
from pipelines.model.frames import as_frame

DATA = Path(__file__).resolve().parents[2] / "shared/data/adbench"
KDE_GRID = [(m, h, w) for m in (64, 256, 1024) for h in (0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
            for w in (0.0, 0.5, 0.8, 0.9, 0.97)]
GMM_GRID = [(k, cov, w) for k in (1, 2, 4, 8, 16) for cov in ("full", "diag")
            for w in (0.0, 0.5, 0.9)]
# Families of candidates a per-dataset selection may choose from (the trained flow is always
# a candidate).
FAMILIES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "trained flow only": lambda v: False,
    "every variant": lambda v: True,
    "GMM (full or diagonal)": lambda v: v["kind"] == "gmm",
    "GMM full": lambda v: v["kind"] == "gmm" and v["cov"] == "full",
    "GMM diagonal": lambda v: v["kind"] == "gmm" and v["cov"] == "diag",
    "KDE, M = 64": lambda v: v["kind"] == "kde" and v["M"] == 64,
    "KDE, M <= 1024": lambda v: v["kind"] == "kde",
}
# The detector's own early-stopping criterion leaves out the worst 5% of validation rows
# (pipelines.model.training.TrainConfig.validation_trim).
VALIDATION_TRIM = 0.05
CRITERIA = {"val": "mean validation NLL", "val_trimmed": "5%-trimmed mean validation NLL",
            "val_median": "median validation NLL"}
Base = Callable[[torch.Tensor], torch.Tensor]


def normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.square().sum(1) + z.shape[1] * math.log(2 * math.pi))


def kde(z: torch.Tensor, centres: torch.Tensor, h: float) -> torch.Tensor:
    """Gaussian KDE with bandwidth ``h`` (latent units) over ``centres``."""
    d2 = torch.cdist(z, centres).square()
    return (torch.logsumexp(-d2 / (2 * h * h), 1) - math.log(len(centres))
            - 0.5 * z.shape[1] * math.log(2 * math.pi * h * h))


def with_normal(log_q: torch.Tensor, z: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w N(z) + (1 - w) q(z))``."""
    if w <= 0:
        return log_q
    return torch.logaddexp(normal(z) + math.log(w), log_q + math.log(1 - w))


Encoded = dict[str, tuple[np.ndarray, np.ndarray]]


def fit_and_encode(X: np.ndarray, y: np.ndarray, seed: int
                   ) -> tuple[Detector, Encoded, np.ndarray]:
    """Fits the default detector on one protocol run's training split; returns it, the encoded
    rows and log-Jacobians of its own training and validation rows (dequantised as in training)
    and of the protocol's test and calibration splits (cell midpoints, as scoring does), and the
    test labels."""
    train, cal, test, y_test = protocol.split(y, seed)
    scaler = StandardScaler().fit(X[train])
    detector = Detector("realnvp", random_state=seed, calibration_fraction=0.0)
    data = as_frame(scaler.transform(X[train]))
    detector.fit(data)
    columns = list(data.columns)
    train_rows, val_rows, _ = split_rows(len(data), (detector.validation_fraction, 0.0), seed)
    encoder, rng = detector.encoder_, np.random.default_rng(seed)

    def dequantised(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        lower, log_jacobian = encoder.transform(frame, offset=0.0)
        width = (encoder.cell_widths(frame) if any(len(a) for a in encoder.atoms_)
                 else np.broadcast_to(encoder.dequantization_width_, lower.shape))
        return lower + rng.random(lower.shape) * width, log_jacobian

    encoded = {
        "train": dequantised(data.iloc[train_rows]),
        "val": dequantised(data.iloc[val_rows]),
        "test": encoder.transform(as_frame(scaler.transform(X[test]), columns)),
        "cal": encoder.transform(as_frame(scaler.transform(X[cal]), columns)),
    }
    return detector, encoded, y_test


def scores_of(log_p: dict[str, np.ndarray], y_test: np.ndarray) -> dict[str, float]:
    """Validation NLLs (mean, 5%-trimmed, median), test ROC-AUC and the realised FPR at 0.05
    of a density given by its log-densities on the validation, test and calibration rows."""
    threshold = np.quantile(-log_p["cal"], 0.95)
    val_nll = np.sort(-log_p["val"])
    kept = val_nll[: len(val_nll) - math.floor(VALIDATION_TRIM * len(val_nll))]
    return {"val": float(val_nll.mean()), "val_trimmed": float(kept.mean()),
            "val_median": float(np.median(val_nll)),
            "auc": float(roc_auc_score(y_test, rankable_scores(-log_p["test"]))),
            "fpr": float(np.mean(-log_p["test"][y_test == 0] > threshold))}


def run_one(X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Every variant's validation NLL, test ROC-AUC and FPR at 0.05 for one protocol run."""
    detector, encoded, y_test = fit_and_encode(X, y, seed)
    members = detector.flow_.components
    latents = {}
    with torch.inference_mode():
        for split, (x, _) in encoded.items():
            latents[split] = [tuple(t.double() for t in m.inverse(torch.as_tensor(
                x, dtype=torch.float32))) for m in members]

    def evaluate(bases: list[Base]) -> dict[str, float]:
        log_p = {}
        for split in ("val", "test", "cal"):
            per_member = torch.stack([base(z) + log_det for base, (z, log_det)
                                      in zip(bases, latents[split], strict=True)])
            mixture = torch.logsumexp(per_member, 0) - math.log(len(bases))
            log_p[split] = mixture.numpy() + encoded[split][1]
        return scores_of(log_p, y_test)

    record: dict[str, Any] = {"seed": seed, "base": evaluate([normal] * len(members)),
                              "variants": []}
    n_train = len(latents["train"][0][0])
    for m, h, w in KDE_GRID:
        if m > n_train and m != KDE_GRID[0][0]:
            continue
        order = np.random.default_rng(seed + m).permutation(n_train)[:m]
        bases = [lambda z, c=z_train[order], h=h, w=w: with_normal(kde(z, c, h), z, w)
                 for z_train, _ in latents["train"]]
        record["variants"].append({"kind": "kde", "M": m, "h": h, "w": w, **evaluate(bases)})
    for k, cov, w in GMM_GRID:
        bases = []
        for z_train, _ in latents["train"]:
            gmm = GaussianMixture(k, covariance_type=cov, random_state=seed,
                                  reg_covar=1e-4).fit(z_train.numpy())
            bases.append(lambda z, gmm=gmm, w=w: with_normal(
                torch.as_tensor(gmm.score_samples(z.numpy())), z, w))
        record["variants"].append({"kind": "gmm", "K": k, "cov": cov, "w": w,
                                   **evaluate(bases)})
    return record


def run(output: Path, datasets: list[str] | None,
        run_one: Callable[[np.ndarray, np.ndarray, int], dict[str, Any]] = run_one,
        data: Path = DATA) -> None:
    """Runs ``run_one`` on every dataset (``*.npz`` in ``data``) and seed of the one-class
    protocol, appending each record to ``output`` (a rerun resumes where it stopped)."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="sklearn")  # EM's convergence warnings
    records = json.loads(output.read_text()) if output.exists() else []
    done = {(r["dataset"], r["seed"]) for r in records}
    for path in sorted(data.glob("*.npz"), key=lambda p: protocol.dataset_sort_key(p.stem)):
        if datasets and path.stem not in datasets:
            continue
        X, y = protocol.load_npz(path)
        for seed in protocol.SEEDS:
            if (path.stem, seed) in done:
                continue
            records.append({"dataset": path.stem, **run_one(X, y, seed)})
            output.write_text(json.dumps(records))
            best = min(records[-1]["variants"], key=lambda v: v["val"])
            print(path.stem, seed, records[-1]["base"], best, flush=True)


def summarize(paths: list[Path],
              families: dict[str, Callable[[dict[str, Any]], bool]] = FAMILIES) -> str:
    """Per validation criterion and family: mean test ROC-AUC and rank of 11 (bundled one-class
    baselines) of the variant each run's validation chose (seeds averaged per dataset)."""
    records = [r for p in paths for r in json.loads(p.read_text())]
    baselines = pd.DataFrame(protocol.load_bundled_baselines("one-class"))
    baseline_auc = baselines.groupby(["dataset", "detector"]).roc_auc.mean().unstack()[
        list(protocol.BASELINE_DETECTORS)]
    lines = []
    for criterion in ("val", "val_trimmed", "val_median"):
        lines += [f"chosen by {CRITERIA[criterion]}:", "",
                  "| candidates | validation NLL vs trained flow | test ROC-AUC | rank of 11 | "
                  "mean abs(FPR - 0.05) |", "|---|---|---|---|---|"]
        per_dataset = {}
        for family, keep in families.items():
            rows = []
            for r in records:
                chosen = min([r["base"], *(v for v in r["variants"] if keep(v))],
                             key=lambda v: v[criterion])
                rows.append({"dataset": r["dataset"], "auc": chosen["auc"], "fpr": chosen["fpr"],
                             "dval": chosen[criterion] - r["base"][criterion]})
            means = pd.DataFrame(rows).groupby("dataset").mean()
            table = baseline_auc.loc[means.index].copy()
            table["flowad"] = means.auc
            rank = table.rank(axis=1, ascending=False).mean()["flowad"]
            lines.append(f"| {family} | {means.dval.mean():+.3f} | {means.auc.mean():.4f} | "
                         f"{rank:.2f} | {np.abs(means.fpr - 0.05).mean():.4f} |")
            per_dataset[family] = means.auc
        lines += ["", pd.DataFrame(per_dataset).round(4).to_string(), ""]
    runs = pd.DataFrame(records).groupby("dataset").size()
    return "\n".join([*lines, f"runs per dataset: {runs.to_dict()}"]) + "\n"


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "run":
        chosen = rest[rest.index("--datasets") + 1].split(",") if "--datasets" in rest else None
        run(Path(rest[0]), chosen)
    else:
        print(summarize([Path(p) for p in rest]))
