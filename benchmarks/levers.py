"""Measure detection-quality levers on the benchmark protocol (issue 6).

For each dataset, protocol seed and named configuration, fits ``--members`` one-flow detectors
(member m uses ``random_state = seed + 100 * m``, so member 0 is exactly what ``flowad benchmark
--members 1`` fits, and the first flow of the default mixture)
and stores, per member, the validation NLL (from the training split only), the fit time and the
calibration/test scores. ``--analyse`` then prints, per dataset, the test ROC-AUC of:

- each configuration with a single member and as an ensemble of all members: ``-ens`` is the
  mean of the members' log-likelihoods (a score, not a density), ``-mix`` their equal-weight
  mixture (log of the mean density: exact, what ``flow_options={"members": K}`` builds),
- ``select``: per member, the configuration with the lowest validation NLL (no test labels),
  then the ensemble of the selected members; ``select-crossover``: the configuration with the
  highest validation crossover AUC (below),

plus the realised conformal FPR at alpha = 0.05, all with the protocol's metrics.

Each fit also stores ``val_crossover_auc``, a label-free criterion computed on the training
split only. Following Tax & Duin ("Uniform object generation for optimizing one-class
classifiers", JMLR 2001), a setting can be judged by how well it separates held-out normal
records from artificial outliers. Uniform outliers in a bounding box are separated perfectly by
any density model once d is more than a few, so here they are *crossovers*: a validation record
with about half of its columns taken from another one. Each column keeps its normal marginal;
only the dependence between columns is broken, which is what a joint density has to model.

    python benchmarks/levers.py --data-dir ../shared/data/adbench --out /tmp/levers \
        --configs standard quantile --members 3 --datasets 6_cardio 40_vowels
    python benchmarks/levers.py --out /tmp/levers --analyse
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from pipelines.evaluation import protocol
from pipelines.evaluation.benchmark import ProtocolDetector
from pipelines.model.fitting import split_rows
from pipelines.model.frames import as_frame

# Named Detector options; ``flow_options``/``train_options`` override the size-scaled defaults.
CONFIGS: dict[str, dict[str, Any]] = {
    "standard": {"scaling": "standard"},
    "standard-noatoms": {"scaling": "standard", "atom_share": None},
    "student": {"scaling": "standard", "flow_options": {"base": "student"}},
    "quantile": {"scaling": "quantile"},
    "robust": {"scaling": "robust"},
    "standard-h64": {"scaling": "standard", "flow_options": {"hidden": 64}},
    "standard-l4": {"scaling": "standard", "flow_options": {"n_layers": 4}},
    "standard-wd": {"scaling": "standard", "train_options": {"weight_decay": 1e-2}},
    "standard-p40": {"scaling": "standard", "train_options": {"patience": 40}},
    "standard-lr3e-4": {"scaling": "standard", "train_options": {"learning_rate": 3e-4}},
    "flow-matching": {"scaling": "standard", "train_options": {"objective": "flow_matching"}},
}
for _decay in (0.99, 0.999):
    CONFIGS[f"noatoms-ema{_decay:g}"] = {"scaling": "standard", "atom_share": None,
                                        "train_options": {"ema_decay": _decay}}
for _noise in (0.03, 0.1, 0.3):
    CONFIGS[f"standard-n{_noise:g}"] = {"scaling": "standard",
                                        "train_options": {"noise_std": _noise}}
for _trim in (0.01, 0.02, 0.05, 0.1):
    for _scaling in ("standard", "quantile"):
        CONFIGS[f"{_scaling}-t{_trim:g}"] = {
            "scaling": _scaling, "train_options": {"validation_trim": _trim}
        }


def one_flow(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with one flow per detector: the ensembles here are built from members."""
    return {**options, "flow_options": {**options.get("flow_options", {}), "members": 1}}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(args.data_dir).glob("*.npz"),
                   key=lambda p: protocol.dataset_sort_key(p.stem))
    for path in paths:
        name = protocol.dataset_name(path)
        if args.datasets and name not in args.datasets:
            continue
        X, y = protocol.load_npz(path)
        for seed in args.seeds:
            tr, cal, te, y_te = protocol.split(y, seed)
            scaler = StandardScaler().fit(X[tr])
            Xtr, Xcal, Xte = (scaler.transform(X[i]) for i in (tr, cal, te))
            for config in args.configs:
                for member in range(args.members):
                    file = out / f"{name}__{config}__s{seed}__m{member}.npz"
                    if file.exists():
                        continue
                    start = time.perf_counter()
                    model = ProtocolDetector(
                        args.model, seed + 100 * member, **one_flow(CONFIGS[config])
                    ).fit(Xtr)
                    fit_s = time.perf_counter() - start
                    np.savez(
                        file,
                        cal=model.decision_function(Xcal),
                        test=model.decision_function(Xte),
                        y_test=y_te,
                        val_nll=model.detector.metrics_["val_nll"],
                        **validation_scores(model, Xtr, seed + 100 * member),
                        fit_s=fit_s,
                    )
                    print(f"{name:16s} s{seed} {config:16s} m{member} "
                          f"val_nll={model.detector.metrics_['val_nll']:.3f} fit={fit_s:.1f}s "
                          f"{model.info_}", flush=True)


