"""``flowad benchmark``: the evaluation protocol of :mod:`pipelines.protocol` over a data folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import protocol
from pipelines.detector import Detector


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
        return self.detector.decision_function(X)


def run_benchmark(
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    model: str = "realnvp",
    objective: str = "likelihood",
    members: int | None = None,
    seeds: tuple[int, ...] = protocol.SEEDS,
    datasets: list[str] | None = None,
    log: Callable[[str], None] = print,
    **options: Any,
) -> tuple[Path, Path]:
    """Runs every ``*.npz`` in ``data_dir`` through the protocol; returns (csv, markdown) paths.

    The detector is named ``flowad-{model}``, with ``-fm`` appended when trained by flow matching.
    ``members`` overrides the default number of flows in the mixture and is named in the rows:
    ``-mix{members}``, or ``-single`` for one flow.

    Rows already in the output CSV (same dataset, detector and seed) are kept and not rerun, so
    an interrupted benchmark resumes where it stopped.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    detector_name = f"flowad-{model}" + ("-fm" if objective == "flow_matching" else "")
    if members is not None:
        detector_name += f"-mix{members}" if members > 1 else "-single"
        options = {**options, "flow_options": {**options.get("flow_options", {}),
                                                "members": members}}
    options = {**options, "train_options": {**options.get("train_options", {}),
                                            "objective": objective}}
    csv_path = output_dir / f"{detector_name}.csv"
    rows = protocol.read_rows(csv_path) if csv_path.exists() else []
    done = {(r["dataset"], r["detector"], int(r["seed"])) for r in rows}
    paths = sorted(Path(data_dir).glob("*.npz"), key=lambda p: protocol.dataset_sort_key(p.stem))
    for path in paths:
        name = protocol.dataset_name(path)
        if datasets and name not in datasets:
            continue
        todo = tuple(s for s in seeds if (name, detector_name, s) not in done)
        if not todo:
            continue
        X, y = protocol.load_npz(path)
        for row in protocol.run_protocol(
            X, y, lambda seed: ProtocolDetector(model, seed, **options),
            seeds=todo, name=name, detector=detector_name,
        ):
            rows.append(row)
            protocol.write_rows(csv_path, rows)
            log(
                f"{name:16s} seed={row['seed']} auc={row['roc_auc']:.4f} ap={row['ap']:.4f} "
                f"fpr05={row['fpr_05']:.3f} fit={row['fit_s']:.1f}s {row['info']} {row['error']}"
            )
    md_path = output_dir / f"{detector_name}.md"
    md_path.write_text(protocol.summarize(rows))
    return csv_path, md_path
