"""``flowad benchmark``: the evaluation protocols of :mod:`pipelines.evaluation.protocol` over a
data folder,
for the flowad detector or for the ten baselines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluation import protocol
from pipelines.evaluation.baselines import make_baseline, warm_up
from pipelines.model.detector import Detector

Log = Callable[[str], None]


class ProtocolDetector:
    """A :class:`Detector` as the protocol runs it, with a line of training facts (``info_``).

    The protocol hands over standardised arrays; the detector does its own encoding on top (an
    affine rescaling, so discrete columns are still recognised by their regular grid).
    """

    def __init__(self, model: str, seed: int, **options: Any) -> None:
        # The protocol calibrates on its own split: no training rows are spent on ours.
        self.detector = Detector(model, random_state=seed, calibration_fraction=0.0, **options)

    def fit(self, X: np.ndarray) -> ProtocolDetector:
        self.detector.fit(X)
        metrics = self.detector.metrics_
        best = metrics["best_epoch"]
        best = "/".join(map(str, best)) if isinstance(best, list) else best
        self.info_ = f"epochs={metrics['epochs']} best={best} val_nll={metrics['val_nll']:.4f}"
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        # A record of zero density (a value off its column's grid: a few `6_cardio` anomalies)
        # scores +inf; the protocol, like its reference script, counts any non-finite score as
        # a failed run, so it gets the largest finite float: the same order, the same verdicts.
        top = np.finfo(np.float64).max
        return np.nan_to_num(self.detector.decision_function(X), nan=np.nan, posinf=top,
                             neginf=-top)


def run_benchmark(
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    model: str = "realnvp",
    objective: str = "likelihood",
    members: int | None = None,
    seeds: tuple[int, ...] = protocol.SEEDS,
    datasets: list[str] | None = None,
    kind: str = "one-class",
    trim_share: float = 0.0,
    log: Log = print,
    **options: Any,
) -> tuple[Path, Path]:
    """Runs every ``*.npz`` in ``data_dir`` through the protocol; returns (csv, markdown) paths.

    The detector is named ``flowad-{model}``, with ``-fm`` appended when trained by flow matching.
    ``members`` overrides the default number of flows in the mixture and is named in the rows:
    ``-mix{members}``, or ``-single`` for one flow; a ``trim_share`` above 0 (trimmed-likelihood
    training, :class:`~pipelines.model.training.TrainConfig`) appends ``-trim{trim_share}``.
    Under the
    unsupervised protocol (``kind``) the files are named ``{detector}-unsupervised.csv`` / ``.md``
    and compared with the bundled unsupervised baselines.

    Rows already in the output CSV (same dataset, detector and seed) are kept and not rerun, so
    an interrupted benchmark resumes where it stopped.
    """
    detector_name = f"flowad-{model}" + ("-fm" if objective == "flow_matching" else "")
    if members is not None:
        detector_name += f"-mix{members}" if members > 1 else "-single"
        options = {**options, "flow_options": {**options.get("flow_options", {}),
                                                "members": members}}
    train_options = {**options.get("train_options", {}), "objective": objective}
    if trim_share > 0:
        detector_name += f"-trim{trim_share:g}"
        train_options["trim_share"] = trim_share
    options = {**options, "train_options": train_options}
    stem = detector_name + ("" if kind == "one-class" else f"-{kind}")
    return _run(data_dir, Path(output_dir), stem, [detector_name],
                lambda _: lambda seed: ProtocolDetector(model, seed, **options),
                seeds=seeds, datasets=datasets, kind=kind, log=log)


def run_baselines(
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    seeds: tuple[int, ...] = protocol.SEEDS,
    datasets: list[str] | None = None,
    detectors: tuple[str, ...] = protocol.BASELINE_DETECTORS,
    kind: str = "one-class",
    log: Log = print,
) -> tuple[Path, Path]:
    """Runs the ten baselines (:mod:`pipelines.evaluation.baselines`) through the protocol ``kind``;
    returns the paths of ``baselines-{kind}.csv`` and ``.md`` (resumable, as
    :func:`run_benchmark`)."""
    warm_up(detectors)
    return _run(data_dir, Path(output_dir), f"baselines-{kind}", list(detectors),
                lambda name: lambda seed: make_baseline(name, seed),
                seeds=seeds, datasets=datasets, kind=kind, log=log, baselines=True)


def _run(
    data_dir: str | Path,
    output_dir: Path,
    stem: str,
    detectors: list[str],
    factory: Callable[[str], Callable[[int], protocol.AnomalyDetector]],
    *,
    seeds: tuple[int, ...],
    datasets: list[str] | None,
    kind: str,
    log: Log,
    baselines: bool = False,
) -> tuple[Path, Path]:
    """Every dataset x detector x seed not yet in ``{stem}.csv``, then the markdown summary.

    Arguments:
        data_dir: folder of ``*.npz`` datasets.
        output_dir: where ``{stem}.csv`` and ``{stem}.md`` go.
        stem: the files' name.
        detectors: the names of the rows' detectors.
        factory: for a detector name, the ``make_detector(seed)`` of the protocol.
        seeds, datasets: the runs (``datasets`` None: every file).
        kind: the protocol.
        log: receives one line per finished run.
        baselines: the rows are the baselines (summarised alone, not against the bundled ones).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / f"{stem}.csv"
    rows = protocol.read_rows(csv_path) if csv_path.exists() else []
    done = {(r["dataset"], r["detector"], int(r["seed"])) for r in rows}
    paths = sorted(Path(data_dir).glob("*.npz"), key=lambda p: protocol.dataset_sort_key(p.stem))
    for path in paths:
        name = protocol.dataset_name(path)
        if datasets and name not in datasets:
            continue
        X, y = protocol.load_npz(path)
        for detector in detectors:
            todo = tuple(s for s in seeds if (name, detector, s) not in done)
            for row in protocol.run_protocol(X, y, factory(detector), seeds=todo, name=name,
                                             detector=detector, kind=kind):
                rows.append(row)
                protocol.write_rows(csv_path, rows)
                log(
                    f"{name:16s} seed={row['seed']} {detector} auc={row['roc_auc']:.4f} "
                    f"ap={row['ap']:.4f} fpr05={row['fpr_05']:.3f} fit={row['fit_s']:.1f}s "
                    f"{row['info']} {row['error']}"
                )
    md_path = output_dir / f"{stem}.md"
    summary = (protocol.summarize([], rows, kind=kind) if baselines
               else protocol.summarize(rows, kind=kind))
    md_path.write_text(summary)
    return csv_path, md_path
