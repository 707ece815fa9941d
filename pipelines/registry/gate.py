"""The promotion gate: the rules :func:`compare` applies to a candidate and production on the
held-out rows of new data (:mod:`pipelines.registry.retrain` trains the candidate).

All rules must pass; thresholds are :class:`GateRules` fields, defaults in brackets, each a
``flowad retrain`` option:
0. Schema: the candidate's schema accepts what production's clients send
   (:func:`schema_changes`: no column gone or new, none changed between text and numbers, none
   newly on a grid or on a coarser one (values between its points, which production scores as
   ordinary, would then carry the off-grid penalty), none that may be missing in production
   and not in the candidate).
1. Data quality: no column that varied in production's training data is constant in the new
   data, and no column's missing rate rises by more than ``max_missing_rate_increase`` [0.2].
2. Drift sanity: production flags at most ``max_production_fpr_ratio`` [5] x its target FPR of
   the new held-out rows. Far more means the new data is unlike anything production knows (a
   broken upstream job, shuffled or corrupted columns, or a real regime change); retraining
   on it would make the detector learn the break, so that needs a human and a manual
   ``flowad promote``.
3. Fit (non-inferiority): on the held-out normal rows, the paired differences
   ``d = candidate NLL - production NLL`` (both models never saw these rows) are summarised by
   their ``nll_trim`` [10%]-trimmed mean. The candidate is refused only when the one-sided
   ``nll_confidence`` [99%] lower bound of that mean (Tukey-McLaughlin, Student t on the
   winsorised variance) exceeds the margin ``nll_margin`` [0.05] nats x the number of encoded
   features: only when it is *shown* to be materially worse. The margin is not zero because a
   healthy candidate is expected to be a little worse: it is fitted on fewer rows (80% of the
   new table, less its own validation and calibration splits) than production may have been.
   The trimmed mean because NLL differences are heavy-tailed (a record with a level seen once
   in training can cost thousands of nats). See :func:`fit_check` for the margin's scale.
   Fewer than 3 held-out normal rows show nothing, and the candidate is refused.
4. Can flag: a candidate that can never flag a record at its target FPR (``describe()``'s
   ``calibration.can_flag`` is false: too few calibration rows for that FPR, or too many of
   zero density) is refused while production can flag. Rule 5 cannot catch it: such a
   candidate's realised FPR is 0, inside the interval [0, 0] of an infinite threshold.
5. Calibration (a candidate that can flag): its realised FPR on held-out normal rows (its own
   verdicts, ``predict``) is within the 99% interval that conformal calibration allows
   (beta-binomial, see :func:`~pipelines.model.calibration.conformal_fpr_interval`). That interval
   starts at 0 when there are few held-out rows for the target FPR, and then a realised FPR of
   0 is a likely outcome of a sound threshold, not a sign of a broken one. For a
   cross-conformal candidate (a small table) the split-conformal interval of as many
   calibration rows is an approximation (its guarantee is looser, docs/design.md
   "Calibration"); a candidate thresholded by ``contamination`` has no FPR to check.
6. Detection (only with labels): candidate ROC-AUC >= production ROC-AUC - ``auc_tolerance``
   [0.01].

Corrupted new data is caught by rules 1 and 2, not by rule 3: the candidate learns the
corruption, so it scores the (equally corrupted) held-out rows better than production does.
Rule 3 catches a candidate whose training went wrong. ``benchmarks/gate_error_rates.py``
measures the whole gate's error rates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import trim_mean
from scipy.stats.mstats import trimmed_mean_ci
from sklearn.metrics import roc_auc_score

from pipelines.evaluation.ranking import rankable_scores
from pipelines.model.calibration import conformal_fpr_interval
from pipelines.model.detector import Detector

# Stand-in for an infinite or undefined NLL difference: finite, so that the trimmed mean and
# its variance stay defined, and large, so that it counts as a record the model cannot explain.
HUGE_DIFFERENCE = 1e12


@dataclass
class GateRules:
    """The gate's thresholds.

    Arguments:
        nll_margin: nats per record and encoded feature by which the candidate may be worse.
        nll_confidence: one-sided confidence of the bound that must exceed the margin to refuse.
        nll_trim: share of the paired differences trimmed from each tail.
        max_production_fpr_ratio: drift limit, in multiples of production's target FPR.
        max_missing_rate_increase: largest allowed rise of a column's missing rate.
        auc_tolerance: largest allowed ROC-AUC drop (with labels).
    """

    nll_margin: float = 0.05
    nll_confidence: float = 0.99
    nll_trim: float = 0.1
    max_production_fpr_ratio: float = 5.0
    max_missing_rate_increase: float = 0.2
    auc_tolerance: float = 0.01


@dataclass
class Decision:
    """The gate's verdict, written as the JSON decision report."""

    promoted: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    candidate_tag: str | None = None
    production_tag: str | None = None

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "REJECTED"
        detail = "; ".join(self.reasons) if self.reasons else "all gate rules passed"
        return f"{verdict} {self.candidate_tag} (production was {self.production_tag}): {detail}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _data_quality(production: Detector, new: pd.DataFrame, rules: GateRules) -> list[str]:
    problems = []
    for spec in production.schema.columns:
        if spec.name not in new.columns:
            continue  # the schema check of scoring reports missing columns
        column = new[spec.name]
        if (spec.n_unique or 0) > 1 and column.nunique(dropna=True) <= 1:
            problems.append(f"column {spec.name!r} is constant in the new data")
        missing_rate = float(column.isna().mean())
        if missing_rate > (spec.missing_rate or 0.0) + rules.max_missing_rate_increase:
            problems.append(f"column {spec.name!r} missing rate rose to {missing_rate:.0%}")
    return problems


