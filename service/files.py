"""``POST /score_file``: an uploaded CSV or Parquet file, scored all or nothing.

The upload is parsed by :mod:`service.uploads` (multipart field ``file``), then read, validated
and scored chunk by chunk (``FLOWAD_FILE_CHUNK_ROWS``), each chunk in a worker thread, with one
model for the whole file. Nothing is counted or answered before every chunk has passed: a bad
row rejects the file, naming its row in the file. Between chunks the work stops if the client
has gone or ``FLOWAD_FILE_SECONDS`` have passed; past ``FLOWAD_MAX_FILE_ROWS`` rows the file is
refused. The response is ``/score``'s body, streamed (:func:`stream_body`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import orjson
import pandas as pd
from anyio import to_thread
from starlette.requests import Request

from pipelines.errors import SchemaError, UnscorableRecordError
from service.errors import RequestRejected
from service.follower import LoadedModel
from service.scoring import ModelMismatchError, RecordScoring, Verdicts, model_changing, unscorable
from service.settings import Settings
from service.uploads import Upload, next_chunk, read_upload, upload_chunks

log = logging.getLogger("flowad.service")
ScoredFile = tuple[list[Verdicts], dict[str, int]]  # each chunk's verdicts, unseen categories


class FileScoring:
    """Scores the uploads of one front-end worker.

    Arguments:
        scoring: the worker's record scoring (here or on the scorer, with model agreement).
        settings: the service's settings (the file limits).
    """

    def __init__(self, scoring: RecordScoring, settings: Settings) -> None:
        self.scoring = scoring
        self.settings = settings

    async def score_upload(self, request: Request) -> ScoredFile | None:
        """The verdicts of an uploaded file, chunk by chunk, and its unseen categories per
        column; None if the client went away (nothing was counted).

        Raises:
            RequestRejected: an upload or a row that cannot be scored, a file over its limits,
                a scorer that cannot be reached or serves another model.
        """
        started = time.monotonic()
        async with read_upload(request) as upload:
            return await self._score_table(request, upload, started)

    async def _score_table(self, request: Request, upload: Upload,
                           started: float) -> ScoredFile | None:
        """Scores an upload with one model for the whole file: if the scorer serves another
        one, the file is scored again from its start (nothing was counted yet) with the model
        both then serve (as :meth:`RecordScoring.agreed` does for records)."""
        follower = self.scoring.follower
        try:
            return await self._score_table_with(follower.current, request, upload, started)
        except ModelMismatchError:
            await to_thread.run_sync(self.scoring.catch_up)
        upload.file.seek(0)
        try:
            return await self._score_table_with(follower.current, request, upload, started)
        except ModelMismatchError as mismatch:
            raise model_changing(mismatch) from None

    async def _score_table_with(self, model: LoadedModel, request: Request, upload: Upload,
                                started: float) -> ScoredFile | None:
        """Validates and scores an upload chunk by chunk, each in a worker thread; between
        chunks it stops if the client disconnected or the time limit passed."""
        settings = self.settings
        chunks = upload_chunks(upload, model.detector.schema, settings.file_chunk_rows,
                               settings.read_limits)
        parts: list[Verdicts] = []
        unknown: Counter[str] = Counter()
        n_rows = 0
        while (chunk := await to_thread.run_sync(next_chunk, chunks, upload.format)) is not None:
            if chunk.empty:  # a CSV of a header only: an empty file, as a 0-row Parquet
                continue
            if n_rows + len(chunk) > settings.max_file_rows:
                raise RequestRejected(
                    f"the file has more than {settings.max_file_rows} rows, the limit of "
                    "/score_file (FLOWAD_MAX_FILE_ROWS): score it with `flowad score` instead",
                    "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            part, counts = await to_thread.run_sync(self._score_chunk, model, chunk, n_rows)
            parts.append(part)
            unknown.update(counts)
            n_rows += len(chunk)
            if await request.is_disconnected():
                log.info("/score_file: client disconnected after %d rows; stopped", n_rows)
                return None
            if time.monotonic() - started > settings.file_seconds:
                raise RequestRejected(
                    f"scoring the file took more than {settings.file_seconds:g} s "
                    f"(FLOWAD_FILE_SECONDS; {n_rows} rows done, none returned): split it or "
                    "score it with `flowad score`", "too_large",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if not parts:
            raise RequestRejected("empty file: no records to score", "empty")
        return parts, {k: v for k, v in unknown.items() if v}

    def _score_chunk(self, model: LoadedModel, chunk: pd.DataFrame,
                     first_row: int) -> tuple[Verdicts, dict[str, int]]:
        """Verdicts and unseen-category counts of one chunk, counting nothing; a rejection
        names the row in the whole file."""
        chunk = chunk.reset_index(drop=True)
        try:
            verdicts = self.scoring.verdicts(model, chunk)
        except UnscorableRecordError as error:
            raise unscorable(model, error.in_file(first_row)) from None
        except SchemaError as error:
            raise RequestRejected(str(error.in_file(first_row)), "schema") from None
        return verdicts, model.detector.unknown_counts(chunk)


def stream_body(parts: list[Verdicts], unknown: dict[str, int],
                rows: int = 10_000) -> Iterator[bytes]:
    """The ``/score`` body of a request scored in parts, encoded ``rows`` results at a time:
    a file's response never exists whole in memory as Python objects (a million result dicts
    take ~1 GB), nor are its parts' arrays copied into one.

    Arguments:
        parts: the verdicts of consecutive chunks, all of one model.
        unknown: unseen categories per column.
        rows: results per piece.
    """
    head: dict[str, Any] = {**parts[0].head(unknown), "n": sum(len(part) for part in parts),
                            "zero_density": sum(part.zero_density() for part in parts)}
    yield orjson.dumps(head)[:-1] + b',"results":['
    comma = b""
    for part in parts:
        for start in range(0, len(part), rows):
            yield comma + orjson.dumps(part.results(start, start + rows))[1:-1]
            comma = b","
    yield b"]}"
