"""Batch scoring on Apache Spark: :func:`score` adds the verdict columns to a Spark DataFrame.

The model travels to the executors as one file: the saved detector's folder
(:meth:`Detector.save <pipelines.model.detector.Detector.save>`'s files) packed into a tar archive
and shipped with ``SparkContext.addFile``. Each executor's Python worker unpacks and loads it
once (a module-level cache; Spark reuses its Python workers between tasks) and scores the
partition's Arrow batches with ``mapInPandas``. Executors need flowad installed (the same
version as the driver), as any PySpark UDF needs its code.

Columns the model does not read (ids, labels, partition keys) are carried to the output as
they are, unless ``strict``. A CSV is read as text, every cell as it is in the file, so that
the output holds them as read; in the model's numeric columns the missing-value words of
:mod:`pipelines.io.csvfiles` ("NA", "null", ...) are missing, as ``flowad score`` reads them.

A record the model rejects fails the job; the message names the column, the partition, the
row's position in it and the file the row was read from. :func:`write_scored` writes to a
temporary path beside the target and renames it into place only when the job succeeded, so a
failed job commits no output.

pyspark is optional (the ``spark`` extra): it is imported by the functions that use it.
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from pipelines.errors import InputError, SchemaError
from pipelines.io.csvfiles import NUMERIC_MISSING
from pipelines.io.formulas import FORMULA_STARTS, PLAIN_NUMBER, PREFIX
from pipelines.io.tables import SUFFIXES, check_columns, table_format
from pipelines.model.detector import Detector
from pipelines.model.explain import top_columns
from pipelines.model.fastpath import SMALL_BATCH_ROWS
from pipelines.registry.bentoml_store import get_model
from pipelines.registry.pointer import resolve
from pipelines.registry.verify import load_verified

if TYPE_CHECKING:
    from pyspark import TaskContext
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

SOURCE_COLUMN = "__flowad_source_file"  # each row's input_file_name(), for error messages
_loaded: dict[str, Detector] = {}  # archive name -> detector, per Python worker
_exported: dict[str, Path] = {}  # tag -> archive, on the driver


def export_detector(tag: str) -> Path:
    """The saved detector ``tag`` as one tar archive (created once per driver process).

    Arguments:
        tag: a model tag (``name``, ``name:version``).
    """

    full_tag = resolve(tag)
    if full_tag not in _exported:
        folder = get_model(full_tag).path
        # a version is immutable, so one archive per tag serves every later score() call
        archive = Path(tempfile.mkdtemp(prefix="flowad-spark-")) / (
            f"flowad-{full_tag.replace(':', '-')}.tar")
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname="detector")
        _exported[full_tag] = archive
    return _exported[full_tag]


def _detector(archive_name: str) -> Detector:
    """The detector shipped as ``archive_name``, loaded once per Python worker process."""
    if archive_name not in _loaded:
        from pyspark import SparkFiles

        # as many torch threads as the task has cores: more than one per core on a busy
        # executor made OpenMP's spin-waiting collapse throughput (docs/design.md, "Measuring")
        torch.set_num_threads(_task().cpus())

        target = Path(tempfile.mkdtemp(prefix="flowad-model-"))
        with tarfile.open(SparkFiles.get(archive_name)) as tar:
            tar.extractall(target, filter="data")
        _loaded[archive_name] = Detector.load(target / "detector", device="cpu")
    return _loaded[archive_name]


def output_schema(df: DataFrame, explain_top: int = 0) -> StructType:
    """The scored DataFrame's schema: ``df``'s columns, then the verdicts (and contributions).

    Arguments:
        df: the records.
        explain_top: contributions per row (0: none).
    """
    from pyspark.sql.types import BooleanType, DoubleType, StringType, StructField, StructType

    verdicts = [StructField("score", DoubleType()), StructField("log_likelihood", DoubleType()),
                StructField("p_value", DoubleType()), StructField("is_anomaly", BooleanType())]
    for k in range(1, explain_top + 1):
        verdicts += [StructField(f"top{k}_column", StringType()),
                     StructField(f"top{k}_contribution", DoubleType())]
    return StructType(df.schema.fields + verdicts)


def _in_partition(error: SchemaError, partition: int, start: int,
                  sources: pd.Series) -> SchemaError:
    """``error``, raised on a batch that begins at row ``start`` of Spark partition
    ``partition``, located there: the row's position in the partition and the file it was read
    from (``sources``: the batch's ``input_file_name()``, empty when not from a file; a
    partition can start inside a file, so the row is counted in the partition)."""
    source = sources.iloc[error.row] if error.row is not None else ""
    return error.in_file(start).located(partition=partition, source=source or None)


def _without_small_batches(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """The batches, each one of at most ``SMALL_BATCH_ROWS`` rows (a partition's last, mostly)
    joined to the one before it: the detector would score it with its NumPy fast path, within
    1e-5 nats of torch, and a row's score should not depend on where a batch ended.

    Arguments:
        batches: a partition's Arrow batches as frames.
    """
    held: pd.DataFrame | None = None
    for batch in batches:
        if held is not None and len(batch) <= SMALL_BATCH_ROWS:
            held = pd.concat([held, batch], ignore_index=True)
            continue
        if held is not None:
            yield held
        held = batch
    if held is not None:
        yield held


def _missing_words_as_missing(batch: pd.DataFrame, detector: Detector) -> pd.DataFrame:
    """``batch`` with the missing-value words ("NA", "null", ...) of the model's numeric
    columns given as text (a CSV read by Spark) made missing, as a CSV reader makes them."""
    for spec in detector.schema.columns:
        column = batch[spec.name]
        if spec.kind != "categorical" and pd.api.types.is_string_dtype(column.dtype):
            batch[spec.name] = column.mask(column.isin(NUMERIC_MISSING))
    return batch


def _task() -> TaskContext:
    """The Spark task this executor code runs in."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        raise RuntimeError("not in a Spark task")
    return context


def _scorer(archive_name: str, explain_top: int, strict: bool
            ) -> Callable[[Iterable[pd.DataFrame]], Iterable[pd.DataFrame]]:
    """The ``mapInPandas`` function: each batch of a partition with its verdicts."""

    def score_partition(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        detector = _detector(archive_name)
        start = 0
        for batch in _without_small_batches(batches):
            sources = batch.pop(SOURCE_COLUMN)
            batch = _missing_words_as_missing(batch, detector)
            records = batch if strict else batch[detector.input_columns]
            try:
                verdicts = detector.verdicts(records)
                if explain_top:
                    top = top_columns(detector.explain(records), explain_top)
                    verdicts = pd.concat([verdicts, top], axis=1)
            except SchemaError as error:
                raise _in_partition(error, _task().partitionId(), start, sources) from error
            start += len(batch)
            yield pd.concat([batch, verdicts], axis=1)

    return score_partition


def score(df: DataFrame, tag: str, *, explain_top: int = 0, strict: bool = False) -> DataFrame:
    """``df`` with ``score``, ``log_likelihood``, ``p_value`` and ``is_anomaly`` added (and,
    with ``explain_top``, each row's largest contributions: ``top1_column``,
    ``top1_contribution``, ...), scored by the saved detector ``tag`` on the executors.

    Lazy, as Spark transformations are: nothing is scored until the result is written or
    collected. The model is checked on the driver first (it must reproduce its reference
    scores, as before promotion or serving).

    Arguments:
        df: records with the model's input columns; others are carried to the output.
        tag: a model tag (``name`` for its production model, or ``name:version``).
        explain_top: contributions per row (0: none; ~1-3 ms a row).
        strict: refuse columns the model neither reads nor excludes.

    Raises:
        SchemaError: on the driver, before any job: a column of the model missing, a column
            named like an output column, or (``strict``) one the model does not know.
    """
    from pyspark.sql.functions import input_file_name

    detector = load_verified(tag)
    check_columns(df.columns, detector.schema, strict=strict)
    schema = output_schema(df, explain_top)
    added = schema.names[len(df.columns):]
    clash = [name for name in added if name in df.columns]
    if clash:
        raise SchemaError.of_columns(f"column(s) {clash} have the names of columns score adds "
                                     "to its output; rename them in the input", clash)
    archive = export_detector(tag)
    df.sparkSession.sparkContext.addFile(str(archive))
    # each row's file, for the error that names a bad row; the scorer takes the column out
    with_sources = df.withColumn(SOURCE_COLUMN, input_file_name())
    return with_sources.mapInPandas(_scorer(archive.name, explain_top, strict), schema)


def session(master: str = "local[*]", app_name: str = "flowad") -> SparkSession:
    """The active Spark session, or a new one on ``master``.

    A local master's Python workers run this interpreter (where flowad is installed), not
    whichever ``python3`` comes first on the PATH.

    Arguments:
        master: a Spark master URL (``local[*]``, ``spark://...``, ``yarn``, ``k8s://...``).
        app_name: the application's name in Spark's UI.
    """
    from pyspark.sql import SparkSession

    if master.startswith("local"):  # read by SparkContext when it starts
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return SparkSession.builder.master(master).appName(app_name).getOrCreate()


def read(spark: SparkSession, path: str) -> DataFrame:
    """A CSV or Parquet file or dataset (directory, URI) as a DataFrame.

    Arguments:
        spark: the session.
        path: what ``flowad score`` takes.
    """
    if table_format(path) == "csv":  # as text: cells as they are (the module's docstring)
        # a quote inside a quoted cell is doubled (RFC 4180, as pandas writes), not \"
        return spark.read.csv(path, header=True, inferSchema=False, escape='"')
    return spark.read.parquet(path)


def write_scored(scored: DataFrame, output: str, *, escape_formulas: bool = True) -> None:
    """Writes ``scored`` to the directory ``output`` (``.parquet`` or ``.csv`` by its name),
    all or nothing: into a hidden temporary directory beside it, renamed onto ``output`` (which
    it replaces) only when every partition was written. A failed job leaves ``output`` as it
    was and no temporary directory.

    Arguments:
        scored: what :func:`score` returned.
        output: a path or URI Hadoop's filesystems reach (``file:``, ``hdfs:``, ``s3a:``).
        escape_formulas: in CSV output, prefix text cells a spreadsheet would run as formulas
            with ``'`` (:mod:`pipelines.io.formulas`).

    Raises:
        SchemaError: a record the model rejected (the message names the column, the
            partition and the row in it).
    """
    fmt = SUFFIXES.get(Path(output).suffix.lower())
    if fmt is None:
        raise InputError("name the output .parquet or .csv", file=output)
    spark = scored.sparkSession
    jvm = spark.sparkContext._jvm
    if jvm is None:
        raise RuntimeError("the Spark session has no JVM")
    hadoop = jvm.org.apache.hadoop.fs
    target = hadoop.Path(output)
    filesystem = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    temp = hadoop.Path(target.getParent(), f".{target.getName()}.{uuid.uuid4().hex[:8]}.tmp")
    if fmt == "csv" and escape_formulas:
        scored = _formulas_escaped(scored)
    writer = scored.write.mode("errorifexists")
    try:
        if fmt == "csv":
            writer.option("header", True).option("escape", '"').csv(temp.toString())
        else:
            writer.parquet(temp.toString())
    except BaseException as error:  # SIGTERM too (the CLI turns it into SystemExit)
        filesystem.delete(temp, True)
        rejected = _schema_error(error) if isinstance(error, Exception) else None
        if rejected is not None:
            raise rejected from None  # Spark's Java and Python stack traces add nothing
        raise
    if filesystem.exists(target):
        filesystem.delete(target, True)
    if not filesystem.rename(temp, target):
        raise OSError(f"could not rename {temp} to {output}")


def _formulas_escaped(scored: DataFrame) -> DataFrame:
    """``scored`` with its text cells that a spreadsheet would run as formulas prefixed with
    ``'``, by :func:`pipelines.io.formulas.escape_formulas`'s rule, in Spark SQL."""
    from pyspark.sql import functions
    from pyspark.sql.types import StringType

    starts = "^[" + "".join(re.escape(start) for start in FORMULA_STARTS) + "]"
    columns = []
    for field in scored.schema.fields:
        column = scored[f"`{field.name}`"]
        if isinstance(field.dataType, StringType):
            formula = column.rlike(starts) & ~column.rlike(f"^{PLAIN_NUMBER}$")
            column = functions.when(formula, functions.concat(functions.lit(PREFIX), column)
                                    ).otherwise(column)
        columns.append(column.alias(field.name))
    return scored.select(*columns)


def _schema_error(error: Exception) -> SchemaError | None:
    """The executor's :class:`SchemaError` inside a failed Spark job's error, if that is why it
    failed."""
    found = re.search(r"pipelines\.errors\.SchemaError: (.*)", str(error))
    return None if found is None else SchemaError(found.group(1).strip())


def score_table(tag: str, data: str, output: str, master: str, *, explain_top: int = 0,
                strict: bool = False, escape_formulas: bool = True) -> str:
    """``flowad score --engine spark``: a Spark job reads ``data``, scores it on the executors
    (:func:`score`) and writes ``output`` all or nothing (:func:`write_scored`); returns the
    master it ran on.

    Arguments:
        tag: the model tag.
        data: a file, directory or URI Spark reads.
        output: the output directory (``.parquet`` or ``.csv``).
        master: the Spark master URL; a session already running in this process is used as is.
        explain_top: largest contributions added per row (0: none).
        strict: refuse columns the model neither reads nor excludes.
        escape_formulas: neutralise formulas in CSV output.

    Raises:
        InputError: pyspark is not installed.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise InputError("--engine spark needs pyspark: pip install 'flowad[spark]'") from error
    running = SparkSession.getActiveSession()
    spark = running or session(master, "flowad score")
    try:
        scored = score(read(spark, data), tag, explain_top=explain_top, strict=strict)
        write_scored(scored, output, escape_formulas=escape_formulas)
        return str(spark.sparkContext.master)
    finally:
        if running is None:
            spark.stop()
