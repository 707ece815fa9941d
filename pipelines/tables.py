"""Reading and writing CSV / Parquet tables, whole or in bounded-memory chunks.

A source is one file, or a dataset read through ``pyarrow.dataset``: a directory of files (a
Spark or Hive output, with ``key=value`` partition folders whose keys become columns) or a
filesystem URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``; whatever pyarrow's filesystems
reach). Files whose names start with ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are skipped.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.processes import owner_is_gone, owner_tag
from pipelines.schema import SchemaError

CHUNK_ROWS = 50_000


class UnreadableTableError(ValueError):
    """A file that is not a table of the format it claims (what is wrong, and where)."""

SUFFIXES = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def is_dataset(source: str | Path) -> bool:
    """Whether ``source`` is read through ``pyarrow.dataset``: a directory or a URI."""
    return "://" in str(source) or Path(source).is_dir()


def _filesystem(source: str | Path) -> tuple[pafs.FileSystem, str]:
    if "://" in str(source):
        return pafs.FileSystem.from_uri(str(source))
    return pafs.LocalFileSystem(), str(Path(source).resolve())


def table_format(path: str | Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file extension; for a directory (or a URI without
    one), from its first data file's."""
    suffix = Path(str(path)).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if is_dataset(path):
        filesystem, root = _filesystem(path)
        listing = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        for info in sorted(listing, key=lambda info: info.path):
            name = Path(info.path).name
            suffix = Path(name).suffix.lower()
            if info.is_file and not name.startswith((".", "_")) and suffix in SUFFIXES:
                return SUFFIXES[suffix]
        raise ValueError(f"{path}: no .csv or .parquet files in it")
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")


def open_dataset(source: str | Path) -> ds.Dataset:
    """A directory or URI as a ``pyarrow.dataset`` (hive partitioning, Spark's layout)."""
    filesystem, root = _filesystem(source)
    return ds.dataset(root, filesystem=filesystem, format=table_format(source),
                      partitioning="hive")


