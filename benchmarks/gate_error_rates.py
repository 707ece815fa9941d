"""Error rates of the retrain promotion gate (``pipelines/registry/gate.py``) on synthetic tables.

Per seed, a production detector is trained once on rows of a fixed world (three correlated
Gaussian blobs seen through continuous columns, a count and a categorical), then ``retrain``
runs twice against it on fresh 2,000-row draws: once on same-distribution data (the gate should
promote) and once on corrupted data (it should refuse), the corruption cycling through
``permuted_rescaled`` (the continuous columns' values moved to one another and rescaled to the
destination's mean and spread), ``units_x1000`` (one continuous column multiplied by 1000) and
``stuck_constant`` (one column stuck at one value). The table gives, per case kind, the runs, the
rejections and which rules rejected; ``old NLL rule`` counts the runs that the previous fit rule
(mean difference > 0.05 + 2 standard errors) would have refused.

    BENTOML_DO_NOT_TRACK=true OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gate_error_rates.py

writes ``benchmarks/results/gate_error_rates.txt`` (24 seeds: about 10 minutes on one core).
"""

from __future__ import annotations

import os
import tempfile

# Before bentoml is imported: a throw-away model store, and no usage tracking.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="flowad-gate-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.model.detector import Detector
from pipelines.registry.gate import Decision
from pipelines.registry.promotion import promote
from pipelines.registry.retrain import retrain
from pipelines.registry.store import save_detector

CONTINUOUS = ("temperature", "pressure", "amount")
SEGMENTS = np.array(["retail", "online", "wholesale"])
BLOB_WEIGHTS = (0.5, 0.3, 0.2)


def _world(seed: int = 20240) -> tuple[np.ndarray, list[np.ndarray]]:
    """Means and covariances of the three 4-d blobs: fixed, so every draw shares them."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(3, 4))
    factors = [rng.normal(size=(4, 4)) for _ in range(3)]
    return means, [a @ a.T / 4 + 0.1 * np.eye(4) for a in factors]


MEANS, COVARIANCES = _world()


def blobs_frame(n: int, seed: int) -> pd.DataFrame:
    """``n`` normal records: three continuous columns, a Poisson count and a categorical
    segment (the blob, relabelled at random 10% of the time), all driven by one latent blob.

    Arguments:
        n: rows.
        seed: seeds the draw (the world itself is fixed).
    """
    rng = np.random.default_rng(seed)
    blob = rng.choice(3, size=n, p=BLOB_WEIGHTS)
    z = np.empty((n, 4))
    for b in range(3):
        rows = blob == b
        z[rows] = rng.multivariate_normal(MEANS[b], COVARIANCES[b], size=int(rows.sum()))
    segment = np.where(rng.random(n) < 0.1, rng.choice(3, size=n), blob)
    return pd.DataFrame({
        "id": np.arange(n),
        "temperature": 20 + 5 * z[:, 0],
        "pressure": 1000 + 30 * z[:, 1],
        "amount": np.exp(1 + 0.5 * z[:, 2]),
        "visits": rng.poisson(np.exp(1 + 0.4 * z[:, 3])),
        "segment": SEGMENTS[segment],
    })


def permuted_rescaled(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The continuous columns' values moved to one another (a cyclic shift, so every column
    moves), each standardised and rescaled to its destination's mean and spread: the
    marginal moments look right, the joint structure is broken."""
    frame = frame.copy()
    source = list(CONTINUOUS)
    shift = int(rng.integers(1, len(source)))
    values = {c: frame[c].to_numpy() for c in source}
    for destination, origin in zip(source, source[shift:] + source[:shift], strict=True):
        standard = (values[origin] - values[origin].mean()) / values[origin].std()
        frame[destination] = values[destination].mean() + standard * values[destination].std()
    return frame


def units_x1000(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One continuous column in other units (x1000, e.g. kg reported as g)."""
    column = CONTINUOUS[int(rng.integers(len(CONTINUOUS)))]
    return frame.assign(**{column: frame[column] * 1000})


def stuck_constant(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One feed stuck: a column repeats its first value."""
    column = [*CONTINUOUS, "visits", "segment"][int(rng.integers(5))]
    return frame.assign(**{column: frame[column].iloc[0]})


CORRUPTIONS: dict[str, Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]] = {
    "permuted_rescaled": permuted_rescaled,
    "units_x1000": units_x1000,
    "stuck_constant": stuck_constant,
}


def failed_rules(decision: Decision) -> list[str]:
    """Names of the gate's checks that failed."""
    return [name for name, check in decision.checks.items()
            if isinstance(check, dict) and check.get("passed") is False]


