"""Reading CSV / Parquet tables, whole or in bounded-memory chunks (writing:
:mod:`pipelines.io.writer`).

A source is one file, or a dataset read through ``pyarrow.dataset``: a directory of files (a
Spark or Hive output, with ``key=value`` partition folders whose keys become columns) or a
filesystem URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``; whatever pyarrow's filesystems
reach). Files whose names start with ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are skipped.
Each file is opened, its header (:mod:`pipelines.io.csvfiles`) or footer
(:mod:`pipelines.io.parquetfiles`) read within the :class:`~pipelines.io.limits.ReadLimits` and
checked against the model's schema, before any of its rows is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import InputError, SchemaError, UnreadableTableError, shown_names
from pipelines.io.csvfiles import csv_frames, read_header
from pipelines.io.limits import ReadLimits
from pipelines.io.parquetfiles import ParquetTable
from pipelines.tabular.schema import Schema

CHUNK_ROWS = 50_000
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
        raise InputError("no .csv or .parquet files in it", file=str(path))
    raise InputError(f"unsupported file type {suffix!r}; use .csv or .parquet", file=str(path))


def open_dataset(source: str | Path) -> ds.Dataset:
    """A directory or URI as a ``pyarrow.dataset`` (hive partitioning, Spark's layout)."""
    filesystem, root = _filesystem(source)
    return ds.dataset(root, filesystem=filesystem, format=table_format(source),
                      partitioning="hive")


def read_table(path: str | Path, schema: Schema | None = None, *, strict: bool = True,
               limits: ReadLimits | None = None) -> pd.DataFrame:
    """Reads a whole CSV or Parquet file, or a dataset (the arguments: as :func:`iter_chunks`
    takes them)."""
    chunks = list(iter_chunks(path, schema=schema, strict=strict, limits=limits))
    if not chunks:
        return pd.DataFrame(columns=table_columns(path, limits))
    return pd.concat([chunk.frame for chunk in chunks]) if len(chunks) > 1 else chunks[0].frame


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
    schema: Schema | None = None, strict: bool = True, limits: ReadLimits | None = None,
) -> Iterator[TableChunk]:
    """Yields consecutive chunks of at most ``chunk_rows`` rows, each with its file and its
    first row's position there; a dataset is read file by file, each file's header checked
    before its rows are read.

    Arguments:
        source: a file path, a directory or URI (a dataset), or an open binary file (seekable)
            with ``fmt``.
        chunk_rows: rows per chunk (fewer for a wide table: ``limits.max_chunk_cells``).
        fmt: ``"csv"`` or ``"parquet"``; by default from the path's extension.
        schema: the model the rows are for: its columns must all be there (and, if
            ``strict``, no others but its excluded ones), checked from the header or footer
            before any row is read, and it says which columns of a CSV are text
            (:mod:`pipelines.io.csvfiles`); None: any columns, kinds decided from the values.
        strict: refuse columns the schema neither reads nor excludes.
        limits: what a read may decode (:class:`~pipelines.io.limits.ReadLimits`); by default
            from the environment.
    """
    limits = limits or ReadLimits.from_env()
    offset = 0
    for file, open_file in _files(source, fmt, limits):
        start = 0
        with _named(file, upload=not isinstance(source, str | Path)), open_file() as table:
            if schema is not None:
                check_columns(table.columns, schema, strict=strict)
            for frame in table.frames(chunk_rows, schema):
                frame.index = pd.RangeIndex(offset, offset + len(frame))
                yield TableChunk(frame, file, start)
                offset += len(frame)
                start += len(frame)


@contextmanager
def _named(file: str, *, upload: bool) -> Iterator[None]:
    """A reading error located in the file it is about (an upload is named by whoever reads
    it)."""
    try:
        yield
    except InputError as error:
        if upload or error.file is not None:
            raise
        raise error.located(file=file) from None


def _files(source: str | Path | BinaryIO, fmt: str | None, limits: ReadLimits
           ) -> Iterator[tuple[str, Callable[[], TableFile]]]:
    """Each file of ``source`` (one, or a dataset's), named, and how to open it."""
    if not isinstance(source, str | Path):
        yield "upload", lambda: TableFile(source, fmt or "parquet", limits)
    elif is_dataset(source):
        dataset = open_dataset(source)
        local = isinstance(dataset.filesystem, pafs.LocalFileSystem)
        for fragment in dataset.get_fragments():
            keys = ds.get_partition_keys(fragment.partition_expression)

            def open_fragment(path: str = fragment.path, keys: dict = keys) -> TableFile:
                opened = Path(path) if local else dataset.filesystem.open_input_file(path)
                return TableFile(opened, dataset.format.default_extname, limits, keys)

            yield fragment.path, open_fragment
    else:
        yield str(source), lambda: TableFile(Path(source), fmt or table_format(source), limits)


