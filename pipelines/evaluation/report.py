"""Evaluation report for ``flowad evaluate``: metrics.json plus up to four PNG plots.

Scores are ``-log p(x)`` (higher = more anomalous); ``y_true`` is 1 for anomalies. Plots use
matplotlib's object-oriented API (``Figure`` + ``savefig``), which renders with Agg and needs no
display and no global backend switch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import SymmetricalLogLocator
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pipelines.evaluation.ranking import rankable_scores

__all__ = [
    "evaluation_metrics",
    "plot_roc_pr",
    "plot_score_histograms",
    "plot_top_contributions",
    "plot_training_curve",
    "roc_pr_figure",
    "score_histogram_figure",
    "top_column_counts",
    "top_contributions_figure",
    "training_curve_figure",
    "write_report",
]

METRICS_FILE = "metrics.json"
HISTOGRAM_FILE = "score_histograms.png"
ROC_PR_FILE = "roc_pr.png"
TRAINING_FILE = "training_curve.png"
CONTRIBUTIONS_FILE = "top_contributions.png"
MAX_PLOTTED_COLUMNS = 15
SYMLOG_LINEAR_NATS = 1.0  # the score histogram's axis is linear within this many nats of 0


def _inputs(y_true: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.int_], NDArray[np.float64]]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} entries but scores has {s.size}")
    if s.size == 0:
        raise ValueError("no scores to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be 0 (normal) or 1 (anomaly)")
    if np.isnan(s).any():
        raise ValueError(f"{int(np.isnan(s).sum())} scores are NaN")
    return y.astype(int), s


def _json_float(v: float) -> float | str | None:
    """Strict-JSON value: NaN (undefined) -> None, +-inf -> "inf" / "-inf"."""
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _calibrated(threshold: float | None) -> float | None:
    """The threshold of a calibrated detector, or None (None or NaN: not calibrated)."""
    return None if threshold is None or math.isnan(threshold) else threshold


def evaluation_metrics(y_true: ArrayLike, scores: ArrayLike,
                       threshold: float | None) -> dict[str, Any]:
    """ROC-AUC, AP and the realised FPR / TPR of ``score > threshold``, with counts.

    Values are JSON-safe: undefined metrics (ROC-AUC with one class only; anything at the
    threshold when it is None or NaN, i.e. the detector was not calibrated) are None, and an
    infinite threshold is the string "inf".
    """
    y, s = _inputs(y_true, scores)
    n_normal, n_anomalous = int((y == 0).sum()), int((y == 1).sum())
    both = n_normal > 0 and n_anomalous > 0
    metrics: dict[str, Any] = {
        "n": int(y.size),
        "n_normal": n_normal,
        "n_anomalous": n_anomalous,
        "roc_auc": float(roc_auc_score(y, rankable_scores(s))) if both else None,
        "average_precision": float(average_precision_score(y, rankable_scores(s))) if both
        else None,
        "threshold": None,
        "n_flagged": None,
        "false_positives": None,
        "true_positives": None,
        "fpr": None,
        "tpr": None,
        "precision": None,
    }
    calibrated = _calibrated(threshold)
    if calibrated is None:
        return metrics
    flagged = s > calibrated
    fp, tp = int(flagged[y == 0].sum()), int(flagged[y == 1].sum())
    metrics.update(
        threshold=_json_float(calibrated),
        n_flagged=fp + tp,
        false_positives=fp,
        true_positives=tp,
        fpr=fp / n_normal if n_normal else None,
        tpr=tp / n_anomalous if n_anomalous else None,
        precision=tp / (tp + fp) if tp + fp else None,
    )
    return metrics


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _nonfinite_label(scores: NDArray[np.float64], y: NDArray[np.int_]) -> str | None:
    """How many records of each label scored +-inf (zero or infinite density), or None."""
    parts = []
    for value, meaning in ((np.inf, "+inf (zero density)"), (-np.inf, "-inf")):
        at = scores == value
        if at.any():
            parts.append(f"score {meaning}: {int((at & (y == 0)).sum())} normal, "
                         f"{int((at & (y == 1)).sum())} anomalous (not drawn)")
    return "; ".join(parts) or None


def score_histogram_figure(scores: ArrayLike, y_true: ArrayLike,
                           threshold: float | None) -> Figure:
    """Score histograms of normal and anomalous records on a symmetric-log score axis, the
    threshold as a line; records scoring +-inf are counted in the legend, not binned.

    Scores are heavy-tailed (from ~10 to 1e5 nats in one table): on a linear axis every normal
    record fell into one bin. The symlog axis is linear within +-1 nat (scores can be
    negative) and logarithmic beyond, and the bins are even on it.

    Arguments:
        scores: anomaly scores ``-log p``.
        y_true: 1 for anomalies, 0 for normal records.
        threshold: the detector's threshold; None or NaN (not calibrated) draws no line.
    """
    y, s = _inputs(y_true, scores)
    finite = np.isfinite(s)
    calibrated = _calibrated(threshold)
    line = calibrated if calibrated is not None and math.isfinite(calibrated) else None
    shown = np.r_[s[finite], [] if line is None else [line]]  # the whole range, unclipped
    lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.set_xscale("symlog", linthresh=SYMLOG_LINEAR_NATS)
    to_axis = ax.xaxis.get_transform()  # even bins on the axis as drawn
    start, stop = to_axis.transform([lo, hi])
    edges = to_axis.inverted().transform(np.linspace(start, stop, 61))
    edges[[0, -1]] = lo, hi  # exactly: the round trip can leave the largest score outside
    bins = [float(edge) for edge in edges]
    for label, value, color in (("normal", 0, "tab:blue"), ("anomaly", 1, "tab:red")):
        part = s[finite & (y == value)]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.55, color=color, label=f"{label} (n={part.size})")
    if line is not None:
        ax.axvline(line, color="black", linestyle="--", label=f"threshold = {line:.4g}")
    elif calibrated is not None:
        flags = "nothing" if calibrated > 0 else "everything"
        ax.plot([], [], " ", label=f"threshold = {calibrated} ({flags} flagged)")
    nonfinite = _nonfinite_label(s, y)
    if nonfinite:
        ax.plot([], [], " ", label=nonfinite)
    ax.set_yscale("log")  # normals outnumber anomalies by 10-100x
    ax.set_xlabel(f"score = -log p(x)  (symlog axis: linear within "
                  f"±{SYMLOG_LINEAR_NATS:g} nat, logarithmic beyond)")
    ax.set_ylabel("records (log scale)")
    ax.set_title("Score distribution by label")
    ax.legend()
    return fig


def plot_score_histograms(scores: ArrayLike, y_true: ArrayLike, threshold: float | None,
                          path: str | os.PathLike[str]) -> Path:
    """:func:`score_histogram_figure`, written to ``path``."""
    return _save(score_histogram_figure(scores, y_true, threshold), path)


def roc_pr_figure(scores: ArrayLike, y_true: ArrayLike, threshold: float | None = None) -> Figure:
    """ROC curve and precision-recall curve side by side (needs both classes), with the
    operating point of ``score > threshold`` marked on both.

    Arguments:
        scores: anomaly scores ``-log p``.
        y_true: 1 for anomalies, 0 for normal records.
        threshold: the detector's threshold; None or NaN marks no operating point.
    """
    y, s = _inputs(y_true, scores)
    if y.min() == y.max():
        raise ValueError("ROC / PR curves need both normal and anomalous records")
    ranked = rankable_scores(s)
    fpr, tpr, _ = roc_curve(y, ranked)
    precision, recall, _ = precision_recall_curve(y, ranked)
    prevalence = float(y.mean())

    fig = Figure(figsize=(11, 4.5))
    ax_roc, ax_pr = fig.subplots(1, 2)
    # Log FPR axis: detectors operate at FPR 0.001-0.05, which a linear axis squeezes into
    # its left edge; the axis starts at one false positive.
    fpr_min = 1.0 / max(int((y == 0).sum()), 2)
    chance = np.geomspace(fpr_min, 1.0, 50)
    ax_roc.plot(fpr, tpr, color="tab:blue", label=f"ROC-AUC = {roc_auc_score(y, ranked):.3f}")
    ax_roc.plot(chance, chance, color="grey", linestyle=":", label="chance")
    # drawstyle matches how average precision sums the curve (step-wise, no interpolation)
    ax_pr.plot(recall, precision, color="tab:red", drawstyle="steps-post",
               label=f"AP = {average_precision_score(y, ranked):.3f}")
    ax_pr.axhline(prevalence, color="grey", linestyle=":", label=f"chance = {prevalence:.3f}")
    calibrated = _calibrated(threshold)
    if calibrated is not None:
        flagged = s > calibrated
        at_fpr, at_tpr = float(flagged[y == 0].mean()), float(flagged[y == 1].mean())
        where = f"FPR {at_fpr:.3g}" + (" (0: drawn at the axis edge)" if at_fpr == 0 else "")
        ax_roc.plot([max(at_fpr, fpr_min)], [at_tpr], "o", color="black", zorder=3,
                    label=f"operating point: {where}, TPR {at_tpr:.3g}")
        if flagged.any():
            at_precision = float(y[flagged].mean())
            ax_pr.plot([at_tpr], [at_precision], "o", color="black", zorder=3,
                       label=f"operating point: recall {at_tpr:.3g}, precision "
                             f"{at_precision:.3g}")
    ax_roc.set_xscale("log")
    ax_roc.set(xlabel="false-positive rate (log scale)", ylabel="true-positive rate",
               title="ROC", xlim=(fpr_min, 1), ylim=(0, 1.01))
    ax_roc.legend(loc="upper left")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall",
              xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.legend(loc="lower left")
    return fig


def plot_roc_pr(scores: ArrayLike, y_true: ArrayLike, path: str | os.PathLike[str],
                threshold: float | None = None) -> Path:
    """:func:`roc_pr_figure`, written to ``path``."""
    return _save(roc_pr_figure(scores, y_true, threshold), path)


def training_curve_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Train (solid) and validation (dashed) NLL per epoch, best validation epoch marked
    (dotted); one colour per member of a mixture (history rows with a ``member`` key).

    NLL in nats can be negative, so the y axis stays linear.

    Arguments:
        history: one row per epoch (``epoch``, ``train_nll``, ``val_nll``, ``member``).
    """
    if not history:
        raise ValueError("empty training history")
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    members = sorted({h.get("member", 0) for h in history})
    for index, member in enumerate(members):
        rows = [h for h in history if h.get("member", 0) == member]

        def column(key: str, rows: list[Mapping[str, Any]] = rows) -> NDArray[np.float64]:
            return np.array([np.nan if h.get(key) is None else float(h[key]) for h in rows])

        epoch, train, val = column("epoch"), column("train_nll"), column("val_nll")
        suffix = f" (member {member})" if len(members) > 1 else ""
        color = f"C{index % 10}"
        ax.plot(epoch, train, marker=".", color=color, alpha=0.8, label=f"train NLL{suffix}")
        if np.isfinite(val).any():
            ax.plot(epoch, val, marker=".", color=color, linestyle="--", alpha=0.8,
                    label=f"validation NLL{suffix}")
            best = int(np.nanargmin(val))
            ax.axvline(epoch[best], color=color, linestyle=":",
                       label=f"best validation: epoch {epoch[best]:g} ({val[best]:.4g}){suffix}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean NLL (nats per record)")
    ax.set_title("Training curve")
    ax.legend()
    return fig


