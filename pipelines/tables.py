"""Reading and writing CSV / Parquet tables, whole or in bounded-memory chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


class TableWriter:
    """Appends DataFrame chunks to a CSV or Parquet file (the schema of the first chunk)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = table_format(path)
        self._parquet: pq.ParquetWriter | None = None
        self._started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == "csv":
            frame.to_csv(self.path, mode="a" if self._started else "w",
                         header=not self._started, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        self._started = True

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