def read_table(path: str | Path, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Reads a whole CSV or Parquet file, or a dataset (``text_columns``: as
    :func:`iter_chunks` takes them)."""
    if is_dataset(path):
        return open_dataset(path).to_table().to_pandas()
    if table_format(path) == "csv":  # the chunked reader's checks, in one chunk
        try:
            return next(_csv_frames(path, sys.maxsize, text_columns), pd.DataFrame())
        except UnreadableTableError as error:
            raise UnreadableTableError(f"{path}: {error}") from None
    return pd.read_parquet(path)


@dataclass
class TableChunk:
    """Consecutive rows of a source, and where they come from (for error messages).

    Arguments:
        frame: the rows; the index counts from 0 across the whole source.
        file: the file they were read from.
        start: the position of the first row in that file.
    """

    frame: pd.DataFrame
    file: str
    start: int


def iter_chunks(
    source: str | Path | BinaryIO, chunk_rows: int = CHUNK_ROWS, *, fmt: str | None = None,
    text_columns: Sequence[str] = (),
) -> Iterator[TableChunk]:
    """Yields consecutive chunks of at most ``chunk_rows`` rows, each with its file and its
    first row's position there; a dataset is read file by file.

    Arguments:
        source: a file path, a directory or URI (a dataset), or an open binary file (seekable
            for Parquet) with ``fmt``.
        chunk_rows: rows per chunk.
        fmt: ``"csv"`` or ``"parquet"``; by default from the path's extension.
        text_columns: columns a CSV file's values are read as text from (a model's categorical
            columns): read as numbers, a code ``02134`` would become the category ``2134``.
    """
    if not isinstance(source, str | Path):
        files: Iterator[tuple[str, Iterator[pd.DataFrame]]] = iter(
            [("upload", _file_frames(source, chunk_rows, fmt or "parquet", text_columns))])
    elif is_dataset(source):
        dataset = open_dataset(source)
        files = ((fragment.path, (batch.to_pandas() for batch in fragment.to_batches(
            schema=dataset.schema, batch_size=chunk_rows))) for fragment in dataset.get_fragments())
    else:
        files = iter([(str(source), _file_frames(source, chunk_rows,
                                                 fmt or table_format(source), text_columns))])
    offset = 0
    for file, frames in files:
        start = 0
        try:
            for frame in frames:
                frame.index = pd.RangeIndex(offset, offset + len(frame))
                yield TableChunk(frame, file, start)
                offset += len(frame)
                start += len(frame)
        except UnreadableTableError as error:
            if isinstance(source, str | Path):  # an upload is named by whoever reads it
                raise UnreadableTableError(f"{file}: {error}") from None
            raise


def _file_frames(source: str | Path | BinaryIO, chunk_rows: int, fmt: str,
                 text_columns: Sequence[str] = ()) -> Iterator[pd.DataFrame]:
    """The chunks of one CSV or Parquet file."""
    if fmt == "csv":
        yield from _csv_frames(source, chunk_rows, text_columns)
        return
    for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


def _csv_frames(source: str | Path | BinaryIO, chunk_rows: int,
                text_columns: Sequence[str] = ()) -> Iterator[pd.DataFrame]:
    """The chunks of a CSV file; what pandas reports as a tokenizer or codec error, or takes
    silently, is a ``ValueError`` saying what is wrong and on which line.

    Rows with more fields than the header are the silent case: when every row has one more,
    pandas makes the first column the index and shifts every value one column left.
    """
    try:
        rows = 0
        text = dict.fromkeys(text_columns, "string")  # names the file lacks are ignored
        for frame in pd.read_csv(source, chunksize=chunk_rows, dtype=text):
            # pandas numbers a chunk's rows on from the last one's unless it took an index
            if not frame.index.equals(pd.RangeIndex(rows, rows + len(frame))):
                raise UnreadableTableError(
                    f"{_longer_than_header(source)}: check the delimiter and quoting")
            rows += len(frame)
            yield frame
    except pd.errors.EmptyDataError:
        raise UnreadableTableError("empty file: no header row") from None
    except pd.errors.ParserError as error:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if found is None:
            raise UnreadableTableError(f"not a readable CSV file: {error}") from None
        header, line, fields = found.groups()
        raise UnreadableTableError(f"line {line} has {fields} fields, the header {header}: "
                                   "check the delimiter and quoting") from None
    except UnicodeDecodeError as error:
        byte = error.object[error.start : error.start + 1]
        raise UnreadableTableError(f"not UTF-8 text (byte {byte!r} cannot be decoded): save "
                                   "the file as UTF-8") from None


def _longer_than_header(source: str | Path | BinaryIO) -> str:
    """Where a CSV file first has a row with more fields than its header (an error path: the
    file is scanned again with the standard library's reader)."""
    if not isinstance(source, str | Path):
        if not source.seekable():
            return "rows have more fields than the header"
        source.seek(0)
        lines = io.TextIOWrapper(source, encoding="utf-8", newline="")
    else:
        lines = open(source, encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    with lines:
        rows = csv.reader(lines)
        header = len(next(rows))
        for row in rows:
            if len(row) > header:
                return (f"line {rows.line_num} has {len(row)} fields, the header {header}")
    return "rows have more fields than the header"


def iter_table(
    source: str | Path | BinaryIO, chunk_rows: int = CHUNK_ROWS, *, fmt: str | None = None,
    text_columns: Sequence[str] = (),
) -> Iterator[pd.DataFrame]:
    """Yields consecutive chunks of at most ``chunk_rows`` rows; the index counts from 0 across
    chunks, so error messages name the row of the file (:func:`iter_chunks` for datasets).

    Arguments:
        source, chunk_rows, fmt, text_columns: as :func:`iter_chunks` takes them.
    """
    for chunk in iter_chunks(source, chunk_rows, fmt=fmt, text_columns=text_columns):
        yield chunk.frame


def count_rows(path: str | Path) -> int | None:
    """Rows of a Parquet file or dataset from the footers; None for CSV (counting would read it
    twice)."""
    if table_format(path) != "parquet":
        return None
    if is_dataset(path):
        return open_dataset(path).count_rows()
    return pq.ParquetFile(path).metadata.num_rows


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
    is removed and the target is left as it was. A process killed with SIGKILL leaves its hidden
    file, never a truncated target; the next writer of the same target on this host removes it.

    Arguments:
        path: the target ``.csv`` or ``.parquet`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = table_format(path)
        if not self.path.parent.is_dir():  # else the error would name the hidden file
            raise FileNotFoundError(f"{self.path}: no such directory {str(self.path.parent)!r}")
        prefix = f".{self.path.name}."
        for stale in self.path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
            if owner_is_gone(stale.name, prefix):
                stale.unlink(missing_ok=True)
        self.temp_path = self.path.with_name(f"{prefix}{owner_tag()}-{uuid.uuid4().hex[:8]}.tmp")
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