def plot_training_curve(history: Sequence[Mapping[str, Any]],
                        path: str | os.PathLike[str]) -> Path:
    """:func:`training_curve_figure`, written to ``path``."""
    return _save(training_curve_figure(history), path)


def top_column_counts(contributions: pd.DataFrame) -> pd.Series:
    """Per column, the records whose largest contribution is that column's (a record whose
    contributions are all NaN, of infinite score, counts for none).

    Arguments:
        contributions: one row per record, one column per input column.
    """
    values = contributions.to_numpy(dtype=np.float64)
    explained = ~np.isnan(values).all(axis=1)
    top = np.argmax(np.where(np.isnan(values), -np.inf, values), axis=1)[explained]
    counts = np.bincount(top, minlength=contributions.shape[1])
    return pd.Series(counts, index=contributions.columns)


def top_contributions_figure(contributions: pd.DataFrame) -> Figure:
    """The columns that made the flagged records anomalous, ordered by how many records each is
    the top contributor of (then by its median contribution): those counts, and each column's
    median finite contribution (nats, from ``Detector.explain``), with how often its value was
    off the column's grid (an infinite contribution, counted rather than drawn).

    Not by the mean: a few records of 1e5 nats dominate a mean, and a column that tops 23
    records came fourth behind columns that top none.

    Arguments:
        contributions: one row per flagged record, one column per input column.
    """
    if contributions.empty:
        raise ValueError("no contributions to plot")
    impossible = np.isposinf(contributions).sum()
    median = contributions.replace(np.inf, np.nan).median().fillna(0.0)
    ranking = pd.DataFrame({"top": top_column_counts(contributions), "median": median})
    ranking = ranking.sort_values(["top", "median"], ascending=False, kind="stable")
    ranking = ranking.head(MAX_PLOTTED_COLUMNS)
    fig = Figure(figsize=(11, 0.9 + 0.35 * len(ranking)))
    ax_top, ax_median = fig.subplots(1, 2, sharey=True)
    rows = range(len(ranking))
    ax_top.barh(rows, ranking["top"].to_numpy(), color="tab:red")
    ax_top.set_yticks(rows, [
        name + (f"  (off its grid in {impossible[name]})" if impossible[name] else "")
        for name in ranking.index])
    ax_top.invert_yaxis()  # most first
    ax_top.set_xlabel("flagged records it is the top contributor of")
    ax_median.barh(rows, ranking["median"].to_numpy(), color="tab:orange")
    ax_median.axvline(0, color="grey", linewidth=0.8)
    ax_median.set_xscale("symlog", linthresh=SYMLOG_LINEAR_NATS)  # from ~1 to ~1e5 nats
    # every second decade: labels of every decade on both sides of 0 overlap
    ax_median.xaxis.set_major_locator(SymmetricalLogLocator(linthresh=SYMLOG_LINEAR_NATS,
                                                            base=100))
    ax_median.set_xlabel("median contribution to -log p (nats from a typical record; symlog)")
    fig.suptitle(f"What made the {len(contributions)} flagged records anomalous")
    return fig


