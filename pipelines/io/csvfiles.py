"""Reading a CSV file in chunks: its header first, within limits, then rows as text or numbers.

**Missing values.** In a text column only an empty cell is missing: "NA" is Namibia, "None"
and "null" are words. In a numeric column (and one of true/false) a cell is missing when it is
empty or one of pandas' default missing-value words (``NUMERIC_MISSING``: "NA", "N/A", "NULL",
"null", "None", "NaN", "nan", "n/a", "#N/A", "<NA>", ...), as R and most tools write them. A
model says which of its columns are text (its categorical ones); columns it does not read are
read as text, so that they are carried to an output exactly as they were. Without a model
(training), a column is numeric when every cell that is not empty or a missing-value word is a
number (or every one is true/false) and at least one is; else it is text, and its words stay.

**Limits** (:class:`~pipelines.io.limits.ReadLimits`): the header is read first, at most
``max_header_bytes`` of it, and its width checked before any row is parsed; a chunk holds at
most ``max_chunk_cells`` cells and may parse at most ``max_chunk_bytes`` of the file; a text
cell holds at most ``max_cell_chars`` characters.

**A file being appended to** is read as it was when opened: up to its last newline then, so a
half-written last line is never read. A last line without a newline is read after every other
line, if it is known by then to be complete: the file has not grown, or what was added begins
with a newline; else it is left out (:class:`UnfinishedLineWarning`).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES  # type: ignore[import-not-found]  # no stubs

from pipelines.errors import TableTooLargeError, UnreadableTableError, shown
from pipelines.io.limits import MIB, ReadLimits

NUMERIC_MISSING = frozenset(STR_NA_VALUES)  # pandas' default list, "" among them
TEXT_MISSING = frozenset({""})
BOOLEAN_WORDS = {"True": True, "TRUE": True, "true": True,
                 "False": False, "FALSE": False, "false": False}  # what pandas reads as bool
_TAIL_BLOCK = 64 * 1024  # bytes read at a time when looking for a file's last newline
QUOTE_AT_END = "EOF inside string"  # pandas' error for a quoted cell the bytes end in


class UnfinishedLineWarning(UserWarning):
    """A CSV file being written: its last line, without a newline yet, was not read."""


class _Reader(io.RawIOBase):
    """The bytes pandas parses: a file up to where its snapshot ends, counted per chunk.

    Arguments:
        file: the open binary file, at its start.
        limits: ``max_chunk_bytes`` bounds the bytes one chunk may read.
        snapshot: read a local file as it was when opened, up to its last newline (the module's
            docstring); an upload or a remote file is read to its end.
    """

    def __init__(self, file: BinaryIO, limits: ReadLimits, snapshot: bool) -> None:
        self.file, self.limits = file, limits
        self.position, self.chunk_bytes = 0, 0
        self.end: int | None = None  # where reading stops; None: the file's end
        self.size = 0  # the file's size when opened (with a snapshot)
        if snapshot:
            self.size = os.fstat(file.fileno()).st_size
            # a file of one line (a header alone) has no other line to stop before
            self.end = _after_last_newline(file, self.size) or self.size
            file.seek(0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = len(buffer) if self.end is None else min(len(buffer), self.end - self.position)
        data = self.file.read(want)
        buffer[: len(data)] = data
        self.position += len(data)
        self.chunk_bytes += len(data)
        if self.chunk_bytes > self.limits.max_chunk_bytes + _TAIL_BLOCK:  # pandas reads ahead
            raise TableTooLargeError(
                f"one chunk of rows reads more than {self.limits.max_chunk_bytes / MIB:.0f} MiB "
                "of the file (FLOWAD_MAX_CHUNK_BYTES): rows that long need fewer rows per chunk "
                "(--chunk-rows, FLOWAD_FILE_CHUNK_ROWS) or a higher limit")
        return len(data)

    @property
    def cut(self) -> bool:
        """Whether the snapshot stops before a last line that has no newline."""
        return self.end is not None and self.end < self.size

    def tail_is_complete(self) -> bool:
        """Whether that last line is complete (asked once every other line is read): the file
        has not grown since it was opened, or what was added begins with a newline."""
        now = os.fstat(self.file.fileno()).st_size
        if now < self.size:
            raise UnreadableTableError("the file was truncated while it was being read")
        self.file.seek(self.size)
        return now == self.size or self.file.read(1) in (b"\n", b"\r")

    def tail(self) -> bytes:
        """The bytes of that last line (after :attr:`cut` said there is one)."""
        if self.end is None:
            return b""
        if self.size - self.end > self.limits.max_chunk_bytes:
            raise TableTooLargeError(f"the last line is longer than the limit of "
                                     f"{self.limits.max_chunk_bytes / MIB:.0f} MiB a chunk "
                                     "(FLOWAD_MAX_CHUNK_BYTES)")
        self.file.seek(self.end)
        return self.file.read(self.size - self.end)


def _after_last_newline(file: BinaryIO, size: int) -> int:
    """The position just after the last b"\\n" in the first ``size`` bytes of ``file`` (0 if
    there is none)."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        file.seek(start)
        found = file.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def read_header(file: BinaryIO, limits: ReadLimits) -> list[str]:
    """The column names of a CSV file, as pandas will name them, from its first record alone:
    at most ``max_header_bytes`` are read and at most ``max_columns`` names accepted. The file
    is left at its start.

    Raises:
        UnreadableTableError: an empty file, or a header that is not UTF-8.
        TableTooLargeError: a header over the limits.
    """
    file.seek(0)
    head = file.read(limits.max_header_bytes + 1)
    file.seek(0)
    if not head.strip():
        raise UnreadableTableError("empty file: no header row")
    # a character cut at the end waits for its next bytes; rows after the header may be
    # anything here: they are pandas' to read
    text = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")
    decoded = text.decode(head[: limits.max_header_bytes])
    lines = io.StringIO(decoded, newline="")
    record = csv.reader(lines)
    fields = next(record, [])
    ended = decoded[: lines.tell()].endswith(("\n", "\r"))
    if not ended and len(head) > limits.max_header_bytes:
        raise TableTooLargeError(
            f"the header is longer than {limits.max_header_bytes} bytes (FLOWAD_MAX_HEADER_BYTES)"
            f"{f', {len(fields)}+ columns' if len(fields) > 1 else ''}")
    limits.check_columns(len(fields))
    header = decoded[: lines.tell()]
    try:
        header.encode()
    except UnicodeEncodeError as error:  # a byte that is not UTF-8, escaped as a surrogate
        byte = bytes([ord(header[error.start]) - 0xDC00])
        raise UnreadableTableError(f"not UTF-8 text (byte {byte!r} cannot be decoded): save "
                                   "the file as UTF-8") from None
    return pd.read_csv(io.StringIO(header), nrows=0).columns.tolist()


