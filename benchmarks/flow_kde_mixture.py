"""A lever for issue 19: mix the trained flow with a Gaussian KDE in the encoded data space.

``p(x) = w p_flow(x) + (1 - w) KDE_h(x)``, the KDE over ``M`` of the detector's own training
rows (dequantised as in training), is an exact density; ``w = 0`` is a KDE alone, whose
bandwidth chosen by held-out likelihood is how the KDE baseline reaches its ranking. Every
``(M, h, w)`` is scored on the detector's validation rows and on the protocol's test and
calibration splits; selection per dataset and seed is by validation NLL only, and test ROC-AUC
is read afterwards (helpers shared with ``latent_base.py``).

Run (one-class protocol, one thread, ~5 min per half of the datasets)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/flow_kde_mixture.py run OUT.json \
        [--datasets a,b] [--data DIR]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/flow_kde_mixture.py summarize OUT.json [OUT2.json]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/flow_kde_mixture.py fixed-weights OUT.json

Results: ``results/levers/flow_kde/``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from latent_base import DATA, fit_and_encode, kde, run, scores_of, summarize

from pipelines.evaluation import protocol

GRID_M = (256, 1024, 4096)
GRID_H = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # encoded units: standardised columns
GRID_W = (0.0, 0.5, 0.8, 0.9, 0.97, 0.99)
FAMILIES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "trained flow only": lambda v: False,
    "every variant": lambda v: True,
    "KDE alone (w = 0)": lambda v: v["w"] == 0,
    "mixtures (w >= 0.5)": lambda v: v["w"] >= 0.5,
    "M = 256": lambda v: v["M"] == 256,
}


def chunked_kde(x: torch.Tensor, centres: torch.Tensor, h: float) -> torch.Tensor:
    """:func:`latent_base.kde` in chunks of rows (a 12k x 4k distance matrix otherwise)."""
    return torch.cat([kde(chunk, centres, h) for chunk in torch.split(x, 2048)])


def run_one(X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Every ``(M, h, w)``'s validation NLL, test ROC-AUC and FPR at 0.05 for one run."""
    detector, encoded, y_test = fit_and_encode(X, y, seed)
    splits = ("val", "test", "cal")
    rows = {split: torch.as_tensor(encoded[split][0], dtype=torch.float64) for split in splits}
    with torch.inference_mode():
        log_flow = {split: detector.flow_.log_prob(rows[split].float()).double()
                    for split in splits}

    def evaluate(log_p: dict[str, torch.Tensor]) -> dict[str, float]:
        return scores_of({s: log_p[s].numpy() + encoded[s][1] for s in splits}, y_test)

    record: dict[str, Any] = {"seed": seed, "base": evaluate(log_flow), "variants": []}
    train = torch.as_tensor(encoded["train"][0], dtype=torch.float64)
    for m in GRID_M:
        if m > len(train) and m != GRID_M[0]:
            continue
        centres = train[np.random.default_rng(seed + m).permutation(len(train))[:m]]
        for h in GRID_H:
            log_kde = {split: chunked_kde(rows[split], centres, h) for split in splits}
            for w in GRID_W:
                log_p = log_kde if w == 0 else {
                    s: torch.logaddexp(log_flow[s] + math.log(w), log_kde[s] + math.log(1 - w))
                    for s in splits}
                record["variants"].append({"M": m, "h": h, "w": w, **evaluate(log_p)})
    return record


def fixed_weights(paths: list[Path]) -> str:
    """Each weight ``w`` on its own (``M`` and ``h`` chosen by mean validation NLL, the trained
    flow not a candidate), and the KDE alone (``w = 0``) beside the flow per dataset: the
    likelihood and the ranking disagree."""
    records = [r for p in paths for r in json.loads(p.read_text())]
    baselines = pd.DataFrame(protocol.load_bundled_baselines("one-class"))
    baseline_auc = baselines.groupby(["dataset", "detector"]).roc_auc.mean().unstack()[
        list(protocol.BASELINE_DETECTORS)]
    lines = ["| w | validation NLL vs trained flow | test ROC-AUC | rank of 11 |",
             "|---|---|---|---|"]
    for w in GRID_W:
        rows = []
        for r in records:
            chosen = min((v for v in r["variants"] if v["w"] == w), key=lambda v: v["val"])
            rows.append({"dataset": r["dataset"], "flow val NLL": r["base"]["val"],
                         "val NLL": chosen["val"], "flow ROC-AUC": r["base"]["auc"],
                         "ROC-AUC": chosen["auc"], "h": chosen["h"], "M": chosen["M"]})
        table = pd.DataFrame(rows).groupby("dataset").mean()
        ranked = baseline_auc.loc[table.index].copy()
        ranked["mixture"] = table["ROC-AUC"]  # beside the baselines, their KDE included
        rank = ranked.rank(axis=1, ascending=False).mean()["mixture"]
        gap = (table["val NLL"] - table["flow val NLL"]).mean()
        lines.append(f"| {w} | {gap:+.2f} | {table['ROC-AUC'].mean():.4f} | {rank:.2f} |")
        if w == 0:
            kde_alone = table
    return "\n".join([*lines, "", "the KDE alone (w = 0) per dataset:",
                      kde_alone.round(3).to_string()]) + "\n"


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "run":
        chosen = rest[rest.index("--datasets") + 1].split(",") if "--datasets" in rest else None
        data = Path(rest[rest.index("--data") + 1]) if "--data" in rest else DATA
        run(Path(rest[0]), chosen, run_one, data)
    elif command == "fixed-weights":
        print(fixed_weights([Path(p) for p in rest]))
    else:
        print(summarize([Path(p) for p in rest], FAMILIES))