def _can_flag(production: Detector, candidate: Detector, checks: dict[str, Any]) -> list[str]:
    """Rule 4: the candidate can flag records at its target FPR, or production cannot either.
    Writes ``checks["can_flag"]``; returns the reasons to refuse.

    Arguments:
        production: the production detector.
        candidate: the candidate.
        checks: the decision's checks.
    """
    can_flag = {"candidate": candidate.describe()["calibration"]["can_flag"],
                "production": production.describe()["calibration"]["can_flag"]}
    passed = can_flag["candidate"] or not can_flag["production"]
    checks["can_flag"] = {**can_flag, "candidate_warning": candidate.calibration_warning,
                          "passed": passed}
    if passed:
        return []
    return [f"the candidate can never flag a record at target FPR {candidate.target_fpr:g}, "
            f"while production can: {candidate.calibration_warning}"]


def _fitted_rate(detector: Detector) -> float:
    """The rate a detector's threshold was fitted at: its target FPR, or its contamination."""
    about = detector.describe()
    return float(about["target_fpr"] if about["target_fpr"] is not None
                 else about["contamination"])


def schema_changes(production: Detector, candidate: Detector) -> list[str]:
    """What in the candidate's schema would reject, or score as off its grid, records production
    scores: the clients of production send such records, so promoting it would break them (a
    feed's format or resolution changed: a text column now of codes, amounts now rounded).

    Arguments:
        production: the production detector.
        candidate: the candidate, fitted on the new data.
    """
    old = {spec.name: spec for spec in production.schema.columns}
    new = {spec.name: spec for spec in candidate.schema.columns}
    on_grid = dict(zip([spec.name for spec in candidate.schema.of_kind("discrete", "binary")],
                       candidate.encoder_.on_grid_, strict=True))
    changes = [f"column {name!r} is gone from the candidate's schema"
               for name in sorted(old.keys() - new.keys())]
    changes += [f"column {name!r} is new in the candidate's schema"
                for name in sorted(new.keys() - old.keys())]
    for name in sorted(old.keys() & new.keys()):
        was, now = old[name], new[name]
        if (was.kind == "categorical") != (now.kind == "categorical"):
            changes.append(f"column {name!r} was {was.kind}, is {now.kind} in the candidate: "
                           "production's clients send values of the other kind")
        elif on_grid.get(name) and (was.kind == "continuous"
                                    or now.grid[1] > (was.step or 0.0) * (1 + 1e-9)):
            before = "continuous" if was.kind == "continuous" else f"on a grid of step {was.step:g}"
            changes.append(f"column {name!r} is on a grid of step {now.grid[1]:g} in the candidate "
                           f"({before} in production): values between its points, which "
                           "production scores, would score as off the grid")
        if was.n_missing_train > 0 and now.n_missing_train == 0:
            changes.append(f"column {name!r} may be missing in production, not in the candidate: "
                           "records production scores would be rejected")
    return changes


def fit_check(
    production_scores: np.ndarray,
    candidate_scores: np.ndarray,
    n_features: int,
    rules: GateRules,
) -> dict[str, Any]:
    """Rule 3: is the candidate shown to fit held-out rows materially worse than production?

    A one-sided non-inferiority test on the paired per-record differences
    ``d = candidate - production``: it fails only when the ``nll_confidence`` lower bound of
    the trimmed mean of ``d`` exceeds ``nll_margin x n_features`` nats. The burden of proof is
    on refusing, so a healthy candidate is refused with probability at most
    ``1 - nll_confidence`` whenever its true gap is within the margin.

    The margin scales with the number of encoded features because NLL is a sum over them, and
    so is the fit gap a smaller training set causes. Measured on the 8-feature tables of
    ``benchmarks/gate_error_rates.py``, healthy candidates trained on 40% of production's rows
    were worse by up to about 0.03 nats per feature; candidates whose training was cut to 1-3
    epochs (measured separately, same tables), by 0.2-0.45. 0.05 lies between, closer to the
    healthy end, so that a failed fit is refused with room to spare.

    Arguments:
        production_scores: production's NLL of each held-out normal record.
        candidate_scores: the candidate's NLL of the same records, in the same order.
        n_features: encoded features of the production model (``n_encoded_features_``).
        rules: supplies ``nll_margin``, ``nll_confidence`` and ``nll_trim``.
    """
    difference = np.nan_to_num(candidate_scores - production_scores, nan=HUGE_DIFFERENCE,
                               posinf=HUGE_DIFFERENCE, neginf=-HUGE_DIFFERENCE)
    margin = rules.nll_margin * n_features
    check: dict[str, Any] = {
        "production": float(np.mean(production_scores)),
        "candidate": float(np.mean(candidate_scores)),
        "n": len(difference), "margin": margin, "trim": rules.nll_trim,
        "confidence": rules.nll_confidence,
    }
    if len(difference) < 3:  # no variance estimate from fewer rows: nothing is shown
        return {**check, "statistic": float("nan"), "lower_bound": float("nan"),
                "mean": float("nan"), "std": float("nan"), "passed": False}
    trim = rules.nll_trim
    lower, _ = trimmed_mean_ci(difference, limits=(trim, trim),
                               alpha=2 * (1 - rules.nll_confidence))  # two-sided alpha
    return {
        **check,
        "statistic": float(trim_mean(difference, trim)),
        "lower_bound": float(lower),
        "mean": float(difference.mean()),
        "std": float(difference.std(ddof=1)),
        "passed": bool(lower <= margin),
    }