def plot_top_contributions(contributions: pd.DataFrame,
                           path: str | os.PathLike[str]) -> Path:
    """:func:`top_contributions_figure`, written to ``path``."""
    return _save(top_contributions_figure(contributions), path)


def write_report(report_dir: str | os.PathLike[str], y_true: ArrayLike, scores: ArrayLike,
                 threshold: float | None,
                 history: Sequence[Mapping[str, Any]] | None = None,
                 contributions: pd.DataFrame | None = None) -> dict[str, Any]:
    """Write metrics.json and the plots into ``report_dir``; return the metrics.

    The ROC/PR plot is skipped when only one class is present, the training curve when there is
    no history, the contributions plot when no record was flagged (or none are given).
    """
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluation_metrics(y_true, scores, threshold)
    # allow_nan=False: fail here rather than write JSON that strict parsers reject
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    plot_score_histograms(scores, y_true, threshold, out / HISTOGRAM_FILE)
    if metrics["roc_auc"] is not None:
        plot_roc_pr(scores, y_true, out / ROC_PR_FILE, threshold)
    if history:
        plot_training_curve(history, out / TRAINING_FILE)
    if contributions is not None and not contributions.empty:
        plot_top_contributions(contributions, out / CONTRIBUTIONS_FILE)
    return metrics