def check_columns(columns: Sequence[str], schema: Schema, *, strict: bool = True) -> None:
    """Refuses a header that lacks a column of ``schema`` or, if ``strict``, holds one the
    schema neither reads nor excludes; in the words of :meth:`Schema.check`.

    Arguments:
        columns: the table's column names.
        schema: the model's schema.
        strict: refuse columns the model does not know.
    """
    present = set(columns)
    missing = [name for name in schema.names if name not in present]
    if missing:
        raise SchemaError.of_columns(f"missing column(s): {shown_names(missing)}", missing)
    known = {*schema.names, *schema.exclude}
    unexpected = [name for name in columns if name not in known]
    if strict and unexpected:
        raise SchemaError.of_columns(
            f"unexpected column(s) not in the schema: {shown_names(unexpected)}", unexpected)


def table_columns(source: str | Path, limits: ReadLimits | None = None) -> list[str]:
    """The column names of a file (from its header or footer alone) or of a dataset's first
    file, partition keys included."""
    for file, open_file in _files(source, None, limits or ReadLimits.from_env()):
        with _named(file, upload=False), open_file() as table:
            return table.columns
    return []


class TableFile:
    """One CSV or Parquet file, opened: its columns (read from its header or footer, within
    the limits) and its rows in chunks.

    Arguments:
        source: a path (a local file, read as it was when opened: :mod:`pipelines.io.csvfiles`)
            or an open binary file (an upload, a remote file).
        fmt: ``"csv"`` or ``"parquet"``.
        limits: what reading may decode.
        keys: partition keys of a dataset's file, added to each chunk as columns.
    """

    def __init__(self, source: Path | BinaryIO, fmt: str, limits: ReadLimits,
                 keys: dict[str, Any] | None = None) -> None:
        self.format, self.limits, self.keys = fmt, limits, keys or {}
        self._opened = isinstance(source, Path)
        try:
            self.file: BinaryIO = open(source, "rb") if isinstance(source, Path) else source  # noqa: SIM115
        except OSError as error:  # a path the user gave: no such file, not readable
            raise UnreadableTableError(f"cannot be read: {error.strerror or error}") from None
        try:
            if fmt == "csv":
                self._parquet = None
                names = read_header(self.file, limits)
            else:
                self._parquet = ParquetTable(self.file, limits)
                names = self._parquet.columns
        except BaseException:
            self.close()
            raise
        self.columns = [*names, *(key for key in self.keys if key not in names)]

    def frames(self, chunk_rows: int, schema: Schema | None = None) -> Iterator[pd.DataFrame]:
        """The rows, in chunks; ``schema`` says which CSV columns are text."""
        if self._parquet is not None:
            frames = self._parquet.frames(chunk_rows)
        else:
            text = None if schema is None else [
                name for name in self.columns
                if name not in schema.names or schema[name].kind == "categorical"]
            frames = csv_frames(self.file, self.columns[: len(self.columns) - len(self.keys)],
                                chunk_rows, self.limits, text, snapshot=self._opened)
        for frame in frames:
            for key, value in self.keys.items():
                frame[key] = value
            yield frame

    def close(self) -> None:
        if self._opened:
            self.file.close()

    def __enter__(self) -> TableFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_table(
    source: str | Path | BinaryIO, chunk_rows: int = CHUNK_ROWS, *, fmt: str | None = None,
    schema: Schema | None = None, strict: bool = True, limits: ReadLimits | None = None,
) -> Iterator[pd.DataFrame]:
    """Yields consecutive chunks of at most ``chunk_rows`` rows; the index counts from 0 across
    chunks, so error messages name the row of the file (:func:`iter_chunks` for datasets).

    Arguments:
        source, chunk_rows, fmt, schema, strict, limits: as :func:`iter_chunks` takes them.
    """
    for chunk in iter_chunks(source, chunk_rows, fmt=fmt, schema=schema, strict=strict,
                             limits=limits):
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
    """``error`` raised on a chunk that begins at row ``start`` of ``path``, located in the file:
    the row of the file (0-based, header not counted; for CSV also the line number).

    Arguments:
        error: raised by checking a chunk whose index was reset to count from 0.
        start: the chunk's first row in the file.
        path: the file, named in the message.
    """
    located = error.in_file(start)
    csv = located.row is not None and table_format(path) == "csv"
    line = located.row + 2 if located.row is not None and csv else None
    return located.located(file=str(path), line=line)


@contextmanager
def rows_of(data: str, frame: pd.DataFrame) -> Iterator[None]:
    """A :class:`SchemaError` about a row of ``frame`` or of a subset of it (a sample of
    ``data`` whose index holds the table's row numbers, :mod:`pipelines.io.sampling`) located
    in ``data``: the row of the table, and for a CSV file its line.

    Arguments:
        data: the file or dataset the rows were read from.
        frame: the rows (the index labels of a subset survive, positions do not).
    """
    try:
        yield
    except SchemaError as error:
        if error.row is None:
            raise
        table_row = int(error.label if error.label is not None else frame.index[error.row])
        unlocated = error.located(row=0, label=None)
        if is_dataset(data):
            raise unlocated.in_file(table_row).located(file=data) from None
        raise at_file_row(unlocated, table_row, data) from None
