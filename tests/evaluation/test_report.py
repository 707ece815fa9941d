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

from pipelines.evaluation.report import (
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
    from pipelines.evaluation.report import plot_training_curve

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


def _legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def _bar_heights(ax) -> list[np.ndarray]:
    return [np.array([bar.get_height() for bar in container]) for container in ax.containers]


def test_score_histogram_spreads_heavy_tailed_scores_and_counts_infinite_ones() -> None:
    """Scores from 1e2 to 1e5 nats: on the old linear axis all normals shared one bin and the
    +inf rows were silently in the last one."""
    from pipelines.evaluation.report import score_histogram_figure

    rng = np.random.default_rng(0)
    normal = 10 ** rng.uniform(2, 5, 1000)
    anomalous = 10 ** rng.uniform(4, 6, 50)
    scores = np.r_[normal, [np.inf] * 3, anomalous, [np.inf] * 2]
    y = np.r_[np.zeros(1003, int), np.ones(52, int)]
    ax = score_histogram_figure(scores, y, threshold=2e4).axes[0]
    assert ax.get_xscale() == "symlog"
    normal_bins, anomalous_bins = _bar_heights(ax)
    assert normal_bins.sum() == 1000 and anomalous_bins.sum() == 50  # the finite ones, all
    assert (normal_bins > 0).sum() >= 30  # three decades of normals over many of the 60 bins
    # independent: each decade of normal scores holds a third of them, in a third of the bins
    edges = [bar.get_x() for bar in ax.containers[0]]
    first_decade = np.array(edges) < 1e3
    assert normal_bins[first_decade].sum() == (normal < edges[int(first_decade.sum())]).sum()
    assert "score +inf (zero density): 3 normal, 2 anomalous (not drawn)" in _legend(ax)
    assert "threshold = 2e+04" in _legend(ax)


def test_roc_and_pr_mark_the_operating_point() -> None:
    from pipelines.evaluation.report import roc_pr_figure

    y, s = _data()
    threshold = 1.7
    ax_roc, ax_pr = roc_pr_figure(s, y, threshold).axes
    normal_flagged = sum(score > threshold for score, label in zip(s, y, strict=True) if not label)
    anomalies_flagged = sum(score > threshold for score, label in zip(s, y, strict=True) if label)
    fpr, tpr = normal_flagged / 900, anomalies_flagged / 101
    (point,) = [line for line in ax_roc.get_lines() if line.get_label().startswith("operating")]
    assert (point.get_xdata()[0], point.get_ydata()[0]) == pytest.approx((fpr, tpr))
    (point,) = [line for line in ax_pr.get_lines() if line.get_label().startswith("operating")]
    precision = anomalies_flagged / (anomalies_flagged + normal_flagged)
    assert (point.get_xdata()[0], point.get_ydata()[0]) == pytest.approx((tpr, precision))
    # a threshold that flags no normal record: FPR 0, drawn at the log axis' left edge
    ax_roc = roc_pr_figure(s, y, 100.0).axes[0]
    (point,) = [line for line in ax_roc.get_lines() if line.get_label().startswith("operating")]
    assert point.get_xdata()[0] == ax_roc.get_xlim()[0] == 1 / 900
    assert "(0: drawn at the axis edge)" in point.get_label()


def test_training_curve_gives_each_member_its_own_colour() -> None:
    from pipelines.evaluation.report import training_curve_figure

    history = [{"epoch": e, "train_nll": k + 5 / e, "val_nll": k + 5.5 / e, "member": k}
               for k in range(3) for e in range(1, 11)]
    ax = training_curve_figure(history).axes[0]
    colours: dict[int, set] = {}
    for line in ax.get_lines():
        member = int(line.get_label().rsplit("member ", 1)[1].rstrip(")"))
        colours.setdefault(member, set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values()), colours  # a member: one colour
    assert len({next(iter(c)) for c in colours.values()}) == 3  # members: distinct colours
    styles = {line.get_label().split(" NLL")[0]: line.get_linestyle() for line in ax.get_lines()
              if "NLL" in line.get_label()}
    assert styles == {"train": "-", "validation": "--"}


def test_top_contributions_are_ordered_by_how_often_a_column_is_the_top_one() -> None:
    """The issue's case: a column that is the top contributor of 23 records came fourth,
    behind columns that a few records of 1e5 nats put ahead by their mean."""
    from pipelines.evaluation.report import top_contributions_figure

    rng = np.random.default_rng(1)
    n = 30
    contributions = pd.DataFrame({
        "spiky": np.r_[[1e5, 2e5, 3e5], rng.uniform(0, 1, n - 3)],
        "wide": np.r_[[5e4] * 3, rng.uniform(0, 2, n - 3)],
        "steady": np.r_[[1.0] * 3, rng.uniform(20, 40, 23), [0.5] * 4],
        "sometimes": np.r_[[0.0] * 26, [60.0] * 4],
    })
    top = [contributions.columns[int(np.argmax(row))] for row in contributions.to_numpy()]
    expected = sorted(contributions.columns, key=lambda c: -top.count(c))
    assert expected == ["steady", "sometimes", "spiky", "wide"]
    assert list(contributions.mean().sort_values(ascending=False).index[:3]) == [
        "spiky", "wide", "steady"]  # the old order
    ax_top, ax_median = top_contributions_figure(contributions).axes
    assert [label.get_text() for label in ax_top.get_yticklabels()] == expected
    (bars,) = ax_top.containers
    assert [bar.get_width() for bar in bars] == [top.count(c) for c in expected]
    (bars,) = ax_median.containers
    np.testing.assert_allclose([bar.get_width() for bar in bars],
                               [np.median(contributions[c]) for c in expected])
