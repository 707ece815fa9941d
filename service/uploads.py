"""Reading a ``/score_file`` upload: one multipart file part, spooled to disk as it arrives.

Starlette's multipart parser keeps the first MiB of a file in memory and the rest in a
temporary file, so memory does not grow with the upload. Only the file part named ``file`` is
accepted: a text value in its place (which BentoML's file input would download as a URL) is a
400, and the client's file name is only read for its suffix, never used as a path. The parser
accepts a body cut short without complaint (it then holds no complete part), so the closing
boundary is looked for as the body passes: a body without one is malformed or truncated.

The file is then read in chunks within :class:`~pipelines.io.limits.ReadLimits` (FLOWAD_MAX_COLUMNS,
FLOWAD_MAX_HEADER_BYTES, FLOWAD_MAX_CELL_CHARS, FLOWAD_MAX_CHUNK_BYTES, FLOWAD_MAX_CHUNK_CELLS,
read with the service's settings), a Parquet file decoding to at most the bytes a CSV upload may
have (FLOWAD_MAX_FILE_BYTES), and its header is checked against the model's schema, strictly,
before any row is read. Every refusal is a :class:`~service.errors.RequestRejected`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import PurePosixPath
from typing import BinaryIO

import pandas as pd
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from pipelines.errors import SchemaError, TableTooLargeError, shown
from pipelines.io.limits import ReadLimits
from pipelines.io.tables import iter_table
from pipelines.tabular.schema import Schema
from service.errors import RequestRejected

FIELD = "file"
FORMATS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}
USAGE = "send a multipart/form-data body with the table as the file part 'file' (.csv or .parquet)"


def _malformed(message: str) -> RequestRejected:
    return RequestRejected(message, "validation")


@dataclass(frozen=True)
class Upload:
    """Arguments:
    file: the uploaded bytes, seekable (memory, then a temporary file).
    format: ``"csv"`` or ``"parquet"``, from the file name's suffix.
    """

    file: BinaryIO
    format: str


@asynccontextmanager
async def read_upload(request: Request) -> AsyncIterator[Upload]:
    """Parses the multipart body of ``request``; the temporary file is closed on exit.

    Raises:
        RequestRejected: not multipart, no boundary, a malformed or truncated body, no file
            part ``file``, a text value instead of a file, or an unsupported file type (400);
            a body over its byte limit (413) or too slow to arrive (408): ``RequestGuard``
            raises those as the parser reads.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise _malformed(f"expected multipart/form-data with a boundary: {USAGE}")
    closing = ClosingBoundary(request.receive, boundary)
    try:
        form = await Request(request.scope, closing.receive).form(max_files=1, max_fields=16)
    except (MultiPartException, HTTPException) as error:
        detail = getattr(error, "message", None) or getattr(error, "detail", "")
        raise _malformed(f"malformed multipart body ({detail}): {USAGE}") from None
    try:
        if not closing.seen:
            raise _malformed("malformed or truncated multipart body: it ends before its closing "
                             f"boundary: {USAGE}")
        part = form.get(FIELD)
        if part is None:
            raise _malformed(f"no part named {FIELD!r}: {USAGE}")
        if not isinstance(part, UploadFile):
            raise _malformed(
                f"part {FIELD!r} is a text value ({shown(part)}), not a file; URLs are "
                f"never fetched: {USAGE}")
        suffix = PurePosixPath(part.filename or "").suffix.lower()
        if suffix not in FORMATS:
            raise _malformed(f"unsupported file type {shown(suffix)}: {USAGE}")
        yield Upload(part.file, FORMATS[suffix])
    finally:
        await form.close()


class ClosingBoundary:
    """Watches a body as it is received for the multipart closing delimiter ``--boundary--``.

    Arguments:
        receive: the request's ASGI receive channel.
        boundary: the boundary of its Content-Type.
    """

    def __init__(self, receive: Callable[[], Awaitable[Message]], boundary: bytes) -> None:
        self._receive = receive
        self.delimiter = b"--" + boundary + b"--"
        self.seen = False
        self._tail = b""  # the end of the previous message: a delimiter may straddle two

    async def receive(self) -> Message:
        message = await self._receive()
        if not self.seen:
            window = self._tail + message.get("body", b"")
            self.seen = self.delimiter in window
            self._tail = window[-len(self.delimiter):]
        return message


def upload_chunks(upload: Upload, schema: Schema, chunk_rows: int,
                  limits: ReadLimits) -> Iterator[pd.DataFrame]:
    """The rows of an upload in chunks of ``chunk_rows``, read for a model of ``schema``
    (strictly: no column it does not know), within the reading limits.

    Arguments:
        upload: the parsed upload.
        schema: the schema of the model that scores it.
        chunk_rows: rows per chunk (FLOWAD_FILE_CHUNK_ROWS).
        limits: the reading limits, a Parquet upload decoding to at most FLOWAD_MAX_FILE_BYTES
            (``Settings.read_limits``).
    """
    return iter_table(upload.file, chunk_rows, fmt=upload.format, schema=schema, limits=limits)


def next_chunk(chunks: Iterator[pd.DataFrame], fmt: str) -> pd.DataFrame | None:
    """The next chunk of an upload, None at its end.

    Raises:
        RequestRejected: a header that does not match the schema (400, ``schema``), a file over
            a reading limit (413, ``too_large``), or an unreadable one (400).
    """
    try:
        return next(chunks, None)
    except SchemaError as error:
        raise RequestRejected(str(error), "schema") from None
    except TableTooLargeError as error:
        raise RequestRejected(f"the uploaded {fmt} file is too large to read: {error}",
                              "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
    except (ValueError, OSError, UnicodeDecodeError) as error:  # pandas' and pyarrow's
        raise _malformed(f"could not read the uploaded {fmt} file: {str(error)[:300]}") from None