def old_nll_rule_rejects(decision: Decision, tolerance: float = 0.05) -> bool:
    """The fit rule this gate replaced: mean difference > tolerance + 2 standard errors
    (False where the check had too few rows to compute it)."""
    nll = decision.checks["nll"]
    return nll["n"] >= 3 and nll["mean"] > tolerance + 2 * nll["std"] / math.sqrt(nll["n"])


def run_seed(seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Trains production for ``seed`` and retrains against it on clean and corrupted data.

    Arguments:
        seed: seeds production's data and fit, the new draws, the corruption and the split.
        args: the command line (row counts, epochs).
    """
    name = f"gate-{seed}"
    production = Detector(exclude=["id"], flow_options={"members": 1},
                          train_options={"max_epochs": args.max_epochs}, random_state=seed)
    tag = save_detector(production.fit(blobs_frame(args.production_rows, 1000 + seed)), name)
    promote(tag, reason="benchmark setup")
    kind = list(CORRUPTIONS)[seed % len(CORRUPTIONS)]
    rng = np.random.default_rng(3000 + seed)
    cases = {
        "same_distribution": blobs_frame(args.new_rows, 2000 + seed),
        kind: CORRUPTIONS[kind](blobs_frame(args.new_rows, 4000 + seed), rng),
    }
    rows = []
    for case, data in cases.items():
        decision = retrain(data, name, baseline=tag, seed=seed)
        nll = decision.checks["nll"]
        rows.append({
            "seed": seed, "case": case, "rejected": not decision.promoted,
            "rules": failed_rules(decision), "old_nll_rule": old_nll_rule_rejects(decision),
            "statistic": nll["statistic"], "lower_bound": nll["lower_bound"],
            "margin": nll["margin"], "n": nll["n"],
        })
    return rows


def summary_table(runs: pd.DataFrame) -> str:
    """Per case kind: runs, rejections, rate, the rules that rejected, the old rule's count."""
    lines = [f"{'case':<20}{'runs':>6}{'rejected':>10}{'rate':>8}  {'old NLL rule':>12}  "
             "rejected by (rule: runs)"]
    order = ["same_distribution", *CORRUPTIONS]
    for case in order:
        group = runs[runs.case == case]
        if group.empty:
            continue
        counts = Counter(rule for rules in group.rules for rule in rules)
        by_rule = ", ".join(f"{rule}: {n}" for rule, n in counts.most_common()) or "-"
        lines.append(f"{case:<20}{len(group):>6}{int(group.rejected.sum()):>10}"
                     f"{group.rejected.mean():>8.1%}  {int(group.old_nll_rule.sum()):>12}  "
                     f"{by_rule}")
    corrupted = runs[runs.case != "same_distribution"]
    lines.append(f"{'all corrupted':<20}{len(corrupted):>6}{int(corrupted.rejected.sum()):>10}"
                 f"{corrupted.rejected.mean():>8.1%}")
    return "\n".join(lines)


def fit_rule_detail(runs: pd.DataFrame) -> str:
    """The fit rule's numbers on the same-distribution runs, in nats per record."""
    clean = runs[runs.case == "same_distribution"]
    return (
        "fit rule on same-distribution runs (nats/record): trimmed-mean difference "
        f"median {clean.statistic.median():.3f}, max {clean.statistic.max():.3f}; "
        f"lower bound max {clean.lower_bound.max():.3f}; margin {clean.margin.iloc[0]:.3f}; "
        f"held-out rows {int(clean.n.iloc[0])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=24, help="production models (runs per case)")
    parser.add_argument("--production-rows", type=int, default=4000)
    parser.add_argument("--new-rows", type=int, default=2000)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "gate_error_rates.txt")
    args = parser.parse_args()
    torch.set_num_threads(1)  # other processes share these cores; see tests/conftest.py

    start, rows = time.perf_counter(), []
    for seed in range(args.seeds):
        rows += run_seed(seed, args)
        done = rows[-2:]
        print(f"seed {seed}: " + "; ".join(
            f"{r['case']} {'REJECTED ' + ','.join(r['rules']) if r['rejected'] else 'promoted'}"
            f" (fit {r['statistic']:.3f}, bound {r['lower_bound']:.3f})" for r in done),
            flush=True)
    runs = pd.DataFrame(rows)
    text = "\n".join([
        f"gate error rates: {args.seeds} seeds, production on {args.production_rows} rows, "
        f"retrain on {args.new_rows} new rows, RealNVP 1 flow, max_epochs {args.max_epochs}, "
        f"default GateRules ({time.perf_counter() - start:.0f} s)",
        "",
        summary_table(runs),
        "",
        fit_rule_detail(runs),
    ])
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
