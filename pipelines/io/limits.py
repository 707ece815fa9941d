"""How much of a table one read may decode: limits checked before the bytes are decoded.

A Parquet file is compressed and dictionary-encoded, so a few KB can decode to GBs (a 27 KB
zstd file of 40 rows of 20-million-character strings, ~800 MB as text); a CSV header can
name hundreds of thousands of columns, each of which pandas builds an object for. Every
reader of tables (``flowad train``/``score``/``evaluate``/``retrain``, ``/score_file``) checks
these limits first: a Parquet file's footer (its columns, each row group's uncompressed size)
before any page is decoded, a dictionary-encoded batch's text before it is expanded, a CSV
header's bytes and width before any row is parsed, and the text of each chunk as it is read.

Defaults are the values below; each can be set by the environment variable in brackets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import TableTooLargeError, shown

MIB = 2**20


@dataclass(frozen=True)
class ReadLimits:
    """Arguments (environment variable in brackets):
    max_columns: columns of a table: CSV header fields, Parquet fields [FLOWAD_MAX_COLUMNS].
    max_header_bytes: bytes of a CSV header [FLOWAD_MAX_HEADER_BYTES].
    max_cell_chars: characters of one text cell [FLOWAD_MAX_CELL_CHARS].
    max_chunk_bytes: bytes one chunk of rows may decode to: a Parquet row group's uncompressed
        size (from the footer), a batch's text once its dictionary is expanded, the CSV text
        parsed into one chunk [FLOWAD_MAX_CHUNK_BYTES].
    max_chunk_cells: rows x columns of one chunk: a wide table is read in fewer rows at a time,
        so that a chunk's parse is bounded whatever the width [FLOWAD_MAX_CHUNK_CELLS].
    max_total_bytes: bytes a whole Parquet file may decode to (its footer's sum); None: no
        limit (a file streamed from disk). ``/score_file`` sets FLOWAD_MAX_FILE_BYTES: an
        upload decodes to no more than a CSV upload may hold.
    """

    max_columns: int = 10_000
    max_header_bytes: int = MIB
    max_cell_chars: int = 100_000
    max_chunk_bytes: int = 256 * MIB
    max_chunk_cells: int = 5_000_000
    max_total_bytes: int | None = None

    @classmethod
    def from_env(cls) -> ReadLimits:
        env = os.environ.get
        default = cls()
        return cls(
            max_columns=int(env("FLOWAD_MAX_COLUMNS", default.max_columns)),
            max_header_bytes=int(env("FLOWAD_MAX_HEADER_BYTES", default.max_header_bytes)),
            max_cell_chars=int(env("FLOWAD_MAX_CELL_CHARS", default.max_cell_chars)),
            max_chunk_bytes=int(env("FLOWAD_MAX_CHUNK_BYTES", default.max_chunk_bytes)),
            max_chunk_cells=int(env("FLOWAD_MAX_CHUNK_CELLS", default.max_chunk_cells)),
        )

    def chunk_rows(self, chunk_rows: int, n_columns: int) -> int:
        """Rows per chunk for a table of ``n_columns``: ``chunk_rows``, fewer for a wide one."""
        return max(1, min(chunk_rows, self.max_chunk_cells // max(n_columns, 1)))

    def check_columns(self, n_columns: int) -> None:
        if n_columns > self.max_columns:
            raise TableTooLargeError(f"{n_columns} columns, more than the limit of "
                                     f"{self.max_columns} (FLOWAD_MAX_COLUMNS)")

    def check_parquet_footer(self, metadata: pa._parquet.FileMetaData) -> None:
        """Refuses a Parquet file from its footer: too many columns, a row group or the whole
        file decoding to more bytes than allowed (the footer's uncompressed sizes)."""
        self.check_columns(metadata.num_columns)
        sizes = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
        largest = max(sizes, default=0)
        if largest > self.max_chunk_bytes:
            raise TableTooLargeError(
                f"a row group decodes to {largest / MIB:.0f} MiB, more than the limit of "
                f"{self.max_chunk_bytes / MIB:.0f} MiB (FLOWAD_MAX_CHUNK_BYTES): write it with "
                "smaller row groups")
        if self.max_total_bytes is not None and sum(sizes) > self.max_total_bytes:
            raise TableTooLargeError(
                f"the file decodes to {sum(sizes) / MIB:.0f} MiB, more than the limit of "
                f"{self.max_total_bytes / MIB:.0f} MiB (FLOWAD_MAX_FILE_BYTES)")

    def check_text(self, name: str, array: pa.Array | pa.ChunkedArray, first_row: int) -> None:
        """Refuses a text column (string, binary or a dictionary of them) whose longest cell,
        or whose text once expanded, is over the limits; the Arrow array is measured, not
        converted.

        Arguments:
            name: the column's name, for the message.
            array: the column of one batch.
            first_row: the batch's first row in the file (to name the row of a long cell).
        """
        kind = array.type.value_type if pa.types.is_dictionary(array.type) else array.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            return
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if pa.types.is_dictionary(array.type):
            lengths = pc.take(pc.binary_length(array.dictionary), array.indices)
        else:
            lengths = pc.binary_length(array)
        total = pc.sum(lengths).as_py() or 0
        if total > self.max_chunk_bytes:
            raise TableTooLargeError(
                f"column {shown(name)} holds {total / MIB:.0f} MiB of text in rows from "
                f"{first_row}, more than the limit of {self.max_chunk_bytes / MIB:.0f} MiB a chunk "
                "(FLOWAD_MAX_CHUNK_BYTES)")
        longest = pc.max(lengths).as_py() or 0
        if longest > self.max_cell_chars:  # bytes >= characters: count characters only now
            chars = (pc.utf8_length(array.cast(kind)) if pa.types.is_string(kind)
                     or pa.types.is_large_string(kind) else lengths)
            over = pc.indices_nonzero(pc.greater(chars, self.max_cell_chars))
            if len(over):
                position = over[0].as_py()
                raise TableTooLargeError(
                    f"column {shown(name)}, row {first_row + position}: a text cell of "
                    f"{chars[position].as_py()} characters, more than the limit of "
                    f"{self.max_cell_chars} (FLOWAD_MAX_CELL_CHARS)")