def _not_utf8(error: UnicodeDecodeError) -> UnreadableTableError:
    byte = error.object[error.start : error.start + 1]
    return UnreadableTableError(f"not UTF-8 text (byte {byte!r} cannot be decoded): save the "
                                "file as UTF-8")


def csv_frames(file: BinaryIO, names: Sequence[str], chunk_rows: int, limits: ReadLimits,
               text_columns: Sequence[str] | None, *, snapshot: bool = False
               ) -> Iterator[pd.DataFrame]:
    """The chunks of a CSV file whose header :func:`read_header` gave as ``names``; what
    pandas reports as a tokenizer or codec error, or takes silently, is an
    :class:`UnreadableTableError` saying what is wrong and on which line.

    Rows with more fields than the header are the silent case: when every row has one more,
    pandas makes the first column the index and shifts every value one column left.

    Arguments:
        file: the open binary file, at its start.
        names: its header.
        chunk_rows: rows per chunk (fewer for a wide file: ``limits.max_chunk_cells``).
        limits: the reading limits.
        text_columns: the columns read as text, the others as numbers (the module's
            docstring); None: decided from the values (training).
        snapshot: read the file as it was when opened (a local file).
    """
    reader = _Reader(file, limits, snapshot)
    rows, frame = 0, None
    rows_per_chunk = limits.chunk_rows(chunk_rows, len(names))
    try:
        for frame in _parsed(io.BufferedReader(reader), names, rows_per_chunk, limits,
                             text_columns, rows, file):
            reader.chunk_bytes = 0
            rows += len(frame)
            yield frame
    except UnreadableTableError as error:
        if not (reader.cut and QUOTE_AT_END in str(error)):
            raise
        # the last newline is inside a quoted cell: the last record spans it and the tail
        if not reader.tail_is_complete():
            raise UnreadableTableError(
                "its last record, quoted over several lines, was being written when the file "
                "was opened: read it again once it is complete") from None
        yield from _rows_after(file, names, rows_per_chunk, limits, text_columns, rows,
                               reader.size)
        return
    if not reader.cut:
        return
    if not reader.tail_is_complete():
        warnings.warn(f"{getattr(file, 'name', 'the file')} is being written: its last line, "
                      "unfinished when it was opened, was not read", UnfinishedLineWarning,
                      stacklevel=2)
        return
    if text_columns is None and frame is not None:  # read as the rows before it were
        text_columns = [name for name in names if name in frame.columns
                        and pd.api.types.is_string_dtype(frame[name].dtype)]
    yield from _parsed(io.BytesIO(reader.tail()), names, 1, limits, text_columns, rows, file,
                       header=False)


