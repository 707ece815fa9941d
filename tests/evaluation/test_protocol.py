"""The benchmark protocol against the reference script and its published results."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import REPO
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KernelDensity

from pipelines.evaluation import protocol
from pipelines.evaluation.benchmark import run_baselines
from pipelines.evaluation.protocol import (
    COLUMNS,
    dataset_name,
    evaluate_scores,
    load_bundled_baselines,
    load_npz,
    read_rows,
    run_protocol,
    split,
    split_unsupervised,
    summarize,
    write_rows,
)

SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "baselines.py").is_file(),
                                  reason="../shared/data (reference script and datasets) absent")
METRICS = ("roc_auc", "ap", "fpr_01", "tpr_01", "fpr_05", "tpr_05")


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shared_baselines", SHARED / "baselines.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class KDE:
    """Same detector as the reference script's KDE: Scott bandwidth, score = -log density."""

    def fit(self, X: NDArray[np.float64]) -> KDE:
        self.model_ = KernelDensity(kernel="gaussian", bandwidth="scott").fit(X)
        self.info_ = f"bw={self.model_.bandwidth_:.4g}"
        return self

    def decision_function(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        return -self.model_.score_samples(X)


@needs_shared
@pytest.mark.parametrize("name", ["38_thyroid", "29_Pima", "4_breastw"])
def test_split_matches_reference_script(reference: ModuleType, name: str) -> None:
    _, y = load_npz(SHARED / "adbench" / f"{name}.npz")
    for seed in (0, 1, 2, 17):
        for ours, theirs in zip(split(y, seed), reference.split(y, seed), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_split_partitions_inliers_60_20_20() -> None:
    y = np.zeros(1003, int)
    y[np.random.default_rng(0).choice(1003, 57, replace=False)] = 1
    tr, cal, te, y_te = split(y, seed=3)
    n_in = 1003 - 57
    assert (len(tr), len(cal)) == (n_in * 6 // 10, n_in * 2 // 10)
    assert len(set(tr) | set(cal) | set(te)) == len(tr) + len(cal) + len(te) == 1003
    assert not y[tr].any() and not y[cal].any()
    np.testing.assert_array_equal(y[te], y_te)
    assert y_te.sum() == 57
    np.testing.assert_array_equal(split(y, 3)[0], tr)  # seeded
    assert not np.array_equal(split(y, 4)[0], tr)


@needs_shared
@pytest.mark.parametrize("name", ["38_thyroid", "29_Pima"])
def test_run_protocol_reproduces_published_kde_rows(name: str) -> None:
    X, y = load_npz(SHARED / "adbench" / f"{name}.npz")
    published = {r["seed"]: r for r in load_bundled_baselines()
                 if r["dataset"] == name and r["detector"] == "KDE"}
    rows = list(run_protocol(X, y, lambda seed: KDE(), name=name, detector="KDE"))
    assert [r["seed"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert list(row) == COLUMNS
        want = published[row["seed"]]
        for key in METRICS:
            assert abs(row[key] - want[key]) <= 1e-9, (name, row["seed"], key)
        assert (row["dataset"], row["info"], row["error"]) == (name, want["info"], "")
        assert row["fit_s"] > 0 and row["rows_per_s"] > 0


def test_evaluate_scores_against_hand_computed_values() -> None:
    cal = np.arange(1.0, 101.0)  # n = 100: k(0.05) = ceil(95.95) = 96, k(0.01) = ceil(99.99) = 100
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([95.0, 96.0, 97.0, 100.5, 50.0, 99.0, 101.0])
    got = evaluate_scores(y, s, cal)
    # thresholds 96 and 100; flags are strict (score > t)
    assert got["fpr_05"] == 2 / 4 and got["tpr_05"] == 2 / 3
    assert got["fpr_01"] == 1 / 4 and got["tpr_01"] == 1 / 3
    pairs = [(a, n) for a in s[y == 1] for n in s[y == 0]]
    assert got["roc_auc"] == pytest.approx(sum(a > n for a, n in pairs) / len(pairs))
    assert got["ap"] == pytest.approx(average_precision_score(y, s))
    with pytest.raises(FloatingPointError, match="1/100 non-finite calibration"):
        evaluate_scores(y, s, np.r_[cal[:-1], np.inf])


class Broken:
    def __init__(self, how: str) -> None:
        self.how = how

    def fit(self, X: NDArray[np.float64]) -> Broken:
        return self

    def decision_function(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.how == "raise":
            raise ValueError("boom\nsecond line")
        return np.full(len(X), np.nan)


@pytest.mark.parametrize(("how", "message"), [
    ("raise", "ValueError: boom second line"),
    ("nan", "FloatingPointError: 60/60 non-finite calibration scores"),
])
def test_failed_runs_are_recorded_not_raised(how: str, message: str) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 3)), np.r_[np.zeros(300, int), np.ones(100, int)]
    rows = list(run_protocol(X, y, lambda seed: Broken(how), seeds=(0, 1), name="toy"))
    assert len(rows) == 2
    for row in rows:
        assert row["error"] == message
        assert all(math.isnan(row[k]) for k in METRICS)
        assert row["fit_s"] >= 0  # measured before the failure


def _row(dataset: str, detector: str, seed: int, auc: float) -> dict:
    return {"dataset": dataset, "detector": detector, "seed": seed, "roc_auc": auc, "ap": auc,
            "fpr_01": 0.01, "tpr_01": 0.5, "fpr_05": 0.05, "tpr_05": 0.7, "fit_s": 1.0,
            "rows_per_s": 100.0, "info": "", "error": "" if auc == auc else "failed"}


def test_summarize_ranks_ties_and_failures_by_hand() -> None:
    nan = math.nan
    seed_means = {  # dataset -> detector -> value per seed (0, 1)
        "1_a": {"flowA": (0.9, 0.9), "flowB": (0.7, 0.9), "KNN": (0.8, 1.0), "KDE": (0.95, nan)},
        "2_b": {"flowA": (0.7, 0.7), "flowB": (nan, nan), "KNN": (0.6, 0.6), "KDE": (0.8, 0.8)},
    }
    rows, base = [], []
    for ds, by_det in seed_means.items():
        for det, values in by_det.items():
            for seed, v in enumerate(values):
                (rows if det.startswith("flow") else base).append(_row(ds, det, seed, v))
    # Baseline rows outside our (dataset, seed) pairs must be ignored.
    base += [_row("3_c", "KNN", 0, 0.1), _row("1_a", "KNN", 2, 0.0)]
    md = summarize(rows, base)
    # 1_a means: flowA .9, flowB .8, KNN .9, KDE NaN -> ranks 1.5, 3, 1.5, 4
    # 2_b means: flowA .7, flowB NaN, KNN .6, KDE .8 -> ranks 2, 4, 3, 1
    assert "| **mean rank** (1 = best) | 1.75 | 3.50 | 2.25 | 2.50 |" in md
    assert "| 1_a | **0.900** | 0.800 | **0.900** | NaN |" in md
    assert "| **mean over datasets** | 0.800 | 0.800 (1/2) | 0.750 | 0.800 (1/2) |" in md
    assert "3_c" not in md
    assert "| dataset | flowA | flowB | KNN | KDE |" in md
    with pytest.raises(ValueError, match="clash"):
        summarize([_row("1_a", "KDE", 0, 0.5)], base)


def test_summarize_bundled_rows_under_our_name() -> None:
    """Our detector scoring exactly like KDE must tie with KDE everywhere."""
    bundled = load_bundled_baselines()
    ours = [{**r, "detector": "flowad"} for r in bundled if r["detector"] == "KDE"]
    md = summarize(ours, bundled)
    for ds in {r["dataset"] for r in bundled}:
        assert f"| {ds} |" in md
    rank = next(line for line in md.splitlines() if line.startswith("| **mean rank**"))
    cells = rank.strip("|").split("|")[1:]
    assert len(cells) == 11 and cells[0] == cells[-1]  # flowad first, KDE last
    assert "## Conformal" in md and "## Cost" in md and "| flowad | 0.0051 |" in md


@needs_shared
def test_summarize_baselines_alone_reproduces_reference_tables() -> None:
    md_ref = (SHARED / "baselines.md").read_text().splitlines()
    ours = summarize([], load_bundled_baselines()).splitlines()
    for title in ("## Mean ROC-AUC per dataset", "## Mean average precision per dataset"):
        start = next(i for i, line in enumerate(md_ref) if line.startswith(title)) + 2
        table = md_ref[start:start + 18]  # header, rule, 14 datasets, mean, mean rank
        assert table[-1].startswith("| **mean rank**")
        for line in table:
            assert line in ours, line


@needs_shared
def test_bundled_csv_equals_shared() -> None:
    bundled = Path(protocol.__file__).parent / "data" / "baselines.csv"
    assert bundled.read_bytes() == (SHARED / "baselines.csv").read_bytes()


def test_bundled_baselines_and_csv_round_trip(tmp_path: Path) -> None:
    rows = load_bundled_baselines()
    assert len(rows) == 14 * 12 * 3
    assert {r["detector"] for r in rows} >= set(protocol.BASELINE_DETECTORS)
    write_rows(tmp_path / "rows.csv", rows)
    back = read_rows(tmp_path / "rows.csv")
    for a, b in zip(rows, back, strict=True):
        assert a.keys() == b.keys()
        for k in COLUMNS:
            assert a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and
                                    math.isnan(b[k])), k


def test_load_npz_and_dataset_name(tmp_path: Path) -> None:
    path = tmp_path / "7_toy.npz"
    np.savez(path, X=np.arange(6, dtype=np.uint8).reshape(3, 2), y=np.array([[0], [2], [0]]))
    X, y = load_npz(path)
    assert X.dtype == np.float64 and X.shape == (3, 2)
    assert y.tolist() == [0, 1, 0]
    assert dataset_name(path) == "7_toy"


# ----------------------------------------------------------------------------- unsupervised
def test_unsupervised_split_is_stratified_disjoint_complete_and_seeded() -> None:
    y = np.zeros(1003, int)
    y[np.random.default_rng(0).choice(1003, 57, replace=False)] = 1
    fit, cal, test, y_test = split_unsupervised(y, seed=3)
    n_train = 1003 - len(test)
    assert len(test) == math.ceil(0.3 * 1003)  # scikit-learn rounds the test size up
    assert len(cal) == (2 * n_train) // 10 and len(fit) == n_train - len(cal)
    everything = np.concatenate([fit, cal, test])
    assert len(np.unique(everything)) == len(everything) == 1003  # disjoint, covers all rows
    np.testing.assert_array_equal(y[test], y_test)
    # Stratified: the test share of anomalies is the overall one, to a row.
    assert abs(y_test.sum() - 0.3 * 57) <= 1
    assert y[fit].sum() + y[cal].sum() == 57 - y_test.sum()  # training rows keep anomalies
    # The train/test split is scikit-learn's stratified split, as documented.
    _, want_test = train_test_split(np.arange(1003), test_size=0.3, stratify=y, random_state=3)
    np.testing.assert_array_equal(test, want_test)
    for ours, again in zip((fit, cal, test, y_test), split_unsupervised(y, 3), strict=True):
        np.testing.assert_array_equal(ours, again)  # deterministic
    assert not np.array_equal(split_unsupervised(y, 4)[0], fit)


def test_unsupervised_protocol_fits_on_contaminated_rows_and_scales_on_them() -> None:
    """The detector sees the fitted rows, anomalies included, standardised by their own
    mean and deviation; the calibration slice and test rows are scored."""
    rng = np.random.default_rng(1)
    X = np.r_[rng.normal(2.0, 3.0, size=(450, 2)), rng.normal(30.0, 1.0, size=(50, 2))]
    y = np.r_[np.zeros(450, int), np.ones(50, int)]
    seen: list[NDArray[np.float64]] = []

    class Recorder(KDE):
        def fit(self, X: NDArray[np.float64]) -> Recorder:
            seen.append(X)
            return super().fit(X)

        def decision_function(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
            seen.append(X)
            return super().decision_function(X)

    (row,) = run_protocol(X, y, lambda seed: Recorder(), seeds=(0,), kind="unsupervised")
    fit, cal, test, _ = split_unsupervised(y, 0)
    Xfit, Xcal, Xtest = seen
    assert (len(Xcal), len(Xtest)) == (len(cal), len(test))
    assert len(Xfit) == len(fit) and X[fit, 0].max() > 20  # contaminated
    np.testing.assert_allclose(Xfit.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Xfit.std(axis=0), 1.0)
    assert row["roc_auc"] > 0.9 and not row["error"]
    with pytest.raises(ValueError, match="unknown protocol"):
        next(run_protocol(X, y, lambda seed: KDE(), kind="semi"))


@pytest.mark.parametrize("kind", ["one-class", "unsupervised"])
def test_baselines_on_a_tiny_dataset_give_every_column(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("pyod")
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(30, 3))  # scattered anomalies: clustered ones mask each other
    X = np.r_[rng.normal(size=(270, 3)),
              6.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)]
    np.savez(tmp_path / "1_toy.npz", X=X, y=np.r_[np.zeros(270, int), np.ones(30, int)])
    csv_path, md_path = run_baselines(tmp_path, tmp_path / "out", seeds=(0, 1), kind=kind,
                                      log=lambda _: None)
    assert csv_path.name == f"baselines-{kind}.csv"
    rows = read_rows(csv_path)
    assert [(r["detector"], r["seed"]) for r in rows] == [
        (d, s) for d in protocol.BASELINE_DETECTORS for s in (0, 1)]
    for row in rows:
        assert list(row) == COLUMNS and not row["error"], row
        assert all(np.isfinite(row[k]) for k in METRICS) and row["roc_auc"] > 0.9, row
    md = md_path.read_text()
    assert f"Protocol: {kind}." in md
    assert "| dataset | " + " | ".join(protocol.BASELINE_DETECTORS) + " |" in md


@needs_shared
def test_project_baselines_reproduce_the_reference_one_class_rows(tmp_path: Path) -> None:
    """The baselines as the project builds them, run by its protocol code, give the reference
    script's published one-class metrics: the unsupervised table comes from the same code."""
    pytest.importorskip("pyod")
    name = "38_thyroid"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / f"{name}.npz").symlink_to(SHARED / "adbench" / f"{name}.npz")
    csv_path, _ = run_baselines(tmp_path / "data", tmp_path, seeds=(0,), log=lambda _: None)
    published = {r["detector"]: r for r in load_bundled_baselines()
                 if r["dataset"] == name and r["seed"] == 0}
    for row in read_rows(csv_path):
        want = published[row["detector"]]
        for key in METRICS:
            assert row[key] == pytest.approx(want[key], abs=1e-9), (row["detector"], key)


def test_bundled_unsupervised_baselines_are_the_committed_table() -> None:
    rows = load_bundled_baselines("unsupervised")
    assert {r["detector"] for r in rows} == set(protocol.BASELINE_DETECTORS)
    committed = REPO / "benchmarks" / "results"
    bundled = Path(protocol.__file__).parent / "data" / "baselines-unsupervised.csv"
    assert bundled.read_bytes() == (committed / "baselines-unsupervised.csv").read_bytes()
