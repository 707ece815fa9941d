"""Reading a Parquet file in chunks, checked from its footer before any page is decoded.

The footer gives the columns, their Arrow types and each row group's uncompressed size: a file
over the :class:`~pipelines.io.limits.ReadLimits` or with a column that holds no scalars (a list,
struct or map) is refused before anything is decoded. Text columns are read as dictionaries
and measured before they are expanded (a dictionary-encoded column's footer size says nothing
of what it expands to). pandas' metadata is not applied: the columns pandas made the index are
read as columns, an unnamed index is dropped, a named range index (stored as no column) is
rebuilt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import UnreadableTableError, shown
from pipelines.io.limits import ReadLimits

UNNAMED_INDEX = re.compile(r"__index_level_\d+__")  # pandas' name for an unnamed index


class ParquetTable:
    """A Parquet file, its footer checked (the module's docstring): its ``columns``, and its
    rows in chunks.

    Arguments:
        file: the open binary file.
        limits: what reading may decode.
    """

    def __init__(self, file: BinaryIO, limits: ReadLimits) -> None:
        try:
            footer = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as error:
            raise UnreadableTableError(f"not a readable Parquet file: {error}") from None
        limits.check_parquet_footer(footer.metadata)
        schema = footer.schema_arrow
        for field in schema:
            if _nested(field.type):
                raise UnreadableTableError(
                    f"column {shown(field.name)} holds {field.type} values, not one number or "
                    "text per row: flatten it into columns or drop it")
        self.limits, self.file = limits, file
        self.text = [field.name for field in schema if _text(field.type)]  # read as dictionaries
        self.measured = {field.name for field in schema if _text(field.type) or (
            pa.types.is_dictionary(field.type) and _text(field.type.value_type))}
        self.ranges = _range_indexes(schema.metadata)
        self.columns = [name for name in schema.names if not UNNAMED_INDEX.fullmatch(name)]
        self.columns += [name for name, _, _ in self.ranges if name not in self.columns]

    def frames(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The rows, at most ``chunk_rows`` (fewer for a wide file) at a time."""
        parquet = pq.ParquetFile(self.file, read_dictionary=self.text)
        rows = 0
        for batch in parquet.iter_batches(
                batch_size=self.limits.chunk_rows(chunk_rows, len(self.columns))):
            columns = []
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                if name in self.measured:
                    self.limits.check_text(name, column, rows)
                if name in self.text:  # a file's own dictionaries stay pandas categories
                    column = column.dictionary_decode()
                columns.append(column)
            frame = pa.RecordBatch.from_arrays(columns, batch.schema.names).to_pandas(
                ignore_metadata=True)
            frame = frame.drop(columns=[c for c in frame.columns if UNNAMED_INDEX.fullmatch(c)])
            for name, start, step in self.ranges:
                if name not in frame.columns:
                    frame[name] = start + step * np.arange(rows, rows + len(frame))
            rows += len(frame)
            yield frame


def _nested(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_nested(kind) or isinstance(kind, pa.ExtensionType)


def _text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind))


def _range_indexes(metadata: dict[bytes, bytes] | None) -> list[tuple[str, int, int]]:
    """The named range indexes pandas' metadata describes (stored as no column: ``name``,
    ``start``, ``step``)."""
    try:
        pandas = json.loads((metadata or {}).get(b"pandas", b"{}"))
        return [(index["name"], int(index["start"]), int(index["step"]))
                for index in pandas.get("index_columns", [])
                if isinstance(index, dict) and index.get("kind") == "range"
                and isinstance(index.get("name"), str)]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []  # metadata some other writer made: the columns are what is stored


