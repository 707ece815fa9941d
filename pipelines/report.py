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
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pipelines.ranking import rankable_scores

__all__ = [
    "evaluation_metrics",
    "plot_roc_pr",
    "plot_score_histograms",
    "plot_top_contributions",
    "plot_training_curve",
    "write_report",
]

METRICS_FILE = "metrics.json"
HISTOGRAM_FILE = "score_histograms.png"
ROC_PR_FILE = "roc_pr.png"
TRAINING_FILE = "training_curve.png"
CONTRIBUTIONS_FILE = "top_contributions.png"
MAX_PLOTTED_COLUMNS = 15


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


def _has_threshold(threshold: float | None) -> bool:
    return threshold is not None and not math.isnan(threshold)


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
    if not _has_threshold(threshold):
        return metrics
    flagged = s > threshold
    fp, tp = int(flagged[y == 0].sum()), int(flagged[y == 1].sum())
    metrics.update(
        threshold=_json_float(threshold),
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


def plot_score_histograms(scores: ArrayLike, y_true: ArrayLike, threshold: float | None,
                          path: str | os.PathLike[str]) -> Path:
    """Overlaid score histograms of normal and anomalous records, threshold as a line.

    ``threshold`` None or NaN (not calibrated) draws no line."""
    y, s = _inputs(y_true, scores)
    finite = s[np.isfinite(s)]
    # Anomaly scores are heavy-tailed (one record can score 1e4 nats); clip the top 0.5 % into
    # the last bin so the bulk stays readable, but keep the threshold inside the range.
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(np.quantile(finite, 0.995)) if finite.size else 1.0
    draw_line = _has_threshold(threshold) and math.isfinite(threshold)
    if draw_line:
        lo, hi = min(lo, threshold), max(hi, threshold)
    hi = hi if hi > lo else lo + 1.0
    bins = np.linspace(lo, hi, 61)
    clipped = np.clip(s, lo, hi)  # +-inf scores land in the end bins

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for label, value, color in (("normal", 0, "tab:blue"), ("anomaly", 1, "tab:red")):
        part = clipped[y == value]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.55, color=color, label=f"{label} (n={part.size})")
    if draw_line:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold = {threshold:.4g}")
    elif _has_threshold(threshold):
        flags = "nothing" if threshold > 0 else "everything"
        ax.plot([], [], " ", label=f"threshold = {threshold} ({flags} flagged)")
    ax.set_yscale("log")  # normals outnumber anomalies by 10-100x
    ax.set_xlabel(f"score = -log p(x)  (values above {hi:.4g} drawn in the last bin)")
    ax.set_ylabel("records (log scale)")
    ax.set_title("Score distribution by label")
    ax.legend()
    return _save(fig, path)


def plot_roc_pr(scores: ArrayLike, y_true: ArrayLike, path: str | os.PathLike[str]) -> Path:
    """ROC curve and precision-recall curve side by side (needs both classes)."""
    y, s = _inputs(y_true, scores)
    s = rankable_scores(s)
    if y.min() == y.max():
        raise ValueError("ROC / PR curves need both normal and anomalous records")
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    prevalence = float(y.mean())

    fig = Figure(figsize=(11, 4.5))
    ax_roc, ax_pr = fig.subplots(1, 2)
    # Log FPR axis: detectors operate at FPR 0.001-0.05, which a linear axis squeezes into
    # its left edge; the axis starts at one false positive.
    fpr_min = 1.0 / max(int((y == 0).sum()), 2)
    chance = np.geomspace(fpr_min, 1.0, 50)
    ax_roc.plot(fpr, tpr, color="tab:blue", label=f"ROC-AUC = {roc_auc_score(y, s):.3f}")
    ax_roc.plot(chance, chance, color="grey", linestyle=":", label="chance")
    ax_roc.set_xscale("log")
    ax_roc.set(xlabel="false-positive rate (log scale)", ylabel="true-positive rate",
               title="ROC", xlim=(fpr_min, 1), ylim=(0, 1.01))
    ax_roc.legend(loc="upper left")
    # drawstyle matches how average precision sums the curve (step-wise, no interpolation)
    ax_pr.plot(recall, precision, color="tab:red", drawstyle="steps-post",
               label=f"AP = {average_precision_score(y, s):.3f}")
    ax_pr.axhline(prevalence, color="grey", linestyle=":", label=f"chance = {prevalence:.3f}")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall",
              xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.legend(loc="lower left")
    return _save(fig, path)


def plot_training_curve(history: Sequence[Mapping[str, Any]],
                        path: str | os.PathLike[str]) -> Path:
    """Train and validation NLL per epoch, best validation epoch marked; one pair of curves
    per member of a mixture (history rows with a ``member`` key).

    NLL in nats can be negative, so the y axis stays linear.
    """
    if not history:
        raise ValueError("empty training history")
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    members = sorted({h.get("member", 0) for h in history})
    for member in members:
        rows = [h for h in history if h.get("member", 0) == member]

        def column(key: str, rows: list[Mapping[str, Any]] = rows) -> NDArray[np.float64]:
            return np.array([np.nan if h.get(key) is None else float(h[key]) for h in rows])

        epoch, train, val = column("epoch"), column("train_nll"), column("val_nll")
        suffix = f" (member {member})" if len(members) > 1 else ""
        ax.plot(epoch, train, marker=".", color="tab:blue", alpha=0.8,
                label=f"train NLL{suffix}")
        if np.isfinite(val).any():
            ax.plot(epoch, val, marker=".", color="tab:orange", alpha=0.8,
                    label=f"validation NLL{suffix}")
            best = int(np.nanargmin(val))
            ax.axvline(epoch[best], color="grey", linestyle="--",
                       label=f"best validation: epoch {epoch[best]:g} ({val[best]:.4g}){suffix}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean NLL (nats per record)")
    ax.set_title("Training curve")
    ax.legend()
    return _save(fig, path)


def plot_top_contributions(contributions: pd.DataFrame,
                           path: str | os.PathLike[str]) -> Path:
    """The columns that contributed most to the scores of the flagged records: mean finite
    contribution per column (nats, from ``Detector.explain``), how many records it tops, and in
    how many its value was off the column's grid (an infinite contribution).

    Arguments:
        contributions: one row per flagged record, one column per input column.
        path: the PNG to write.
    """
    if contributions.empty:
        raise ValueError("no contributions to plot")
    # +inf: the column's value is off its grid (zero probability); counted, not averaged
    impossible = np.isposinf(contributions).sum()
    mean = (contributions.replace(np.inf, np.nan).mean().fillna(0.0)
            .sort_values(ascending=False).head(MAX_PLOTTED_COLUMNS))
    first = contributions.idxmax(axis=1).value_counts()
    fig = Figure(figsize=(8, 0.8 + 0.35 * len(mean)))
    ax = fig.subplots()
    ax.barh(range(len(mean)), mean.to_numpy(), color="tab:red")
    ax.set_yticks(range(len(mean)), [
        f"{name}  (top in {first.get(name, 0)}"
        + (f"; off its grid in {impossible[name]})" if impossible[name] else ")")
        for name in mean.index])
    ax.invert_yaxis()  # largest first
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("mean contribution to -log p (nats, from a typical record)")
    ax.set_title(f"What made the {len(contributions)} flagged records anomalous")
    return _save(fig, path)


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
        plot_roc_pr(scores, y_true, out / ROC_PR_FILE)
    if history:
        plot_training_curve(history, out / TRAINING_FILE)
    if contributions is not None and not contributions.empty:
        plot_top_contributions(contributions, out / CONTRIBUTIONS_FILE)
    return metrics