def crossover_outliers(records: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """One artificial outlier per record: each column, with probability 1/2 (at least one
    column per record), comes from another record picked at random.

    Arguments:
        records: normal records (at least two).
        seed: seeds the choice of partners and columns.
    """
    if len(records) < 2:
        raise ValueError("crossovers need at least two records")
    rng = np.random.default_rng(seed)
    n, d = records.shape
    partner = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the record itself
    swap = rng.random((n, d)) < 0.5
    swap[np.arange(n), rng.integers(0, d, size=n)] = True
    out = records.reset_index(drop=True).copy()
    donors = records.iloc[partner].reset_index(drop=True)
    for j, column in enumerate(out.columns):
        out.loc[swap[:, j], column] = donors.loc[swap[:, j], column]
    return out


def separation_auc(normal_scores: np.ndarray, outlier_scores: np.ndarray) -> float:
    """ROC-AUC of anomaly scores (higher = more anomalous) for normal vs artificial records.
    Scores are ranked first, so infinite scores (zero density) count as the most anomalous."""
    scores = np.nan_to_num(np.r_[normal_scores, outlier_scores], nan=np.inf)
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(outlier_scores))]
    return float(roc_auc_score(labels, rankdata(scores)))


def validation_scores(model: ProtocolDetector, Xtr: np.ndarray, seed: int) -> dict[str, Any]:
    """Scores of the fit's own validation rows (training split only), and the separation of
    those rows from crossovers of them: a label-free criterion to choose settings by (module
    docstring). The scores give the untrimmed validation NLL too (their mean)."""
    detector = model.detector
    _, val_rows, _ = split_rows(len(Xtr), (detector.validation_fraction, 0.0), seed)
    val = as_frame(Xtr[val_rows])
    scores = detector.decision_function(val)
    outliers = detector.decision_function(crossover_outliers(val, seed=seed))
    return {"val_scores": scores, "val_crossover_auc": separation_auc(scores, outliers)}


def load(out: Path) -> pd.DataFrame:
    rows = []
    for file in out.glob("*.npz"):
        name, config, seed, member = file.stem.split("__")
        with np.load(file) as z:
            rows.append({"dataset": name, "config": config, "seed": int(seed[1:]),
                         "member": int(member[1:]), "val_nll": float(z["val_nll"]),
                         "val_crossover_auc": float(z.get("val_crossover_auc", np.nan)),
                         "val_nll_full": float(np.mean(z["val_scores"])) if "val_scores" in z
                         else np.nan,
                         "fit_s": float(z["fit_s"]), "cal": z["cal"], "test": z["test"],
                         "y_test": z["y_test"]})
    return pd.DataFrame(rows)


