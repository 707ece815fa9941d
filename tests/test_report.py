"""Evaluation report: metrics checked against sklearn and hand counts; files written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, roc_auc_score

from pipelines.report import (
    evaluation_metrics,
    plot_top_contributions,
    plot_training_curve,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data() -> tuple[NDArray[np.int_], NDArray[np.float64]]:
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0, 1, 900), rng.normal(2.5, 1.5, 100), [1e4]]
    y = np.r_[np.zeros(900, int), np.ones(101, int)]
    return y, scores


def _strict_json(text: str) -> dict:
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def test_metrics_match_independent_computation() -> None:
    y, s = _data()
    t = 1.7
    m = evaluation_metrics(y, s, t)
    normal, anomalous = s[y == 0], s[y == 1]
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["false_positives"] == sum(v > t for v in normal)
    assert m["true_positives"] == sum(v > t for v in anomalous)
    assert m["fpr"] == sum(v > t for v in normal) / 900
    assert m["tpr"] == sum(v > t for v in anomalous) / 101
    assert (m["n"], m["n_normal"], m["n_anomalous"], m["threshold"]) == (1001, 900, 101, 1.7)
    assert m["n_flagged"] == m["false_positives"] + m["true_positives"]


def test_threshold_on_a_tied_score_is_not_flagged() -> None:
    m = evaluation_metrics([0, 0, 1, 1], [1.0, 2.0, 2.0, 3.0], 2.0)
    assert (m["fpr"], m["tpr"]) == (0.0, 0.5)


def test_write_report_files(tmp_path: Path) -> None:
    y, s = _data()
    history = [{"epoch": e, "train_nll": 5 / e, "val_nll": 5.5 / e + 0.01 * e, "step": 10 * e}
               for e in range(1, 21)]
    metrics = write_report(tmp_path / "report", y, s, 1.7, history)
    out = tmp_path / "report"
    assert _strict_json((out / "metrics.json").read_text()) == metrics
    for name in ("score_histograms.png", "roc_pr.png", "training_curve.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


def test_training_curve_of_a_mixture_has_a_line_pair_per_member(tmp_path: Path) -> None:
    from pipelines.report import plot_training_curve

    history = [{"epoch": e, "train_nll": k + 5 / e, "val_nll": k + 5.5 / e, "member": k}
               for k in range(3) for e in range(1, 11)]
    path = plot_training_curve(history, tmp_path / "curve.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_infinite_and_missing_thresholds_stay_strict_json(tmp_path: Path) -> None:
    y, s = _data()
    m = write_report(tmp_path / "inf", y, s, math.inf, history=None)
    assert _strict_json((tmp_path / "inf" / "metrics.json").read_text())["threshold"] == "inf"
    assert (m["fpr"], m["tpr"], m["n_flagged"]) == (0.0, 0.0, 0)
    assert not (tmp_path / "inf" / "training_curve.png").exists()
    m = evaluation_metrics(y, s, math.nan)  # uncalibrated detector
    assert m["threshold"] is None and m["fpr"] is None and m["n_flagged"] is None
    assert m["roc_auc"] is not None
    json.dumps(m, allow_nan=False)


def test_one_class_only(tmp_path: Path) -> None:
    m = write_report(tmp_path, np.zeros(50, int), np.linspace(0, 1, 50), 0.9)
    assert m["roc_auc"] is None and m["average_precision"] is None and m["tpr"] is None
    assert m["fpr"] == pytest.approx(5 / 50)
    assert (tmp_path / "score_histograms.png").exists()
    assert not (tmp_path / "roc_pr.png").exists()


def test_training_curve_tolerates_missing_validation(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_nll": 2.0, "val_nll": None},
               {"epoch": 2, "train_nll": -1.0, "val_nll": float("nan")}]
    path = plot_training_curve(history, tmp_path / "curve.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(("y", "s"), [([0, 1], [0.1, math.nan]), ([0, 2], [0.1, 0.2]),
                                      ([0, 1, 0], [0.1, 0.2])])
def test_rejects_bad_input(y: list, s: list) -> None:
    with pytest.raises(ValueError):
        evaluation_metrics(y, s, 0.5)


def test_top_contributions_plot(tmp_path: Path) -> None:
    contributions = pd.DataFrame({"amount": [5.0, 0.1, 4.0], "channel": [0.2, 6.0, -0.3]})
    path = plot_top_contributions(contributions, tmp_path / "top.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="no contributions"):
        plot_top_contributions(contributions.iloc[:0], tmp_path / "none.png")
    y, s = _data()
    write_report(tmp_path / "empty", y, s, threshold=0.0, contributions=contributions.iloc[:0])
    assert not (tmp_path / "empty" / "top_contributions.png").exists()


def test_infinite_scores_rank_first_and_keep_the_metrics_exact() -> None:
    """A record of zero density scores +inf; scikit-learn's metrics refuse infinity, so the
    report ranks it just above every finite score (the order, and so the metrics, unchanged)."""
    y = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([1.0, 5.0, np.inf, -np.inf, 4.0, np.inf])
    metrics = evaluation_metrics(y, scores, threshold=4.5)
    # independent: pairs (anomaly, normal) ordered correctly, ties half; normals 1, 5, -inf
    pairs = [(a, n) for a in scores[y == 1] for n in scores[y == 0]]
    expected = np.mean([1.0 if a > n else 0.5 if a == n else 0.0 for a, n in pairs])
    assert metrics["roc_auc"] == pytest.approx(expected)
    assert metrics["n_flagged"] == 3 and metrics["true_positives"] == 2


def test_contributions_of_values_off_their_grid_are_counted_not_averaged(tmp_path: Path) -> None:
    import warnings

    contributions = pd.DataFrame({"a": [0.2, np.inf, 1.0], "b": [1.0, -0.1, np.inf]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an infinite bar made matplotlib warn (NaN transforms)
        path = plot_top_contributions(contributions, tmp_path / "top.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