def _rows_after(file: BinaryIO, names: Sequence[str], chunk_rows: int, limits: ReadLimits,
                text_columns: Sequence[str] | None, skip: int, size: int
                ) -> Iterator[pd.DataFrame]:
    """The rows after the first ``skip`` of the first ``size`` bytes of ``file``, parsed again
    from its start (the rare file whose last record is quoted over several lines and has no
    newline at its end)."""
    file.seek(0)
    reader = _Reader(file, limits, snapshot=False)
    reader.end = size
    seen = 0
    for frame in _parsed(io.BufferedReader(reader), names, chunk_rows, limits, text_columns, 0,
                         file):
        reader.chunk_bytes = 0
        if seen + len(frame) > skip:
            yield frame.iloc[max(0, skip - seen):].reset_index(drop=True)
        seen += len(frame)


def _parsed(stream: BinaryIO, names: Sequence[str], chunk_rows: int, limits: ReadLimits,
            text_columns: Sequence[str] | None, first_row: int, file: BinaryIO, *,
            header: bool = True) -> Iterator[pd.DataFrame]:
    """The chunks pandas parses from ``stream`` (:func:`csv_frames`' arguments; ``first_row``:
    the row of the file the stream starts at; ``header``: whether it starts with the header)."""
    rows = first_row
    text = set(names) if text_columns is None else set(text_columns)
    try:
        frames = pd.read_csv(
            stream, chunksize=chunk_rows, header=0 if header else None,
            names=None if header else list(names),
            dtype=None if text_columns is None else dict.fromkeys(text, "string"),
            keep_default_na=False,
            na_values={name: list(TEXT_MISSING if name in text else NUMERIC_MISSING)
                       for name in names})
        for frame in frames:
            frame.index = frame.index + (0 if header else first_row)
            # pandas numbers a chunk's rows on from the last one's unless it took an index
            if not frame.index.equals(pd.RangeIndex(rows, rows + len(frame))):
                raise UnreadableTableError(
                    f"{_longer_than_header(file)}: check the delimiter and quoting")
            frame.index = pd.RangeIndex(len(frame))
            _check_cells(frame, limits, rows)
            if text_columns is None:
                frame = _numbers_with_missing_words(frame)
            rows += len(frame)
            yield frame
    except pd.errors.EmptyDataError:
        raise UnreadableTableError("empty file: no header row") from None
    except pd.errors.ParserError as error:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if found is None:
            raise UnreadableTableError(f"not a readable CSV file: {error}") from None
        fields, line, saw = found.groups()
        line = int(line) + (0 if header else first_row + 1)
        raise UnreadableTableError(f"line {line} has {saw} fields, the header {fields}: "
                                   "check the delimiter and quoting") from None
    except UnicodeDecodeError as error:
        raise _not_utf8(error) from None


def _check_cells(frame: pd.DataFrame, limits: ReadLimits, first_row: int) -> None:
    """Refuses a text cell longer than ``limits.max_cell_chars`` (naming its row in the file)."""
    for name in frame.columns:
        column = frame[name]
        if not (pd.api.types.is_string_dtype(column.dtype) and len(column)):
            continue
        lengths = column.str.len()
        if lengths.max() > limits.max_cell_chars:
            row = int(np.flatnonzero(lengths.to_numpy(dtype=float, na_value=0)
                                     > limits.max_cell_chars)[0])
            raise TableTooLargeError(
                f"column {shown(name)}, row {first_row + row}: a text cell of "
                f"{int(lengths.iloc[row])} characters, more than the limit of "
                f"{limits.max_cell_chars} (FLOWAD_MAX_CELL_CHARS)")


def _numbers_with_missing_words(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (read with only empty cells missing) with each text column that holds
    missing-value words ("NA", "null", ...) but otherwise only numbers, or only true/false,
    made that column with those words missing; columns with any other word stay text."""
    for name in frame.columns:
        column = frame[name]
        if not pd.api.types.is_string_dtype(column.dtype):
            continue
        words = column.isin(NUMERIC_MISSING)
        if not words.any():
            continue
        values = column.mask(words)
        present = values.dropna()
        if pd.to_numeric(present, errors="coerce").notna().all():  # all missing, too
            frame[name] = pd.to_numeric(values).astype(np.float64)
        elif present.isin(BOOLEAN_WORDS).all():
            frame[name] = values.map(BOOLEAN_WORDS).astype(object)
    return frame


def _longer_than_header(source: BinaryIO) -> str:
    """Where a CSV file first has a row with more fields than its header (an error path: the
    file is scanned again with the standard library's reader)."""
    if not source.seekable():
        return "rows have more fields than the header"
    source.seek(0)
    lines = io.TextIOWrapper(source, encoding="utf-8", newline="")
    try:
        rows = csv.reader(lines)
        header = len(next(rows))
        for row in rows:
            if len(row) > header:
                return f"line {rows.line_num} has {len(row)} fields, the header {header}"
    finally:
        lines.detach()  # the file is its opener's to close
    return "rows have more fields than the header"
