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

**The rule of issue 28, written and committed before any of its levers ran.** The rule above
measured something other than the target (a mean ROC-AUC gain with t > 2, where the aim is the
rank among the detectors a user would otherwise pick); it rejected the flow + KDE mixture, which
had the best development rank of all. It is replaced by one rule, applied once per situation:

* **clean training data** (the default): the one-class protocol, the ten baselines of
  ``results/dev/baselines/baselines-one-class.csv``, against the default of ``results/dev/default``;
* **training data known to hold anomalies** (the ``contamination`` mode): the unsupervised
  protocol, the baselines of ``baselines-unsupervised.csv``, against the default's unsupervised
  runs (``results/dev/unsupervised/default``).

Per development dataset (all 14), a detector's ROC-AUC is its mean over seeds 0, 1, 2 (the
protocol's; every run is deterministic given its seed, so nothing is rerun or reseeded). A
candidate's **rank** on a dataset is its place among itself and the ten baselines by that mean
(1 = best, ties share their mean place, a failed baseline run ranks last); its **mean rank** is
the mean over the 14 datasets. Then:

1. *No significant loss*: a candidate is eligible only if the paired t statistic of its
   per-dataset ROC-AUC minus the current default's (mean difference over its standard error, 13
   degrees of freedom) is at least -2.