def compare(
    production: Detector,
    candidate: Detector,
    holdout: pd.DataFrame,
    labels: np.ndarray | None,
    rules: GateRules,
) -> Decision:
    """Applies the gate rules to the two detectors on the held-out slice of the new data."""
    normal = holdout if labels is None else holdout[labels == 0]
    decision = Decision(promoted=False)
    checks, reasons = decision.checks, decision.reasons

    changes = schema_changes(production, candidate)
    checks["schema"] = {"passed": not changes, "changes": changes}
    reasons += changes

    problems = _data_quality(production, holdout, rules)
    checks["data_quality"] = {"passed": not problems, "problems": problems}
    reasons += problems

    production_scores = production.decision_function(normal)  # -log p: NLL per record
    candidate_scores = candidate.decision_function(normal)
    # The verdicts themselves: a cross-conformal model's rule is not "score > threshold_".
    production_fpr = float(np.mean(production.predict(normal)))
    production_rate = _fitted_rate(production)
    limit = rules.max_production_fpr_ratio * production_rate
    checks["drift"] = {"production_fpr": production_fpr, "limit": limit,
                       "passed": production_fpr <= limit}
    if production_fpr > limit:
        reasons.append(
            f"production flags {production_fpr:.1%} of the new normal rows (target "
            f"{production_rate:.1%}, limit {limit:.1%}): the new data is unlike the old; "
            "review it and promote manually if it is right"
        )

    checks["nll"] = fit_check(production_scores, candidate_scores,
                              production.n_encoded_features_, rules)
    nll = checks["nll"]
    if nll["n"] < 3:
        reasons.append(f"only {nll['n']} held-out normal rows: too few to compare the fits")
    elif not nll["passed"]:
        reasons.append(
            f"candidate NLL is worse by {nll['statistic']:.3f} nats per record "
            f"({rules.nll_trim:.0%}-trimmed mean of {nll['n']} paired differences; its "
            f"{rules.nll_confidence:.0%} lower bound {nll['lower_bound']:.3f} exceeds the margin "
            f"{nll['margin']:.3f} = {rules.nll_margin} x {production.n_encoded_features_} features)"
        )

    reasons += _can_flag(production, candidate, checks)
    candidate_fpr = float(np.mean(candidate.predict(normal)))
    about = candidate.describe()
    calibration = about["calibration"]
    checks["calibration"] = {"candidate_fpr": candidate_fpr, "target": about["target_fpr"],
                             "method": calibration["method"]}
    if about["target_fpr"] is None:  # contamination: a share of training rows, no guarantee
        checks["calibration"] |= {"interval": None, "passed": True}
    elif calibration["can_flag"]:
        low, high = conformal_fpr_interval(len(normal), calibration["n"], about["target_fpr"])
        passed = low <= candidate_fpr <= high
        checks["calibration"] |= {"interval": [low, high], "passed": passed}
        if not passed:
            reasons.append(f"candidate realised FPR {candidate_fpr:.2%} is outside the 99% "
                           f"interval [{low:.2%}, {high:.2%}] of its target")
    else:  # no interval to judge a threshold of +inf by: rule 4 decides
        checks["calibration"] |= {"interval": None, "passed": checks["can_flag"]["passed"]}

    if labels is not None and 0 < labels.sum() < len(labels):
        auc_production = roc_auc_score(
            labels, rankable_scores(production.decision_function(holdout)))
        auc_candidate = roc_auc_score(labels, rankable_scores(candidate.decision_function(holdout)))
        passed = auc_candidate >= auc_production - rules.auc_tolerance
        checks["roc_auc"] = {"production": auc_production, "candidate": auc_candidate,
                             "passed": bool(passed)}
        if not passed:
            reasons.append(f"candidate ROC-AUC {auc_candidate:.4f} < production "
                           f"{auc_production:.4f} - {rules.auc_tolerance}")
    decision.promoted = not reasons
    return decision
