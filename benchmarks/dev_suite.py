"""Choosing the default on development datasets (issue 19), not on the evaluation datasets.

Every lever so far ranked anomalies better on the evaluation datasets' test labels, or fitted
held-out inliers better, never both; choosing on test labels is choosing on what is scored. The
standard way out is a development suite: datasets of the same kind that the evaluation never
sees (``benchmarks/data/dev/``, fourteen other ADBench datasets). Each candidate default runs
the one-class protocol there, and a fixed rule, written before any candidate was run, decides:

    A candidate replaces the current default only if its mean ROC-AUC over the development
    datasets (each dataset's mean over seeds 0-2) beats the default's with a paired t statistic
    above 2 over the datasets; among such candidates the highest mean wins. Otherwise the
    default stays.

Trimmed-likelihood training (``trim_share`` 0.1) is judged by a second rule, also written first:
it becomes the default only if, on the development datasets, it beats the default with a
paired t above 2 under the unsupervised protocol (training rows hold unlabelled anomalies) and
is not worse with a paired t below -2 under the one-class protocol.

The candidates are the levers of ``README.md`` that keep the default's cost: both flows trained
on smoothed rows (sigma 0.3), the second flow smoothed (sigma 0.1), three flows of width 64,
and the flow mixed equally with a KDE in the encoded space (``flow_kde_mixture.py``, M and h
chosen per fit by validation NLL). The KDE alone is reported beside them, not a candidate.

Run (one thread each, ~5 min a candidate; results in ``results/dev/``)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/dev_suite.py run CANDIDATE OUT_DIR \
        [--protocol unsupervised]
    PYTHONPATH=$PWD .venv/bin/python -m pipelines.cli --threads 1 benchmark --baselines \
        --data-dir benchmarks/data/dev --output OUT_DIR/baselines [--protocol unsupervised]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/dev_suite.py decide OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.evaluation import protocol
from pipelines.evaluation.benchmark import run_benchmark

DEV = Path(__file__).resolve().parent / "data" / "dev"
CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "smoothed-0.3": {"train_options": {"noise_std": 0.3}},
    "second-member-sigma-0.1": {},  # sigma_mixture.with_second_member_sigma(0.1)
    "mix3-h64": {"flow_options": {"members": 3, "n_layers": 6, "hidden": 64, "depth": 1,
                                  "activation": "relu"},
                 "train_options": {"max_epochs": 30, "learning_rate": 0.02, "warmup_steps": 30,
                                   "patience": None}},
    "flow-kde-0.5": {},  # flow_kde_mixture.py, w = 0.5
}
TRIMMED = {"trim_share": 0.1}
FLOW_KDE_WEIGHT = 0.5
T_NEEDED = 2.0


def run(candidate: str, out: Path, kind: str = "one-class") -> None:
    torch.set_num_threads(1)
    if candidate == "trim-0.1" or kind == "unsupervised":
        folder = out if kind == "one-class" else out / kind
        options = TRIMMED if candidate == "trim-0.1" else CANDIDATES[candidate]
        run_benchmark(DEV, folder / candidate, kind=kind, **options)
        return
    if candidate == "flow-kde-0.5":
        import flow_kde_mixture
        import latent_base

        latent_base.run(out / "flow-kde.json", None, flow_kde_mixture.run_one, DEV)
        return
    if candidate == "second-member-sigma-0.1":
        from sigma_mixture import with_second_member_sigma

        with_second_member_sigma(0.1)
    run_benchmark(DEV, out / candidate, **CANDIDATES[candidate])


def per_run_auc(candidate: str, out: Path, kind: str = "one-class") -> pd.DataFrame:
    """``dataset, seed, auc`` of a candidate's runs."""
    if candidate in ("flow-kde-0.5", "KDE alone"):
        rows = []
        for r in json.loads((out / "flow-kde.json").read_text()):
            w = FLOW_KDE_WEIGHT if candidate == "flow-kde-0.5" else 0.0
            chosen = min((v for v in r["variants"] if v["w"] == w), key=lambda v: v["val"])
            rows.append({"dataset": r["dataset"], "seed": r["seed"], "auc": chosen["auc"]})
        return pd.DataFrame(rows)
    folder = out / candidate if kind == "one-class" else out / kind / candidate
    (path,) = folder.glob("flowad-realnvp*.csv")
    frame = pd.DataFrame(protocol.read_rows(path))
    return frame.assign(auc=frame.roc_auc.astype(float), seed=frame.seed.astype(int))[
        ["dataset", "seed", "auc"]]


