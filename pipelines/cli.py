"""The ``flowad`` command line: train, score, evaluate, recalibrate, list models, retrain,
promote, run the benchmark.

Everything heavy (torch, scikit-learn, pandas, BentoML) is imported inside the commands, so
``flowad --help`` and argument errors answer at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.detector import Detector
    from pipelines.tables import TableWriter

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# Before torch loads its OpenMP runtime: threads that wait for work sleep instead of spinning.
# Spinning threads on cores another process is using made a training step 260x slower (2.5 ms
# on one thread, 650 ms on two with a busy neighbour; 3.4 ms on two with PASSIVE).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Plain help text: rich markup would swallow the "[default: ...]" of option help.
app = typer.Typer(help="Anomaly detection with exact normalizing-flow likelihoods.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)


class FlowKind(StrEnum):
    realnvp = "realnvp"
    ffjord = "ffjord"


class Scaling(StrEnum):
    standard = "standard"
    robust = "robust"
    quantile = "quantile"


class Engine(StrEnum):
    local = "local"
    spark = "spark"


class TrainObjective(StrEnum):
    likelihood = "likelihood"
    flow_matching = "flow_matching"


class BenchmarkProtocol(StrEnum):
    one_class = "one-class"
    unsupervised = "unsupervised"


EXPLAINED_FLAGGED = 1000  # flagged records `flowad evaluate` explains for its plot
Model = Annotated[FlowKind, typer.Option("--model", help="The flow.")]
Objective = Annotated[TrainObjective, typer.Option(
    help="flow_matching: ffjord only, 10-20x faster to train, lower likelihood.")]
TrimShare = Annotated[float, typer.Option(
    help="Trimmed likelihood: leave the worst-fitting share of each batch out of the loss "
    "(ramped up from 0), for training data that holds anomalies.", min=0.0, max=0.5)]


def _check_objective(model: FlowKind, objective: TrainObjective) -> None:
    """Flow matching trains an ODE's field: refused for RealNVP before any data is read."""
    if objective is TrainObjective.flow_matching and model is not FlowKind.ffjord:
        raise typer.BadParameter("flow_matching trains ffjord only", param_hint="'--objective'")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"flowad {version('flowad')}")
        raise typer.Exit()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's timeout, a pod's eviction, ``kill``) unwinds the command like an
    error: a half-written output or model is removed on the way out. Python's default action
    ends the process on the spot, leaving them behind."""
    typer.echo(f"error: terminated by {signal.Signals(signum).name}", err=True)
    raise SystemExit(128 + signum)


def _finished(signum: int, frame: object) -> None:
    """SIGTERM once the command is done: the process is exiting anyway, with its status."""


@app.callback()
def main(
    ctx: typer.Context,
    threads: Annotated[int, typer.Option(
        help="Torch CPU threads; 0 = torch's default, one per core. The default flows are small: "
        "one thread trains them as fast as two on an idle machine, and far faster on a busy "
        "one.")] = 1,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_version, is_eager=True)]
    = False,
) -> None:
    """Anomaly detection with exact normalizing-flow likelihoods."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        # Once the command has finished (a retrain promoted, its report written), a SIGTERM
        # during the interpreter's teardown must not turn its exit status into a failure,
        # which a scheduler would retry.
        # (A handler, not SIG_IGN, which the processes it starts would inherit.)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, _finished))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (schema mismatch, unreadable file, unknown or malformed model tag, a model
    that fails its check) exits with status 2 and a one-line message."""
    from bentoml.exceptions import BentoMLException

    try:
        yield
    except (ValueError, OSError, BentoMLException) as error:  # SchemaError is a ValueError
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


def _valid_name(name: str) -> bool:
    """Whether ``name`` is a model name BentoML stores as given (lower case letters, digits,
    ``_ - .``, starting with a letter or digit, at most 63 characters): checked before
    training, which a name refused at save time would waste."""
    from pipelines.registry import is_model_name

    return is_model_name(name) and name == name.lower()


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise typer.BadParameter(
            f"{name!r} is not a model name: lower case letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 63 characters", param_hint="'--name'")


@contextmanager
def rows_of(data: str, frame: pd.DataFrame) -> Iterator[None]:
    """A :class:`SchemaError` about a row of ``frame`` or of a subset of it (a sample of
    ``data`` whose index holds the table's row numbers) re-worded to name the row of ``data``,
    and its CSV line."""
    from pipelines.schema import SchemaError
    from pipelines.tables import at_file_row, is_dataset

    try:
        yield
    except SchemaError as error:
        if error.row is None or error.problem is None:
            raise
        # the label survives the subsets fit makes (a retrain's training rows), positions not
        table_row = int(error.label if error.label is not None else frame.index[error.row])
        unlocated = SchemaError(error.problem, column=error.column, row=0, problem=error.problem)
        if is_dataset(data):
            raise SchemaError(f"{data}: {unlocated.in_file(table_row)}", column=error.column,
                              row=table_row, problem=error.problem) from None
        raise at_file_row(unlocated, table_row, data) from None


@contextmanager
def shown_warnings() -> Iterator[None]:
    """A warning about the model being made (e.g. a threshold that can never flag) or the data
    read (a CSV's unfinished last line) as one ``warning: ...`` line on stderr, not Python's
    file-and-line format."""
    from pipelines.csvfiles import UnfinishedLineWarning
    from pipelines.detector import SmallCalibrationWarning

    shown = (SmallCalibrationWarning, UnfinishedLineWarning)
    with warnings.catch_warnings(record=True) as caught:
        for category in shown:
            warnings.simplefilter("always", category)
        yield
    for warning in caught:
        if issubclass(warning.category, shown):
            typer.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)


DATA_HELP = ("a CSV or Parquet file, or a dataset: a directory of them (Spark/Hive layout, "
             "key=value partition folders become columns) or a filesystem URI (s3://, gs://, "
             "hdfs://, ...)")
MaxRows = Annotated[int, typer.Option(
    help="Fit on a uniform sample of at most this many rows (reservoir sampling in one "
    "streaming pass; memory is bounded by it, not by the table).", min=1)]


def _training_sample(data: str, max_rows: int, seed: int, *, label: str | None = None,
                     window_rows: int | None = None) -> pd.DataFrame:
    """A uniform sample of at most ``max_rows`` rows of ``data``, streamed in chunks; says on
    stderr how many rows it kept of how many.

    Arguments:
        data: a file, directory or URI.
        max_rows: the sample size.
        seed: seeds the sample.
        label: a label column: rows it marks as anomalies are dropped before sampling.
        window_rows: sample only the last this many rows.
    """
    from pipelines.labels import parse_labels
    from pipelines.sampling import last_rows, sample_rows
    from pipelines.tables import iter_table

    chunks = iter_table(data)
    if window_rows:
        chunks = last_rows(chunks, window_rows)
    if label is not None:
        chunks = (chunk[parse_labels(chunk, label) == 0] for chunk in chunks)
    frame, seen = sample_rows(chunks, max_rows, seed)
    if len(frame) < seen:
        typer.echo(f"sampled {len(frame)} of {seen} rows uniformly (--max-rows {max_rows})",
                   err=True)
    return frame


@app.command()
def train(
    data: Annotated[str, typer.Argument(help=f"Records, (mostly) normal: {DATA_HELP}.")],
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "flowad-detector",
    model: Model = FlowKind.realnvp,
    target_fpr: Annotated[float, typer.Option(help="False-positive rate to calibrate.")] = 0.01,
    exclude: Annotated[list[str] | None, typer.Option(help="Column to ignore (repeat).")] = None,
    label: Annotated[str | None, typer.Option(
        help="Label column: rows labelled 1/true/yes/anomaly or non-zero are left out.")] = None,
    scaling: Annotated[Scaling, typer.Option(help="Scaling of continuous columns.")]
    = Scaling.standard,
    atom_share: Annotated[float, typer.Option(
        help="A continuous value held by this share of rows is dequantised as a point mass; "
        "0 turns it off.")] = 0.01,
    max_epochs: Annotated[int | None, typer.Option(help="Cap on training epochs.", min=1)] = None,
    objective: Objective = TrainObjective.likelihood,
    members: Annotated[int | None, typer.Option(
        help="Flows in an equal-weight mixture, each trained with its own seed "
        "[default: 2 for realnvp, 1 for ffjord].", min=1, show_default=False)] = None,
    trim_share: TrimShare = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_rows: MaxRows = 1_000_000,
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Data-parallel training in the processes torchrun started "
        "(torchrun --nproc_per_node N -m pipelines.cli train ... --distributed): gradients "
        "averaged by DistributedDataParallel, NCCL on GPUs, gloo on CPUs; rank 0 saves.")]
    = False,
) -> None:
    """Train a detector on DATA and save it to the model store; prints the model tag."""
    _check_objective(model, objective)
    _check_name(name)
    from pipelines.detector import Detector
    from pipelines.distributed import process_group
    from pipelines.store import save_detector

    with user_errors(), shown_warnings(), (process_group() if distributed else nullcontext()
                                           ) as parallel:
        frame = _training_sample(data, max_rows, seed, label=label)
        excluded = [*(exclude or []), *([label] if label is not None else [])]
        train_options: dict[str, object] = {"objective": objective.value}
        if max_epochs is not None:
            train_options["max_epochs"] = max_epochs
        if trim_share > 0:
            train_options["trim_share"] = trim_share
        detector = Detector(
            model.value, target_fpr=target_fpr, scaling=scaling.value, exclude=excluded,
            random_state=seed, atom_share=atom_share or None, train_options=train_options,
            flow_options={"members": members} if members else None,
            progress=sys.stderr.isatty(), n_threads=None,  # --threads has set torch's count
        )
        with rows_of(data, frame):
            detector.fit(frame, parallel=parallel)
        if parallel is not None and parallel.rank > 0:
            return  # the model is rank 0's to save: one run, one version
    with user_errors():  # a full disk, an unwritable store
        tag = save_detector(detector, name)
    metrics = detector.metrics_
    typer.echo(
        f"trained {model.value} ({metrics['members']} flow(s)) on {metrics['n_train']} rows: "
        f"validation NLL {metrics['val_nll']:.4f}, "
        f"threshold {detector.threshold_:.4f} at target FPR {target_fpr}",
        err=True,
    )
    grids = ", ".join(f"{c} (step {s:g})" for c, s in detector.describe()["grid_columns"].items())
    typer.echo(f"columns on a grid: {grids or 'none'}", err=True)
    typer.echo(tag)


@app.command()
def score(
    tag: Annotated[str, typer.Argument(help="Model tag (name or name:version).")],
    data: Annotated[str, typer.Argument(help=f"Records to score: {DATA_HELP}.")],
    output: Annotated[Path, typer.Option(help="Output .csv or .parquet.")],
    chunk_rows: Annotated[int, typer.Option(help="Rows per chunk.", min=1)] = 50_000,
    fdr: Annotated[float | None, typer.Option(
        help="Flag by Benjamini-Hochberg at this false-discovery rate over the whole file "
        "instead of the per-record threshold: is_anomaly is then 'rejected by BH at level FDR' "
        "and a q_value column (the BH-adjusted p-value) is added. Reads and scores the file "
        "twice (every row's p-value is needed before the first verdict; 16 bytes per row are "
        "kept).", show_default=False)] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr [default: when stderr is a "
        "terminal].", show_default=False)] = None,
    explain: Annotated[bool, typer.Option(
        help="Add each row's largest column contributions to its score (nats, measured from a "
        "typical record): top1_column, top1_contribution, top2_column, ...; ~1-3 ms a row."
        )] = False,
    explain_top: Annotated[int, typer.Option(
        help="Contributions per row with --explain.", min=1, max=20)] = 3,
    engine: Annotated[Engine, typer.Option(
        help="local: this process, chunk by chunk; spark: a Spark job on --master, OUTPUT a "
        "directory of part files (needs pyspark: the 'spark' extra).")] = Engine.local,
    master: Annotated[str, typer.Option(help="Spark master URL, with --engine spark.")]
    = "local[*]",
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse columns the model neither reads nor excludes, instead of "
        "carrying them to the output unchanged.")] = False,
    escape: Annotated[bool, typer.Option(
        "--escape-formulas/--no-escape-formulas", help="In CSV output, prefix text cells that "
        "begin with = + - @ tab or CR (and are not plain numbers) with ', so that a "
        "spreadsheet shows them instead of running them as formulas.")] = True,
) -> None:
    """Score DATA in chunks; writes the input columns plus score, log_likelihood, p_value,
    is_anomaly (and contributions with --explain). Columns the model does not read (ids,
    labels, partition keys) are carried through as read, unless --strict. OUTPUT appears only
    once every row is scored (a failed or interrupted run leaves it as it was)."""
    if fdr is not None and not 0 < fdr < 1:
        raise typer.BadParameter(f"{fdr} is not in (0, 1)", param_hint="'--fdr'")
    if engine is Engine.spark:
        if fdr is not None:
            raise typer.BadParameter("--fdr needs every row's p-value in one place: use the "
                                     "local engine", param_hint="'--fdr'")
        _score_on_spark(tag, data, str(output), master, explain_top if explain else 0,
                        strict=strict, escape_formulas=escape)
        return
    from pipelines.store import load_detector
    from pipelines.tables import TableWriter

    with user_errors(), shown_warnings():
        added = _output_columns(fdr, explain_top if explain else 0)
        detector = load_detector(tag)
        with TableWriter(output, escape_formulas=escape) as writer:
            _check_output_names(data, added)
            n_rows, n_anomalies = _score_file(detector, data, chunk_rows, writer, progress, fdr,
                                              explain_top if explain else 0, strict)
    rule = "" if fdr is None else f" by Benjamini-Hochberg at FDR {fdr:g}"
    typer.echo(f"scored {n_rows} rows, {n_anomalies} flagged{rule} -> {output}")


def _output_columns(fdr: float | None, explain: int) -> list[str]:
    """The columns ``score`` adds to its input's.

    Arguments:
        fdr: ``--fdr``, which adds ``q_value``.
        explain: contributions per row, which add ``top{i}_column`` / ``top{i}_contribution``.
    """
    return ["score", "log_likelihood", "p_value", "is_anomaly",
            *(["q_value"] if fdr is not None else []),
            *(f"top{i}_{part}" for i in range(1, explain + 1)
              for part in ("column", "contribution"))]


def _check_output_names(data: str, added: list[str]) -> None:
    """Refuses input whose column names are among the ones ``score`` adds: the output would
    hold two columns of one name (a CSV reader renames the second, a Parquet writer refuses).

    Arguments:
        data: the file or dataset to score (only its header or footer is read).
        added: :func:`_output_columns`.
    """
    from pipelines.tables import table_columns

    columns = set(table_columns(data))
    clash = [name for name in added if name in columns]
    if clash:
        raise ValueError(f"{data}: column(s) {clash} have the names of columns score adds to "
                         "its output; rename them in the input")


def _score_on_spark(tag: str, data: str, output: str, master: str, explain: int, *,
                    strict: bool, escape_formulas: bool) -> None:
    """``flowad score --engine spark``: a Spark job reads DATA, scores it on the executors
    (:func:`pipelines.spark.score`) and writes OUTPUT all or nothing.

    Arguments:
        tag: the model tag.
        data: a file, directory or URI Spark reads.
        output: the output directory (``.parquet`` or ``.csv``).
        master: the Spark master URL; a session already running in this process is used as is.
        explain: largest contributions added per row (0: none).
        strict: refuse columns the model neither reads nor excludes.
        escape_formulas: neutralise formulas in CSV output.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        typer.echo("error: --engine spark needs pyspark: pip install 'flowad[spark]'", err=True)
        raise typer.Exit(2) from error
    from pipelines import spark

    with user_errors():
        running = SparkSession.getActiveSession()
        session = running or spark.session(master, "flowad score")
        master = session.sparkContext.master
        try:
            scored = spark.score(spark.read(session, data), tag, explain_top=explain,
                                 strict=strict)
            spark.write_scored(scored, output, escape_formulas=escape_formulas)
        finally:
            if running is None:
                session.stop()
    typer.echo(f"scored {data} on Spark ({master}) -> {output}")


def _verdict_chunks(detector: Detector, data: str, chunk_rows: int, bar: Any,
                    explain: int = 0, strict: bool = False
                    ) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(chunk, its verdicts) for each chunk of ``data``; a schema error names the file and the
    row in it (for a dataset, the file of the dataset).

    Arguments:
        detector: the loaded detector.
        data: the CSV or Parquet file, or a dataset (a directory or URI).
        chunk_rows: rows per chunk.
        bar: a tqdm bar, advanced by each chunk's rows.
        explain: largest contributions added per row (0: none).
        strict: refuse columns the model neither reads nor excludes (else they are carried).
    """
    import pandas as pd

    from pipelines.explain import top_columns
    from pipelines.schema import SchemaError
    from pipelines.tables import at_file_row, iter_chunks

    for located in iter_chunks(data, chunk_rows, schema=detector.schema, strict=strict):
        chunk = located.frame
        # an index from 0 in the chunk, so the error's row is a position in it
        records = (chunk if strict else chunk[detector.input_columns]).reset_index(drop=True)
        try:
            verdicts = detector.verdicts(records)
            if explain:
                top = top_columns(detector.explain(records), explain)
                verdicts = pd.concat([verdicts, top], axis=1)
        except SchemaError as error:
            raise at_file_row(error, located.start, located.file) from error
        verdicts.index = chunk.index
        bar.update(len(chunk))
        yield chunk, verdicts


def _score_file(detector: Detector, data: str, chunk_rows: int, writer: TableWriter,
                progress: bool | None, fdr: float | None, explain: int,
                strict: bool = False) -> tuple[int, int]:
    """Scores ``data`` chunk by chunk into ``writer``; returns (rows, anomalies).

    With ``fdr``, a first pass keeps only every row's p-value, Benjamini-Hochberg runs on all
    of them (``scipy.stats.false_discovery_control``), and a second pass scores and writes each
    chunk again with ``is_anomaly = q_value <= fdr``. Scoring is deterministic, so the second
    pass's p-values must equal the first's; a file that changed in between is an error.

    Arguments:
        detector: the loaded detector.
        data: the CSV or Parquet file.
        chunk_rows: rows per chunk.
        writer: where the input columns plus verdicts go.
        progress: show a progress bar on stderr; None: when stderr is a terminal.
        fdr: the false-discovery rate of Benjamini-Hochberg; None: the per-record threshold.
        explain: largest contributions added per row (0: none).
        strict: refuse columns the model neither reads nor excludes.
    """
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from pipelines.fdr import bh_q_values, unflaggable_warning
    from pipelines.tables import count_rows

    show = sys.stderr.isatty() if progress is None else progress
    total = count_rows(data)
    passes = 1 if fdr is None else 2
    n_rows = n_anomalies = 0
    with tqdm(total=None if total is None else passes * total, unit="rows", disable=not show,
              file=sys.stderr, dynamic_ncols=True) as bar:
        p_values = q_values = None
        if fdr is not None:
            p_values, q_values = bh_q_values(
                verdicts["p_value"].to_numpy()
                for _, verdicts in _verdict_chunks(detector, data, chunk_rows, bar,
                                                   strict=strict))
            warning = unflaggable_warning(q_values, fdr, detector.calibrator_.n_)
            if warning is not None:
                typer.echo(f"warning: {warning}", err=True)
        for chunk, verdicts in _verdict_chunks(detector, data, chunk_rows, bar, explain,
                                               strict):
            if q_values is not None:
                rows = slice(n_rows, n_rows + len(chunk))
                if not np.array_equal(verdicts["p_value"].to_numpy(), p_values[rows]):
                    raise ValueError(f"{data} changed while it was being scored")
                verdicts["q_value"] = q_values[rows]
                verdicts["is_anomaly"] = q_values[rows] <= fdr
            writer.write(pd.concat([chunk, verdicts], axis=1))
            n_rows += len(chunk)
            n_anomalies += int(verdicts["is_anomaly"].sum())
    if p_values is not None and n_rows != len(p_values):
        raise ValueError(f"{data} changed while it was being scored")
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
        # not strict: the label is no model column; scoring refuses any other stray one
        frame = read_table(data, detector.schema, strict=False)
        y = parse_labels(frame, label)
        if len(np.unique(y)) < 2:  # the report would hold nulls with no word of why
            kind = "an anomaly" if y.all() else "normal"
            typer.echo(f"warning: every row of {data} is labelled {kind}: ROC-AUC and average "
                       "precision need both kinds (null in metrics.json)", err=True)
        records = frame.drop(columns=[label])
        scores = detector.decision_function(records)
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
    entries (e.g. left by a killed save) are skipped with a warning naming their path, and a
    model that can never flag a record (threshold inf) gets a warning saying why."""
    from pipelines.registry import DamagedPointerError, production_tag
    from pipelines.store import BrokenEntryWarning, list_detectors

    if name is not None and not _valid_name(name):
        raise typer.BadParameter(f"{name!r} is not a model name", param_hint="'NAME'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BrokenEntryWarning)
        rows = list_detectors(name)
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    production = set()
    listed = {row["tag"] for row in rows}
    for model_name in sorted({tag.split(":")[0] for tag in listed}):
        try:
            tag = production_tag(model_name)
        except DamagedPointerError as damaged:  # listing is how one finds what to promote
            typer.echo(f"warning: {damaged}", err=True)
            continue
        if tag is not None and tag not in listed:
            typer.echo(f"warning: the production model of {model_name} is {tag}, which is not "
                       f"in the store (deleted?); `flowad promote {model_name}:VERSION` "
                       "names another", err=True)
        production.add(tag)
    for row in rows:
        row["production"] = row["tag"] in production
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        _print_models(rows)
        for row in rows:
            if "warning" in row:
                typer.echo(f"warning: {row['tag']}: {row['warning']}", err=True)


def _print_models(rows: list[dict[str, object]]) -> None:
    """The ``flowad models`` table: on a terminal a table whose cells wrap rather than being
    cut; elsewhere (a file, a pipe, a cron job's log, where rich would cut the table to 80
    columns) tab-separated lines with a header, every value whole."""
    from rich.console import Console
    from rich.table import Table

    header = ("tag", "production", "created", "kind", "target FPR", "threshold", "val NLL",
              "train rows")
    lines = [[str(row["tag"]), "yes" if row["production"] else "", *(
        f"{c:.4f}" if isinstance(c, float) else str(c) for c in (row[k] for k in (
            "created", "model_kind", "target_fpr", "threshold", "val_nll", "n_train")))]
        for row in rows]
    if not sys.stdout.isatty():
        for line in (header, *lines):
            typer.echo("\t".join(line))
        return
    table = Table(*header)
    for column in table.columns:
        column.overflow = "fold"  # a tag must stay whole to be copied
    for line in lines:
        table.add_row(*line)
    Console().print(table)


@app.command()
def retrain(
    data: Annotated[str, typer.Argument(help=f"Fresh records: {DATA_HELP}.")],
    name: Annotated[str, typer.Option(help="Model name.")] = "flowad-detector",
    baseline: Annotated[str | None, typer.Option(help="Compare with this tag instead of "
                                                     "production.")] = None,
    label: Annotated[str | None, typer.Option(
        help="Label column: 1/true/yes/anomaly or non-zero = anomaly (enables ROC-AUC).")] = None,
    window_rows: Annotated[int | None, typer.Option(help="Use only the last N rows.",
                                                    min=1)] = None,
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
    max_rows: MaxRows = 1_000_000,
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Train the candidate data-parallel in the processes torchrun "
        "started, as `train --distributed`; rank 0 saves, compares, promotes and writes the "
        "report.")] = False,
) -> None:
    """Train a candidate on fresh DATA with production's configuration; promote it if it passes
    the gate. Exit status: 0 promoted, 3 rejected, other = failure."""
    from pipelines.detector import json_safe
    from pipelines.distributed import process_group
    from pipelines.lifecycle import GateRules
    from pipelines.lifecycle import retrain as run_retrain

    _check_name(name)
    if report.is_dir() or (report.parent.exists() and not os.access(report.parent, os.W_OK)):
        # checked first: a report that fails after the gate promoted would exit as a failure,
        # and a scheduler would retrain and promote again
        raise typer.BadParameter(f"{report} is a directory or cannot be written",
                                 param_hint="'--report'")
    with user_errors(), shown_warnings(), (process_group() if distributed else nullcontext()
                                           ) as parallel:
        frame = _training_sample(data, max_rows, seed=0, window_rows=window_rows)
        rules = GateRules(nll_margin=nll_margin, nll_confidence=nll_confidence,
                          nll_trim=nll_trim, max_production_fpr_ratio=max_production_fpr_ratio,
                          max_missing_rate_increase=max_missing_rate_increase,
                          auc_tolerance=auc_tolerance)
        with rows_of(data, frame):
            decision = run_retrain(frame, name, baseline=baseline, label=label, rules=rules,
                                   progress=sys.stderr.isatty(), parallel=parallel)
        if decision is None:
            return  # a rank other than 0: its part was the training
    report.parent.mkdir(parents=True, exist_ok=True)
    # strict JSON: a mean NLL is +inf when a held-out row has zero density under a model
    report.write_text(json.dumps(json_safe(decision.to_dict()), indent=2, allow_nan=False))
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
def recalibrate(
    tag: Annotated[str, typer.Argument(help="Model tag (name or name:version).")],
    target_fpr: Annotated[float, typer.Option(help="The new target false-positive rate.",
                                              show_default=False)],
    promote: Annotated[bool, typer.Option(
        "--promote", help="Make the new version the production model.")] = False,
) -> None:
    """Move TAG's threshold to a new target FPR, from its stored calibration scores (no
    retraining), and save the result as a new version of its name; prints the new tag. Not
    promoted unless --promote is given (or `flowad promote` later)."""
    if not 0 < target_fpr < 1:
        raise typer.BadParameter(f"{target_fpr} is not in (0, 1)", param_hint="'--target-fpr'")
    from pipelines import registry
    from pipelines.store import load_verified, save_detector

    with user_errors(), shown_warnings():
        detector = load_verified(tag, device="cpu")
        source, before, fpr_before = detector.tag_, detector.threshold_, detector.target_fpr
        detector.recalibrate(target_fpr)
        new_tag = save_detector(detector, source.split(":")[0])
        if promote:
            registry.promote(new_tag, reason=f"recalibrated {source} to target FPR "
                                             f"{target_fpr:g}")
    typer.echo(f"recalibrated {source}: threshold {before:.4f} at target FPR {fpr_before:g} "
               f"-> {detector.threshold_:.4f} at {target_fpr:g}"
               + (" (production)" if promote else ""), err=True)
    typer.echo(new_tag)


@app.command()
def benchmark(
    data_dir: Annotated[Path, typer.Option(help="Folder of .npz files with X and y.")],
    output: Annotated[Path, typer.Option(help="Output folder for the CSV and markdown.")],
    model: Model = FlowKind.realnvp,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    datasets: Annotated[str | None, typer.Option(help="Comma-separated dataset names.")] = None,
    objective: Objective = TrainObjective.likelihood,
    members: Annotated[int | None, typer.Option(
        help="Flows in an equal-weight mixture [default: the detector's default]; names the "
        "rows -mix{N} (-single for 1).", min=1, show_default=False)] = None,
    protocol: Annotated[BenchmarkProtocol, typer.Option(
        help="one-class: train on clean inliers; unsupervised: on a stratified 70% of all "
        "rows, anomalies unlabelled.")] = BenchmarkProtocol.one_class,
    trim_share: TrimShare = 0.0,
    baselines: Annotated[bool, typer.Option(
        "--baselines", help="Run the ten classical baselines (needs pyod) instead of flowad; "
        "writes baselines-{protocol}.csv and .md.")] = False,
) -> None:
    """Run the evaluation protocol on every dataset; CSV + markdown vs the ten baselines."""
    _check_objective(model, objective)
    from pipelines.benchmark import run_baselines, run_benchmark

    runs = {"seeds": tuple(int(s) for s in seeds.split(",")),
            "datasets": datasets.split(",") if datasets else None, "kind": protocol.value}
    if baselines:
        csv_path, md_path = run_baselines(data_dir, output, **runs)
    else:
        csv_path, md_path = run_benchmark(
            data_dir, output, model=model.value, objective=objective.value, members=members,
            trim_share=trim_share, **runs,
        )
    typer.echo(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    app()
