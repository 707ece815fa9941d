"""The ``flowad`` command line: train, score, evaluate, list models, run the benchmark."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer

if TYPE_CHECKING:
    from pipelines.detector import Detector
    from pipelines.tables import TableWriter

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

app = typer.Typer(help="Anomaly detection with exact normalizing-flow likelihoods.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

Model = Annotated[str, typer.Option("--model", help="Flow: realnvp or ffjord.")]
EXPLAINED_FLAGGED = 1000  # flagged records `flowad evaluate` explains for its plot
Objective = Annotated[str, typer.Option(
    help="likelihood, or flow_matching (ffjord only: 10-20x faster to train, lower likelihood).")]


@app.callback()
def main(
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0 = torch's default).")] = 0,
) -> None:
    """Anomaly detection with exact normalizing-flow likelihoods."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (schema mismatch, unreadable file, unknown model tag, a model that fails its
    check) exits with status 2 and a one-line message."""
    from bentoml.exceptions import NotFound

    try:
        yield
    except (ValueError, OSError, NotFound) as error:  # SchemaError is a ValueError
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file of (mostly) normal records.")],
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "flowad-detector",
    model: Model = "realnvp",
    target_fpr: Annotated[float, typer.Option(help="False-positive rate to calibrate.")] = 0.01,
    exclude: Annotated[list[str] | None, typer.Option(help="Column to ignore (repeat).")] = None,
    label: Annotated[str | None, typer.Option(help="Label column; anomalies are left out.")] = None,
    scaling: Annotated[str, typer.Option(help="standard, robust or quantile.")] = "standard",
    atom_share: Annotated[float, typer.Option(
        help="A continuous value held by this share of rows is dequantised as a point mass; "
        "0 turns it off.")] = 0.01,
    max_epochs: Annotated[int | None, typer.Option(help="Cap on training epochs.")] = None,
    objective: Objective = "likelihood",
    members: Annotated[int | None, typer.Option(
        help="Flows in an equal-weight mixture, each trained with its own seed "
        "(default: 2 for realnvp, 1 for ffjord).", min=1, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a detector on DATA and save it to the model store; prints the model tag."""
    from pipelines.detector import Detector
    from pipelines.labels import parse_labels
    from pipelines.store import save_detector
    from pipelines.tables import read_table

    with user_errors():
        frame = read_table(data)
        excluded = list(exclude or [])
        if label is not None:
            frame = frame[parse_labels(frame, label) == 0]
            excluded.append(label)
        train_options: dict[str, object] = {"objective": objective}
        if max_epochs:
            train_options["max_epochs"] = max_epochs
        detector = Detector(
            model, target_fpr=target_fpr, scaling=scaling, exclude=excluded, random_state=seed,
            atom_share=atom_share or None, train_options=train_options,
            flow_options={"members": members} if members else None,
        ).fit(frame)
    tag = save_detector(detector, name)
    metrics = detector.metrics_
    typer.echo(
        f"trained {model} ({metrics['members']} flow(s)) on {metrics['n_train']} rows: "
        f"validation NLL {metrics['val_nll']:.4f}, "
        f"threshold {detector.threshold_:.4f} at target FPR {target_fpr}",
        err=True,
    )
    typer.echo(tag)


@app.command()
def score(
    tag: Annotated[str, typer.Argument(help="Model tag (name or name:version).")],
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file to score.")],
    output: Annotated[Path, typer.Option(help="Output .csv or .parquet.")],
    chunk_rows: Annotated[int, typer.Option(help="Rows per chunk.")] = 50_000,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr [default: when stderr is a "
        "terminal].", show_default=False)] = None,
    explain: Annotated[bool, typer.Option(
        help="Add each row's largest column contributions to its score (nats, measured from a "
        "typical record): top1_column, top1_contribution, top2_column, ...; ~1-3 ms a row."
        )] = False,
    explain_top: Annotated[int, typer.Option(
        help="Contributions per row with --explain.", min=1, max=20)] = 3,
) -> None:
    """Score DATA in chunks; writes the input columns plus score, log_likelihood, p_value,
    is_anomaly (and contributions with --explain). OUTPUT appears only once every row is scored
    (a failed or interrupted run leaves it as it was)."""
    from pipelines.store import load_detector
    from pipelines.tables import TableWriter

    with user_errors():
        detector = load_detector(tag)
        with TableWriter(output) as writer:
            n_rows, n_anomalies = _score_chunks(detector, data, chunk_rows, writer, progress,
                                                explain_top if explain else 0)
    typer.echo(f"scored {n_rows} rows, {n_anomalies} flagged -> {output}")


