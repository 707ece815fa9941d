"""Reading and writing CSV / Parquet tables, whole or in bounded-memory chunks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.schema import SchemaError

CHUNK_ROWS = 50_000


def table_format(path: str | Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")


def read_table(path: str | Path) -> pd.DataFrame:
    """Reads a whole CSV or Parquet file."""
    if table_format(path) == "csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)


def iter_table(
    source: str | Path | BinaryIO, chunk_rows: int = CHUNK_ROWS, *, fmt: str | None = None
) -> Iterator[pd.DataFrame]:
    """Yields consecutive chunks of at most ``chunk_rows`` rows; the index counts from 0 across
    chunks, so error messages name the row of the file.

    Arguments:
        source: a file path, or an open binary file (seekable for Parquet) with ``fmt``.
        chunk_rows: rows per chunk.
        fmt: ``"csv"`` or ``"parquet"``; by default from the path's extension.
    """
    fmt = fmt or table_format(source)
    if fmt == "csv":
        yield from pd.read_csv(source, chunksize=chunk_rows)
        return
    offset = 0
    for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows):
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        offset += len(frame)
        yield frame


def count_rows(path: str | Path) -> int | None:
    """Rows of a Parquet file from its footer; None for CSV (counting would read it twice)."""
    if table_format(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return None


def at_file_row(error: SchemaError, start: int, path: str | Path) -> SchemaError:
    """``error`` raised on a chunk that begins at row ``start`` of ``path``, re-worded to name
    the row of the file (0-based, header not counted; for CSV also the line number).

    Arguments:
        error: raised by checking a chunk whose index was reset to count from 0.
        start: the chunk's first row in the file.
        path: the file, named in the message.
    """
    located = error.in_file(start)
    csv = located.row is not None and table_format(path) == "csv"
    line = f" (line {located.row + 2} of the CSV)" if csv else ""
    return SchemaError(f"{path}: {located}{line}", column=located.column, row=located.row,
                       problem=located.problem)


class TableWriter:
    """Appends DataFrame chunks to a CSV or Parquet file (the schema of the first chunk).

    All or nothing: chunks go to a hidden temporary file beside the target, which replaces the
    target only when the ``with`` block ends without an error; on an error the temporary file
    is removed and the target is left as it was. (A process killed with SIGKILL can leave the
    hidden file, never a truncated target.)

    Arguments:
        path: the target ``.csv`` or ``.parquet`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = table_format(path)
        self.temp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._parquet: pq.ParquetWriter | None = None
        self._started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == "csv":
            frame.to_csv(self.temp_path, mode="a" if self._started else "w",
                         header=not self._started, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.temp_path, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        self._started = True

    def close(self) -> None:
        """Finishes the file and moves it onto the target."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._started:
            os.replace(self.temp_path, self.path)

    def discard(self) -> None:
        """Removes the temporary file; the target is untouched."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # KeyboardInterrupt too: never leave a partial table that looks complete
            self.discard()
