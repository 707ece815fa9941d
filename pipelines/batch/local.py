"""Scoring a table in this process, chunk by chunk (``flowad score``): the input columns plus
``score``, ``log_likelihood``, ``p_value``, ``is_anomaly``, and on request Benjamini-Hochberg
over the whole table (:mod:`pipelines.batch.fdr`) and each row's largest contributions.

Columns the model does not read (ids, labels, partition keys) are carried through as read,
unless ``strict``. A rejected record names the file and its row there (for a dataset, the file
of the dataset); the output is written all or nothing by the caller's
:class:`~pipelines.io.writer.TableWriter`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines.batch.fdr import UnflaggableWarning, bh_q_values, unflaggable_warning
from pipelines.errors import InputError, SchemaError
from pipelines.io.tables import at_file_row, count_rows, iter_chunks, table_columns
from pipelines.io.writer import TableWriter
from pipelines.model.detector import Detector
from pipelines.model.explain import top_columns


def output_columns(fdr: float | None, explain: int) -> list[str]:
    """The columns scoring adds to its input's.

    Arguments:
        fdr: the false-discovery rate, which adds ``q_value``; None: none.
        explain: contributions per row, which add ``top{i}_column`` / ``top{i}_contribution``.
    """
    return ["score", "log_likelihood", "p_value", "is_anomaly",
            *(["q_value"] if fdr is not None else []),
            *(f"top{i}_{part}" for i in range(1, explain + 1)
              for part in ("column", "contribution"))]


def check_output_names(data: str, added: list[str]) -> None:
    """Refuses input whose column names are among the ones scoring adds: the output would hold
    two columns of one name (a CSV reader renames the second, a Parquet writer refuses).

    Arguments:
        data: the file or dataset to score (only its header or footer is read).
        added: :func:`output_columns`.
    """
    columns = set(table_columns(data))
    clash = [name for name in added if name in columns]
    if clash:
        raise InputError(f"column(s) {clash} have the names of columns score adds to its "
                         "output; rename them in the input", file=data)


def verdict_chunks(detector: Detector, data: str, chunk_rows: int,
                   on_rows: Callable[[int], object], explain: int = 0, strict: bool = False
                   ) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(chunk, its verdicts) for each chunk of ``data``.

    Arguments:
        detector: the loaded detector.
        data: the CSV or Parquet file, or a dataset (a directory or URI).
        chunk_rows: rows per chunk.
        on_rows: called with each chunk's rows once it is scored (a progress bar).
        explain: largest contributions added per row (0: none).
        strict: refuse columns the model neither reads nor excludes (else they are carried).

    Raises:
        SchemaError: a rejected record, naming its file and its row there.
    """
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
        on_rows(len(chunk))
        yield chunk, verdicts


def score_file(detector: Detector, data: str, writer: TableWriter, *, chunk_rows: int,
               fdr: float | None = None, explain: int = 0, strict: bool = False,
               progress: bool | None = None) -> tuple[int, int]:
    """Scores ``data`` chunk by chunk into ``writer``; returns (rows, anomalies).

    With ``fdr``, a first pass keeps only every row's p-value, Benjamini-Hochberg runs on all
    of them (``scipy.stats.false_discovery_control``), and a second pass scores and writes each
    chunk again with ``is_anomaly = q_value <= fdr``. Scoring is deterministic, so the second
    pass's p-values must equal the first's; a file that changed in between is an error.

    Arguments:
        detector: the loaded detector.
        data: the CSV or Parquet file, or a dataset.
        writer: where the input columns plus verdicts go.
        chunk_rows: rows per chunk.
        fdr: the false-discovery rate of Benjamini-Hochberg; None: the per-record threshold.
        explain: largest contributions added per row (0: none).
        strict: refuse columns the model neither reads nor excludes.
        progress: show a progress bar on stderr; None: when stderr is a terminal.

    Raises:
        InputError: ``data`` changed between the two passes.

    Warns:
        UnflaggableWarning: with ``fdr``, when no row can be flagged (and why).
    """
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
                for _, verdicts in verdict_chunks(detector, data, chunk_rows, bar.update,
                                                  strict=strict))
            warning = unflaggable_warning(q_values, fdr,
                                          detector.describe()["calibration"]["n"])
            if warning is not None:
                warnings.warn(warning, UnflaggableWarning, stacklevel=2)
        for chunk, verdicts in verdict_chunks(detector, data, chunk_rows, bar.update, explain,
                                              strict):
            if fdr is not None and p_values is not None and q_values is not None:
                rows = slice(n_rows, n_rows + len(chunk))
                if not np.array_equal(verdicts["p_value"].to_numpy(), p_values[rows]):
                    raise InputError("changed while it was being scored", file=data)
                verdicts["q_value"] = q_values[rows]
                verdicts["is_anomaly"] = q_values[rows] <= fdr
            writer.write(pd.concat([chunk, verdicts], axis=1))
            n_rows += len(chunk)
            n_anomalies += int(verdicts["is_anomaly"].sum())
    if p_values is not None and n_rows != len(p_values):
        raise InputError("changed while it was being scored", file=data)
    return n_rows, n_anomalies