2. *The target*: among eligible candidates, the lowest mean rank wins; equal mean ranks (to two
   decimals) go to the higher mean ROC-AUC, then to the cheaper fit. It replaces the current
   default only if its mean rank is below the default's **and** it ranks better than the
   default in at least two of the three seeds taken alone (each seed's runs ranked among the
   baselines' runs of the same seed), a guard against one lucky split.
3. *Cost*: the winner must keep the speed rows: on ``6_cardio``, in-process scoring rows/s at
   least 1.5x ``IsolationForest(100)``'s and the full fit at most 30x its fit, one torch thread,
   measured interleaved with the current default (``levers28.py cost``). A winner that fails
   only this gate is reported on the Pareto plot with both numbers, and the next candidate by
   rule 2 that passes it is the decision.

The candidates are fixed here, with their parameters, before any ran (``CANDIDATES_28``):
VSDE (the variance penalty ``lambda * Var(log p)`` over each training batch, lambda in
{1, 3.3}, with K in {2, 4} flows whose random coupling masks differ, combined as the default
combines its two: log-mean-exp of the densities), K = 4 without the penalty, spectral norm on
every coupling layer, a Student-t base, a peak learning rate of 1e-2 instead of 2e-2, and the
flow + encoded-space KDE mixture (w = 0.5) of issue 19 (its existing runs, judged again); under
the unsupervised protocol also: the epoch chosen by a label-free separation of the per-row
training NLL (ODIM: the Wasserstein distance between the two components of a two-Gaussian fit
to the standardised NLLs, the largest wins), the flow's log-density plus a Ledoit-Wolf
full-covariance Gaussian's, each standardised by its median and IQR on the fitted rows (the
weight comes from the data's own score spreads, no labels), a refit without the rows that both
out-of-fold flows of a three-fold split score in their top 10% (SRR), and trimming at 0.1
(existing runs). Levers are pruned as they go: one worse than the default with t < -2 under a
protocol is not combined with others there. The evaluation datasets then only *report* the
decision (``flowad benchmark``, both protocols); choosing several times on one development
suite favours a lucky candidate, which the evaluation suite shows or not.

Addendum, written after the levers above ran and before this one did: ``flow-kde-0.5-m256``,
the flow + KDE mixture with its centres capped at ``M = min(256, n)`` (``h`` still by validation
NLL), because with ``M = 4096`` the mixture scored ``32_shuttle`` 25x slower than the default.
It is defined after flow-kde-0.5's development results were seen, so it is reported as a
post-hoc candidate: the same rule is applied to it, and a decision for it would be one made
with more looks at the development suite than the rule above allowed for.
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


# ----------------------------------------------------------------------------- issue 28
# Scoring at least 1.5x IsolationForest(100)'s rows/s and fitting within 30x its fit, 6_cardio.
MIN_SCORING_RATIO, MAX_FIT_RATIO = 1.5, 30.0
# The default's fit ratio on a quiet machine (results/fast_default.txt): a loaded machine
# inflates fit ratios (the default measured 35x beside other jobs), so a candidate's fit is
# judged against the default's in the same run, scaled to this.
QUIET_DEFAULT_FIT_RATIO = 22.4
T_FLOOR = -2.0
ISSUE19_FLOW_KDE = "flow-kde-0.5 (issue 19 runs)"


def runs_28(candidate: str, out: Path, kind: str) -> pd.DataFrame:
    """``dataset, seed, auc, ap`` of a candidate's runs under protocol ``kind`` (AP is NaN for
    the issue-19 flow-KDE runs, which recorded ROC-AUC only)."""
    if candidate == ISSUE19_FLOW_KDE:
        return per_run_auc("flow-kde-0.5", out).assign(ap=np.nan)
    folder = out / candidate if kind == "one-class" else out / kind / candidate
    (path,) = folder.glob("flowad-realnvp*.csv")
    frame = pd.DataFrame(protocol.read_rows(path))
    return frame.assign(auc=frame.roc_auc.astype(float), ap=frame.ap.astype(float),
                        seed=frame.seed.astype(int))[["dataset", "seed", "auc", "ap"]]


def baseline_runs(out: Path, kind: str, metric: str = "roc_auc") -> pd.DataFrame:
    """``(dataset, seed)`` x baseline table of one metric of the ten baselines' runs."""
    rows = pd.DataFrame(protocol.read_rows(out / "baselines" / f"baselines-{kind}.csv"))
    rows[metric] = pd.to_numeric(rows[metric], errors="coerce")
    return rows.groupby(["dataset", "seed", "detector"])[metric].mean().unstack()[
        list(protocol.BASELINE_DETECTORS)]


def mean_ranks(scores: pd.Series, baselines: pd.DataFrame) -> pd.Series:
    """Mean rank (1 = best, ties averaged) of ``scores`` (``candidate``) and of each baseline
    among the eleven, on the index of ``scores``; a failed baseline run (NaN) ranks last."""
    table = baselines.loc[scores.index].fillna(-np.inf).assign(candidate=scores)
    return table.rank(axis=1, ascending=False).mean()


def mean_rank(scores: pd.Series, baselines: pd.DataFrame) -> float:
    """:func:`mean_ranks` of the candidate alone."""
    return float(mean_ranks(scores, baselines)["candidate"])


def evidence_28(candidate: str, default: pd.DataFrame, out: Path, kind: str
                ) -> dict[str, Any]:
    """The numbers rule 1 and 2 read, and AP beside them, for one candidate."""
    runs = runs_28(candidate, out, kind)
    auc = runs.groupby("dataset").auc.mean()
    base = baseline_runs(out, kind)
    base_means = base.groupby(level="dataset").mean()
    diff = auc - default.groupby("dataset").auc.mean().loc[auc.index]
    t = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))) if diff.std() > 0 else 0.0
    seeds = {}
    for seed, per_seed in runs.groupby("seed"):
        index = pd.MultiIndex.from_arrays([per_seed.dataset, per_seed.seed])
        seeds[seed] = mean_rank(pd.Series(per_seed.auc.to_numpy(), index=index), base)
    ap = runs.groupby("dataset").ap.mean()
    ap_base = baseline_runs(out, kind, "ap").groupby(level="dataset").mean()
    ranks = mean_ranks(auc, base_means)
    best_baseline = ranks.drop("candidate").idxmin()
    return {"candidate": candidate, "datasets": len(auc), "runs": len(runs), "auc": auc.mean(),
            "diff": diff.mean(), "t": t, "better": int((diff > 0).sum()),
            "rank": ranks["candidate"], "seed_ranks": seeds,
            "best_baseline": f"{best_baseline} {ranks[best_baseline]:.2f}",
            "ap": ap.mean(), "ap_rank": mean_rank(ap, ap_base) if ap.notna().all() else np.nan,
            "per_dataset": auc}


