"""Where flowad wins and loses against KDE: per-dataset ROC-AUC differences, both protocols.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/versus_kde.py [--output PNG]``.

Reads the committed benchmark CSVs (``results/flowad-realnvp.csv`` for the one-class protocol,
``results/unsupervised/flowad-realnvp[-trim0.1]-unsupervised.csv`` for the unsupervised one)
and the bundled baseline rows of KDE (Scott's bandwidth), and plots, per dataset, flowad's mean
ROC-AUC over seeds minus KDE's, with the seed-to-seed spread of the difference as error bars.
Prints the same numbers as a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipelines.evaluation import protocol

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = {  # panel title -> (protocol kind, flowad CSVs by label)
    "one-class protocol (clean training data)": (
        "one-class", {"flowad": RESULTS / "flowad-realnvp.csv"}),
    "unsupervised protocol (contaminated training data)": (
        "unsupervised", {
            "flowad": RESULTS / "unsupervised/flowad-realnvp-unsupervised.csv",
            "flowad --trim-share 0.1":
                RESULTS / "unsupervised/flowad-realnvp-trim0.1-unsupervised.csv",
        }),
}


def differences(flowad_csv: Path, kind: str) -> pd.DataFrame:
    """Per dataset: mean and standard deviation over seeds of flowad's ROC-AUC minus KDE's.

    Arguments:
        flowad_csv: a benchmark CSV of flowad.
        kind: the protocol its runs followed (``"one-class"`` or ``"unsupervised"``).
    """
    flowad = pd.DataFrame(protocol.read_rows(flowad_csv))
    kde = pd.DataFrame(protocol.load_bundled_baselines(kind))
    kde = kde[kde["detector"] == "KDE"]
    paired = flowad.merge(kde, on=["dataset", "seed"], suffixes=("", "_kde"))
    paired["difference"] = paired["roc_auc"].astype(float) - paired["roc_auc_kde"].astype(float)
    table = paired.groupby("dataset")["difference"].agg(["mean", "std"])
    return table.loc[sorted(table.index, key=protocol.dataset_sort_key)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS / "versus_kde.png")
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(RUNS), figsize=(13, 5.5), sharey=True)
    for ax, (title, (kind, csvs)) in zip(axes, RUNS.items(), strict=True):
        width = 0.8 / len(csvs)
        for k, (label, csv) in enumerate(csvs.items()):
            table = differences(csv, kind)
            print(f"\n{title}, {label} minus KDE (ROC-AUC, mean over seeds):")
            print(table.round(3).to_string())
            wins = int((table["mean"] > 0).sum())
            print(f"wins {wins} of {len(table)}, mean difference {table['mean'].mean():+.4f}")
            y = np.arange(len(table)) + (k - (len(csvs) - 1) / 2) * width
            ax.barh(y, table["mean"], height=width, xerr=table["std"], capsize=2,
                    label=f"{label} (wins {wins}/{len(table)})")
            ax.set_yticks(np.arange(len(table)), table.index)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ROC-AUC of flowad minus KDE's (right: flowad better)")
        ax.invert_yaxis()
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Where flowad wins and loses against KDE (Scott's bandwidth), 3 seeds each")
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"\nplot: {args.output}")


if __name__ == "__main__":
    main()
