"""``flowad benchmark`` runs the protocol with our detector (pipelines/evaluation/benchmark.py)."""

from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluation import protocol
from pipelines.evaluation.benchmark import ProtocolDetector, run_benchmark


def test_a_mixture_benchmark_names_its_rows_and_records_each_members_fit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(300, 3)), rng.normal(4.0, 1.0, size=(20, 3))]
    y = np.r_[np.zeros(300, dtype=int), np.ones(20, dtype=int)]
    np.savez(tmp_path / "1_toy.npz", X=X, y=y)
    csv_path, md_path = run_benchmark(
        tmp_path, tmp_path / "out", members=2, seeds=(0,), log=lambda _: None,
        train_options={"max_epochs": 3},
    )
    (row,) = protocol.read_rows(csv_path)
    assert row["detector"] == "flowad-realnvp-mix2" and not row["error"]
    assert float(row["roc_auc"]) > 0.9  # anomalies 4 standard deviations away
    best, val_nll = row["info"].split()[1:]
    assert len(best.removeprefix("best=").split("/")) == 2  # one early-stopping epoch per member
    assert np.isfinite(float(val_nll.removeprefix("val_nll=")))
    assert "flowad-realnvp-mix2" in md_path.read_text()


def test_a_benchmark_that_asks_for_one_flow_names_its_rows_single(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(190, dtype=int), np.ones(10, dtype=int)]
    np.savez(tmp_path / "1_toy.npz", X=rng.normal(size=(200, 2)), y=y)
    csv_path, _ = run_benchmark(tmp_path, tmp_path / "out", members=1, seeds=(0,),
                                log=lambda _: None, train_options={"max_epochs": 2})
    (row,) = protocol.read_rows(csv_path)
    assert row["detector"] == "flowad-realnvp-single" and not row["error"]
    assert "/" not in row["info"].split()[1]  # one flow: one early-stopping epoch


def test_a_trimmed_benchmark_names_its_rows_and_trains_with_the_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(190, dtype=int), np.ones(10, dtype=int)]
    np.savez(tmp_path / "1_toy.npz", X=rng.normal(size=(200, 2)), y=y)
    seen = []
    original = ProtocolDetector.fit

    def fit(self: ProtocolDetector, X: np.ndarray) -> ProtocolDetector:
        seen.append(self.detector.train_options)
        return original(self, X)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProtocolDetector, "fit", fit)
        csv_path, _ = run_benchmark(tmp_path, tmp_path / "out", members=1, seeds=(0,),
                                    trim_share=0.1, log=lambda _: None,
                                    train_options={"max_epochs": 2})
    (row,) = protocol.read_rows(csv_path)
    assert csv_path.name == "flowad-realnvp-single-trim0.1.csv"
    assert row["detector"] == "flowad-realnvp-single-trim0.1" and not row["error"]
    assert seen == [{"max_epochs": 2, "objective": "likelihood", "trim_share": 0.1}]


def test_an_unsupervised_benchmark_has_files_of_its_own_beside_those_baselines(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(190, dtype=int), np.ones(10, dtype=int)]
    np.savez(tmp_path / "4_breastw.npz", X=rng.normal(size=(200, 2)), y=y)
    csv_path, md_path = run_benchmark(tmp_path, tmp_path / "out", members=1, seeds=(0,),
                                      kind="unsupervised", log=lambda _: None,
                                      train_options={"max_epochs": 2})
    (row,) = protocol.read_rows(csv_path)
    assert csv_path.name == "flowad-realnvp-single-unsupervised.csv" and not row["error"]
    md = md_path.read_text()
    assert "Protocol: unsupervised." in md
    # The bundled unsupervised baselines of the same (dataset, seed) sit beside it.
    kde = next(r for r in protocol.load_bundled_baselines("unsupervised")
               if (r["dataset"], r["detector"], r["seed"]) == ("4_breastw", "KDE", 0))
    assert f"| 4_breastw | {row['roc_auc']:.3f}" in md and f"{kde['roc_auc']:.3f} |" in md
