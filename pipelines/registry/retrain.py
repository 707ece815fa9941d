"""Retraining: train a candidate on fresh data with production's configuration, compare it
with production (:mod:`pipelines.registry.gate`), promote it or not.

The candidate is saved either way; the pointer moves only when every rule passes and
production is still the model the candidate was compared with (a rollback or another retrain
meanwhile is not overwritten).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

from pipelines.errors import ProductionChanged, SchemaError
from pipelines.io.labels import parse_labels
from pipelines.model.detector import Detector
from pipelines.model.fitting import split_rows
from pipelines.model.training import Parallel
from pipelines.registry.gate import Decision, GateRules, compare
from pipelines.registry.pointer import resolve
from pipelines.registry.promotion import promote
from pipelines.registry.store import load_detector, save_detector


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of the new data."""
    train, _, held_out = split_rows(n, (0.0, fraction), seed)
    return train, held_out


def retrain(
    data: pd.DataFrame,
    name: str,
    *,
    baseline: str | None = None,
    label: str | None = None,
    rules: GateRules | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = False,
    parallel: Parallel | None = None,
) -> Decision | None:
    """Trains a candidate with production's configuration on ``data`` and applies the gate.

    The candidate is saved either way (a rejected one can still be promoted by hand after
    review); the production pointer moves only when every rule passes.

    Arguments:
        data: the fresh records (with the label column, if ``label`` is given).
        name: the model name whose production version is the baseline.
        baseline: compare against this tag instead of the production one.
        label: a label column (read by :func:`~pipelines.io.labels.parse_labels`): anomalies are
            left out of training; it enables ROC-AUC.
        rules: the gate's thresholds.
        holdout_fraction: share of ``data`` held out for the comparison.
        seed: seeds the hold-out split.
        progress: show the candidate's training progress bar.
        parallel: data-parallel training of the candidate (:mod:`pipelines.model.distributed`),
            every process calling this on the same data. Only rank 0 saves, compares and
            promotes; the other ranks return None after training.
    """
    rules = rules or GateRules()
    # never the newest version by default: that may be a candidate this gate rejected
    production_tag = baseline or resolve(name, production_only=True)
    production = load_detector(production_tag)
    labels = None
    if label is not None:
        labels = parse_labels(data, label)
        data = data.drop(columns=[label])  # production may not know the label column
    # Before any training: production must score the new rows for the gate to compare, and
    # a client of production sends rows like them. (The index is kept: an error names the row
    # as the caller knows it, through every subset below.)
    try:
        production.validate(data)
    except SchemaError as error:
        raise error.located(context=(
            f"the new data does not fit production {production_tag}'s schema; if the change is "
            "meant, train a new model and promote it by hand")) from None
    train_rows, held_out_rows = holdout_split(len(data), holdout_fraction, seed)
    train = data.iloc[train_rows]
    if labels is not None:
        train = train[labels[train_rows] == 0]
    params = {**production.get_params(), "progress": progress}
    candidate = Detector(**params).fit(train, parallel=parallel)
    if parallel is not None and parallel.rank > 0:
        return None  # one candidate, one decision: rank 0's
    candidate_tag = save_detector(candidate, name)

    holdout = data.iloc[held_out_rows]
    decision = compare(production, candidate, holdout,
                       None if labels is None else labels[held_out_rows], rules)
    decision.candidate_tag, decision.production_tag = candidate_tag, production_tag
    decision.checks["rules"] = asdict(rules)
    decision.checks["rows"] = {"train": len(train), "holdout": len(holdout)}
    if decision.promoted:
        try:
            promote(candidate_tag, replacing=None if baseline else production_tag,
                    reason=f"retrain: gate passed against {production_tag}")
        except ProductionChanged as changed:  # a rollback or another retrain
            decision.promoted = False
            decision.reasons.append(f"{changed}: not promoted; review and promote by hand")
    return decision