def _metrics(members: pd.DataFrame, mixture: bool = False) -> dict[str, float]:
    """Protocol metrics of an ensemble of ``members`` (one seed): the mean of their scores
    (negative log-likelihoods) or, with ``mixture``, the score of their equal-weight mixture."""
    def combine(scores: list[np.ndarray]) -> np.ndarray:
        stacked = np.stack(scores)
        if mixture:  # -log(mean_k exp(-score_k))
            return -(logsumexp(-stacked, axis=0) - np.log(len(scores)))
        return stacked.mean(axis=0)

    return protocol.evaluate_scores(members["y_test"].iloc[0],
                                    combine(members["test"].to_list()),
                                    combine(members["cal"].to_list()))


def analyse(out: Path) -> None:
    df = load(out)
    results = []
    for (name, seed), group in df.groupby(["dataset", "seed"]):
        for config, runs in group.groupby("config"):
            runs = runs.sort_values("member")
            results.append({"dataset": name, "seed": seed, "variant": f"{config}",
                            **_metrics(runs.iloc[:1])})
            if len(runs) > 1:
                results.append({"dataset": name, "seed": seed, "variant": f"{config}-ens",
                                **_metrics(runs)})
                results.append({"dataset": name, "seed": seed, "variant": f"{config}-mix",
                                **_metrics(runs, mixture=True)})
        if group["config"].nunique() > 1:
            chosen = group.loc[group.groupby("member")["val_nll"].idxmin()]
            results.append({"dataset": name, "seed": seed, "variant": "select",
                            **_metrics(chosen.iloc[:1])})
            results.append({"dataset": name, "seed": seed, "variant": "select-ens",
                            **_metrics(chosen)})
            if group["val_nll_full"].notna().all():
                full = group.loc[group.groupby("member")["val_nll_full"].idxmin()]
                results.append({"dataset": name, "seed": seed, "variant": "select-fullnll",
                                **_metrics(full.iloc[:1])})
            if group["val_crossover_auc"].notna().all():
                crossed = group.loc[group.groupby("member")["val_crossover_auc"].idxmax()]
                results.append({"dataset": name, "seed": seed, "variant": "select-crossover",
                                **_metrics(crossed.iloc[:1])})
    res = pd.DataFrame(results)
    table = res.pivot_table(index="dataset", columns="variant", values="roc_auc", aggfunc="mean")
    table = table.loc[sorted(table.index, key=protocol.dataset_sort_key)]
    pd.set_option("display.width", 250)
    print(table.round(3).to_string())
    print("\nmean ROC-AUC over the datasets above:")
    print(table.mean().round(4).to_string())
    print("\nmean |FPR@0.05 - 0.05|:")
    print(res.assign(dev=(res["fpr_05"] - 0.05).abs()).groupby("variant")["dev"].mean()
          .round(4).to_string())
    if df["val_crossover_auc"].notna().any():
        print("\nvalidation crossover AUC (training split only), mean over seeds and members:")
        print(df.pivot_table(index="dataset", columns="config", values="val_crossover_auc")
              .round(3).to_string())
    if df["val_nll_full"].notna().any():
        print("\nuntrimmed validation NLL, mean over seeds and members:")
        print(df.pivot_table(index="dataset", columns="config", values="val_nll_full")
              .round(3).to_string())
    chosen_counts = df.loc[df.groupby(["dataset", "seed", "member"])["val_nll"].idxmin()]
    print("\nconfiguration chosen by validation NLL (count over seeds x members):")
    print(chosen_counts.groupby(["dataset", "config"]).size().unstack(fill_value=0).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/adbench")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="realnvp")
    parser.add_argument("--configs", nargs="+", default=["standard", "quantile"])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(protocol.SEEDS))
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--analyse", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.analyse:
        analyse(Path(args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
