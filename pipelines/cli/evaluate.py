"""``flowad evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    tag: Annotated[str, typer.Argument(help="Model tag.")],
    data: Annotated[Path, typer.Argument(help="Labelled CSV or Parquet file.")],
    label: Annotated[str, typer.Option(help="Label column (1 = anomaly).")],
    report_dir: Annotated[Path, typer.Option(help="Folder for metrics.json and plots.")],
) -> None:
    """Evaluate a saved model on labelled data: metrics.json and PNG plots (among them the
    columns that contributed most to the flagged records' scores)."""
    import numpy as np

    from pipelines.evaluation.labelled import evaluate_detector
    from pipelines.io.labels import parse_labels
    from pipelines.io.tables import read_table
    from pipelines.registry.store import load_detector

    detector = load_detector(tag)
    # not strict: the label is no model column; scoring refuses any other stray one
    frame = read_table(data, detector.schema, strict=False)
    y = parse_labels(frame, label)
    if len(np.unique(y)) < 2:  # the report would hold nulls with no word of why
        kind = "an anomaly" if y.all() else "normal"
        typer.echo(f"warning: every row of {data} is labelled {kind}: ROC-AUC and average "
                   "precision need both kinds (null in metrics.json)", err=True)
    metrics = evaluate_detector(detector, frame.drop(columns=[label]), y, report_dir)
    typer.echo(json.dumps(metrics, indent=2))