def paired(means: pd.DataFrame, candidate: str) -> tuple[float, float, int]:
    """Mean difference from the default over datasets, its paired t statistic, and on how many
    datasets the candidate is better."""
    diff = means[candidate] - means["default"]
    return diff.mean(), diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))), int((diff > 0).sum())


def rank_of_11(auc: pd.Series, baselines: pd.DataFrame) -> float:
    """Mean rank (1 = best) of ``auc`` (per dataset) among itself and the ten baselines."""
    ranked = baselines.loc[auc.index].assign(candidate=auc)
    return float(ranked.rank(axis=1, ascending=False).mean()["candidate"])


def table(means: pd.DataFrame, baselines: pd.DataFrame) -> list[str]:
    lines = ["| candidate | mean ROC-AUC (dev) | vs default | paired t | datasets better | "
             "rank of 11 |", "|---|---|---|---|---|---|"]
    for candidate in means.columns:
        change = " | | "
        if candidate != "default":
            gain, t, better = paired(means, candidate)
            change = f"{gain:+.4f} | {t:.2f} | {better} of {len(means)}"
        lines.append(f"| {candidate} | {means[candidate].mean():.4f} | {change} | "
                     f"{rank_of_11(means[candidate], baselines):.2f} |")
    return lines


def baseline_means(out: Path, kind: str) -> pd.DataFrame:
    """Per dataset, the ten baselines' mean ROC-AUC (``flowad benchmark --baselines``)."""
    rows = pd.DataFrame(protocol.read_rows(out / "baselines" / f"baselines-{kind}.csv"))
    rows["roc_auc"] = pd.to_numeric(rows.roc_auc, errors="coerce")
    return rows.groupby(["dataset", "detector"]).roc_auc.mean().unstack()[
        list(protocol.BASELINE_DETECTORS)]


def decide(out: Path) -> str:
    """The rules of the module docstring, applied to the finished runs in ``out``."""
    means = pd.DataFrame({c: per_run_auc(c, out).groupby("dataset").auc.mean()
                          for c in [*CANDIDATES, "KDE alone"]})
    eligible = {c: means[c].mean() for c in CANDIDATES
                if c != "default" and paired(means, c)[1] > T_NEEDED}
    winner = max(eligible, key=eligible.get) if eligible else "default"
    lines = ["one-class protocol:", "", *table(means, baseline_means(out, "one-class")), "",
             means.round(4).to_string(), "",
             f"decision (t > {T_NEEDED} needed): {winner}", ""]
    trimmed = {kind: pd.DataFrame({c: per_run_auc(c, out, kind).groupby("dataset").auc.mean()
                                   for c in ("default", "trim-0.1")})
               for kind in ("unsupervised", "one-class")}
    for kind, kind_means in trimmed.items():
        lines += [f"trimming, {kind} protocol:", "",
                  *table(kind_means, baseline_means(out, kind)), ""]
    adopt = (paired(trimmed["unsupervised"], "trim-0.1")[1] > T_NEEDED
             and paired(trimmed["one-class"], "trim-0.1")[1] > -T_NEEDED)
    lines += [trimmed["unsupervised"].round(4).to_string(), "",
              f"trimming by default: {'yes' if adopt else 'no'}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "run":
        run(rest[0], Path(rest[1]), rest[rest.index("--protocol") + 1]
            if "--protocol" in rest else "one-class")
    else:
        print(decide(Path(rest[0])))