def _score_chunks(detector: Detector, data: Path, chunk_rows: int, writer: TableWriter,
                  progress: bool | None, explain: int) -> tuple[int, int]:
    """Scores ``data`` chunk by chunk into ``writer``; returns (rows, anomalies).

    Arguments:
        detector: the loaded detector.
        data: the CSV or Parquet file.
        chunk_rows: rows per chunk.
        writer: where the input columns plus verdicts go.
        progress: show a progress bar on stderr; None: when stderr is a terminal.
        explain: largest contributions added per row (0: none).
    """
    from tqdm import tqdm

    from pipelines.explain import top_columns
    from pipelines.schema import SchemaError
    from pipelines.tables import at_file_row, count_rows, iter_table

    show = sys.stderr.isatty() if progress is None else progress
    n_rows = n_anomalies = 0
    with tqdm(total=count_rows(data), unit="rows", disable=not show, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for chunk in iter_table(data, chunk_rows):
            try:  # an index from 0 in the chunk, so the error's row is a position in it
                verdicts = detector.verdicts(chunk.reset_index(drop=True))
                if explain:
                    top = top_columns(detector.explain(chunk.reset_index(drop=True)), explain)
                    verdicts = pd.concat([verdicts, top], axis=1)
            except SchemaError as error:
                raise at_file_row(error, n_rows, data) from error
            verdicts.index = chunk.index
            writer.write(pd.concat([chunk, verdicts], axis=1))
            n_rows += len(chunk)
            n_anomalies += int(verdicts["is_anomaly"].sum())
            bar.update(len(chunk))
    return n_rows, n_anomalies


@app.command()
def evaluate(
    tag: Annotated[str, typer.Argument(help="Model tag.")],
    data: Annotated[Path, typer.Argument(help="Labelled CSV or Parquet file.")],
    label: Annotated[str, typer.Option(help="Label column (1 = anomaly).")],
    report_dir: Annotated[Path, typer.Option(help="Folder for metrics.json and plots.")],
) -> None:
    """Evaluate a saved model on labelled data: metrics.json and PNG plots (among them the
    columns that contributed most to the flagged records' scores)."""
    import numpy as np

    from pipelines.labels import parse_labels
    from pipelines.report import write_report
    from pipelines.store import load_detector
    from pipelines.tables import read_table

    with user_errors():
        detector = load_detector(tag)
        frame = read_table(data)
        y = parse_labels(frame, label)
        records = frame.drop(columns=[label])
        scores = detector.score_samples(records)
        # the most anomalous flagged records, a bounded number: explaining costs ~1-3 ms each
        flagged = np.argsort(-scores)[: min(int((scores > detector.threshold_).sum()),
                                            EXPLAINED_FLAGGED)]
        contributions = detector.explain(records.iloc[flagged])
    metrics = write_report(report_dir, y, scores, detector.threshold_, detector.history_,
                           contributions)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def models(
    name: Annotated[str | None, typer.Argument(help="Only this model name.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list instead of a table.")]
    = False,
) -> None:
    """List saved models: tag, production, created, kind, threshold, key metrics. Broken store
    entries (e.g. left by a killed save) are skipped with a warning naming their path."""
    from pipelines.registry import production_tag
    from pipelines.store import BrokenEntryWarning, list_detectors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BrokenEntryWarning)
        rows = list_detectors(name)
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    production = {production_tag(n) for n in {row["tag"].split(":")[0] for row in rows}}
    for row in rows:
        row["production"] = row["tag"] in production
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        _print_models(rows)


def _print_models(rows: list[dict[str, object]]) -> None:
    """The ``flowad models`` table."""
    from rich.console import Console
    from rich.table import Table

    table = Table("tag", "production", "created", "kind", "target FPR", "threshold", "val NLL",
                  "train rows")
    for row in rows:
        cells = [row[k] for k in (
            "created", "model_kind", "target_fpr", "threshold", "val_nll", "n_train")]
        table.add_row(str(row["tag"]), "yes" if row["production"] else "",
                      *(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells))
    Console().print(table)