def decide_28(out: Path, kind: str, candidates: list[str], cost: dict[str, Any] | None
              ) -> str:
    """Rules 1-3 of the module docstring for protocol ``kind``: the table and the decision."""
    default = runs_28("default", out, kind)
    rows = [evidence_28(c, default, out, kind) for c in ["default", *candidates]]
    reference = rows[0]
    lines = [f"{kind} protocol, development suite (14 datasets x seeds 0-2):", "",
             "| candidate | mean ROC-AUC | vs default | paired t | datasets better | "
             "rank of 11 | best baseline's rank of 11 | rank per seed (0/1/2) | "
             "seeds better than default | mean AP | AP rank of 11 | scoring / IForest | "
             "fit / IForest |", "|---" * 13 + "|"]
    for r in rows:
        wins = sum(r["seed_ranks"][s] < reference["seed_ranks"][s] for s in r["seed_ranks"])
        r["seed_wins"] = wins
        c = (cost or {}).get(r["candidate"].removesuffix(" (issue 19 runs)"), {})
        if c:
            fit_scale = QUIET_DEFAULT_FIT_RATIO / cost["default"]["fit_ratio"]
        # without a cost file rules 1-2 alone decide; with one, an unmeasured candidate fails
        r["cost_ok"] = cost is None or (bool(c) and (
            c["scoring_ratio"] >= MIN_SCORING_RATIO
            and c["fit_ratio"] * fit_scale <= MAX_FIT_RATIO))
        vs = ("| | |" if r is reference
              else f"{r['diff']:+.4f} | {r['t']:.2f} | {r['better']} of {r['datasets']} |")
        lines.append(
            f"| {r['candidate']} | {r['auc']:.4f} | {vs} {r['rank']:.2f} | "
            f"{r['best_baseline']} | "
            + "/".join(f"{v:.2f}" for v in r["seed_ranks"].values())
            + f" | {'' if r is reference else wins} | {r['ap']:.4f} | {r['ap_rank']:.2f} | "
            + (f"{c['scoring_ratio']:.2f}x | {c['fit_ratio']:.1f}x |" if c else "| |"))
    # every dataset x seed: a run still in progress is no candidate yet
    eligible = [r for r in rows[1:] if r["t"] >= T_FLOOR and r["runs"] == 14 * 3]
    order = sorted(eligible, key=lambda r: (round(r["rank"], 2), -r["auc"]))
    decision, note = "default", "no eligible candidate"
    if order:
        winner = order[0]  # rule 2: the lowest mean rank; it must beat the default twice over
        beats = [r for r in order if r["rank"] < reference["rank"] and r["seed_wins"] >= 2]
        note = (f"lowest mean rank: {winner['candidate']} ({winner['rank']:.2f}; "
                f"{winner['seed_wins']} of 3 seeds better than the default)")
        if winner is (beats or [None])[0]:
            # rule 3: a winner too slow goes to the Pareto plot; the next one by rule 2 that
            # keeps the speed rows is the decision
            passing = [r for r in beats if r["cost_ok"]]
            if not winner["cost_ok"]:
                note += "; it fails the speed rows (Pareto plot)"
            decision = passing[0]["candidate"] if passing else "default"
        else:
            note += "; it does not beat the default on the mean and in 2 of 3 seeds"
    lines += ["", f"eligible (t >= {T_FLOOR:g}): {', '.join(r['candidate'] for r in eligible)}",
              note, f"decision ({kind}): {decision}", "",
              pd.DataFrame({r["candidate"]: r["per_dataset"] for r in rows}).round(4)
              .to_string(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "run":
        run(rest[0], Path(rest[1]), rest[rest.index("--protocol") + 1]
            if "--protocol" in rest else "one-class")
    elif command == "decide28":
        # decide28 OUT_DIR KIND CANDIDATE... [--cost COST.json]
        costs = (json.loads(Path(rest[rest.index("--cost") + 1]).read_text())
                 if "--cost" in rest else None)
        names = [c for c in rest[2:] if c != "--cost" and not c.endswith(".json")]
        print(decide_28(Path(rest[0]), rest[1], names, costs))
    else:
        print(decide(Path(rest[0])))