@app.command()
def retrain(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file of fresh records.")],
    name: Annotated[str, typer.Option(help="Model name.")] = "flowad-detector",
    baseline: Annotated[str | None, typer.Option(help="Compare with this tag instead of "
                                                     "production.")] = None,
    label: Annotated[str | None, typer.Option(
        help="Label column: 1/true/yes/anomaly or non-zero = anomaly (enables ROC-AUC).")] = None,
    window_rows: Annotated[int | None, typer.Option(help="Use only the last N rows.")] = None,
    report: Annotated[Path, typer.Option(help="JSON decision report.")] = Path(
        "retrain-report.json"),
    nll_margin: Annotated[float, typer.Option(
        help="Refuse only a candidate shown to be worse than production by more than this many "
             "nats per record and encoded feature.")] = 0.05,
    nll_confidence: Annotated[float, typer.Option(
        help="One-sided confidence with which the NLL gap must be shown to exceed the margin.",
        min=0.5, max=0.9999)] = 0.99,
    nll_trim: Annotated[float, typer.Option(
        help="Share of paired NLL differences trimmed from each tail.", min=0.0, max=0.4)] = 0.1,
    max_production_fpr_ratio: Annotated[float, typer.Option(
        help="Refuse automatic promotion when production flags more than this x its target "
             "FPR of the new data.")] = 5.0,
    max_missing_rate_increase: Annotated[float, typer.Option(
        help="Largest allowed rise of a column's missing rate.")] = 0.2,
    auc_tolerance: Annotated[float, typer.Option(help="Allowed ROC-AUC drop.")] = 0.01,
) -> None:
    """Train a candidate on fresh DATA with production's configuration; promote it if it passes
    the gate. Exit status: 0 promoted, 3 rejected, other = failure."""
    from pipelines.lifecycle import GateRules
    from pipelines.lifecycle import retrain as run_retrain
    from pipelines.tables import read_table

    with user_errors():
        frame = read_table(data)
        if window_rows:
            frame = frame.tail(window_rows)
        rules = GateRules(nll_margin=nll_margin, nll_confidence=nll_confidence,
                          nll_trim=nll_trim, max_production_fpr_ratio=max_production_fpr_ratio,
                          max_missing_rate_increase=max_missing_rate_increase,
                          auc_tolerance=auc_tolerance)
        decision = run_retrain(frame, name, baseline=baseline, label=label, rules=rules)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(decision.to_dict(), indent=2, default=float))
    typer.echo(decision.summary())
    raise typer.Exit(0 if decision.promoted else 3)


@app.command()
def promote(tag: Annotated[str, typer.Argument(help="Model tag name:version.")]) -> None:
    """Make TAG the production model of its name (also how to roll back)."""
    from pipelines import registry

    with user_errors():
        pointer = registry.promote(tag, reason="manual")
    previous = pointer["history"][-1]["previous"]
    typer.echo(f"production {pointer['name']}: {pointer['tag']} (was {previous})")


@app.command()
def benchmark(
    data_dir: Annotated[Path, typer.Option(help="Folder of .npz files with X and y.")],
    output: Annotated[Path, typer.Option(help="Output folder for the CSV and markdown.")],
    model: Model = "realnvp",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    datasets: Annotated[str | None, typer.Option(help="Comma-separated dataset names.")] = None,
    objective: Objective = "likelihood",
    members: Annotated[int | None, typer.Option(
        help="Flows in an equal-weight mixture [default: the detector's default]; names the "
        "rows -mix{N} (-single for 1).", min=1, show_default=False)] = None,
) -> None:
    """Run the evaluation protocol on every dataset; CSV + markdown vs the ten baselines."""
    from pipelines.benchmark import run_benchmark

    csv_path, md_path = run_benchmark(
        data_dir, output, model=model, objective=objective, members=members,
        seeds=tuple(int(s) for s in seeds.split(",")),
        datasets=datasets.split(",") if datasets else None,
    )
    typer.echo(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    app()
