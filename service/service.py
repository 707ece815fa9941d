"""The flowad BentoML service: ``POST /score``, ``POST /score_file``, ``GET /model``.

``POST /score?explain=true`` (optionally ``&top=k``, 1 to ``MAX_TOP``, default ``DEFAULT_TOP``)
adds to each result its ``contributions``: the ``k`` input columns that raised its score most,
with the record's value and the contribution in nats (:mod:`pipelines.explain`), and to the
body an ``explanation`` with the reference record they are measured from and its score. The
front worker explains, on its CPU copy of the model, at most ``FLOWAD_MAX_EXPLAIN_RECORDS``
records and ``FLOWAD_MAX_EXPLAIN_WORK`` flow evaluations per request, one request at a time and
apart from plain scoring, in chunks that stop when the client goes (:mod:`service.explaining`).

Two services, composed the BentoML way:
- ``Scorer`` holds the detector on the accelerator (CUDA when present) and exposes one
  batchable API: adaptive batching merges the records of concurrent requests into one call.
- ``FlowadService`` is the HTTP front: it parses and validates requests (a bad request never
  reaches the batch, so it cannot affect other clients' records), has them scored, and keeps
  the Prometheus metrics and the drift window.
Where the records are scored is ``FLOWAD_SCORING`` (see :mod:`service.settings`): with a GPU,
by the scorer; on a CPU-only host, by the front worker itself, one worker per core: there
the scorer would compete for the same cores, and the hop to it (serialising every record both
ways) cost more than scoring them. ``scorer`` is only a dependency in the first case.
In tests (``FlowadService.to_asgi()``) the scorer runs in-process; under ``bentoml serve`` it
is its own process and the front's workers reach it over BentoML's internal transport.

The front sends the scorer calls of at most ``SCORER_CALL_ROWS`` rows, however large the request,
which its dispatcher can batch with other clients' calls. A call the scorer sheds as overloaded,
or whose connection drops, is tried again; if it still fails, or the scorer cannot be reached,
the answer is a 503 with ``Retry-After`` (reason ``overloaded``), never a bare 500
(:meth:`FlowadService._call_scorer`). Every row names the model it was checked against: the
front and the scorer each follow the production pointer on their own, so during a swap they can
disagree, and the new model can have other columns (:meth:`Scorer.verdicts`,
:meth:`FlowadService._agreed`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any

import aiohttp
import anyio
import bentoml
import numpy as np
import orjson
import pandas as pd
import torch
from anyio import to_thread
from bentoml.exceptions import BadInput, BentoMLException, ServiceUnavailable
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipelines import registry
from pipelines.errors import SchemaError, UnscorableRecordError, shown
from service import metrics as service_metrics
from service.bundle import bundled_tag, model_to_bundle, running_bento
from service.drift import DriftWindow
from service.explaining import ExplainRefusedError, explain_in_chunks, explain_problem
from service.follower import LoadedModel, ModelFollower
from service.guard import (
    PARSED_RECORDS,
    AdminAuth,
    RequestGuard,
    parse_json,
    records_of,
    shape_error,
)
from service.openapi import DocumentRoutes, record_model, served_schema
from service.settings import Settings
from service.uploads import UploadError, next_chunk, read_upload, upload_chunks

SETTINGS = Settings.from_env()
log = logging.getLogger("flowad.service")
DEFAULT_TOP, MAX_TOP = 5, 20  # contributions per explained record: default, most
# ``top`` as it may be written (less leading zeros): str.isdigit() also accepts "²" and "٣",
# which int() refuses or reads as 3, and int() of a 5,000-digit string raises.
TOP_VALUES = {str(k): k for k in range(1, MAX_TOP + 1)}
# Rows per call to the scorer: a few milliseconds of work, which its dispatcher can batch with
# other requests' calls (max_batch_size) instead of shedding one huge call.
SCORER_CALL_ROWS = 2_000
RETRY_AFTER_S = 1  # a shed call or a model swap is over within about a second
SCORER_RETRY_PAUSES_S = (0.1, 0.3)  # before trying again a call the scorer shed or dropped
UNKNOWN_CATEGORY_POLICY = (
    "unseen categories are scored, not rejected: they map to the column's 'unknown' slot, "
    "which training never saw, so they raise the score"
)


class RequestRejected(BentoMLException):
    """A 4xx whose message names the row and column; ``reason`` labels the metric."""

    error_code = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST,
                 retry_after: int | None = None):
        super().__init__(message, error_code=status)
        self.message, self.reason, self.retry_after = message, reason, retry_after

    def response(self) -> Response:
        """``{"error": ..., "reason": ...}``, the body ``RequestGuard``'s rejections have too
        (raised through BentoML, the body would be ``[{"error": ...}]``)."""
        response = json_response({"error": self.message, "reason": self.reason}, self.error_code)
        if self.retry_after is not None:
            response.headers["retry-after"] = str(self.retry_after)
        if self.error_code == HTTPStatus.REQUEST_TIMEOUT:  # as RequestGuard's 408 (guard.py)
            response.headers["connection"] = "close"
        return response


class ModelMismatchError(Exception):
    """The scorer answered rows with another model than the one the front worker checked
    them against (each follows the production pointer on its own)."""

    def __init__(self, front: str, scorer: set[str]) -> None:
        super().__init__(f"this worker serves {front}, the scorer {', '.join(sorted(scorer))}")


VERDICT_COLUMNS = ("score", "log_likelihood", "p_value", "is_anomaly")


@dataclass(frozen=True)
class Verdicts:
    """One request's verdicts, as columns, and the model that scored them."""

    score: np.ndarray
    log_likelihood: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    tag: str
    threshold: float
    target_fpr: float

    @classmethod
    def of(cls, model: LoadedModel, frame: pd.DataFrame) -> Verdicts:
        """Scores a validated frame with ``model``."""
        detector = model.detector
        out = detector.verdict_columns(frame)
        return cls(*(out[c] for c in VERDICT_COLUMNS), model.tag,
                   detector.threshold_, detector.target_fpr)

    @classmethod
    def of_records(cls, model: LoadedModel,
                   records: list[dict[str, Any]]) -> tuple[Verdicts, dict[str, int]]:
        """Scores records with ``model`` (checking them; a few without a DataFrame), with the
        unseen categories per column."""
        detector = model.detector
        out, unknown = detector.record_verdicts(records)
        return cls(*(out[c] for c in VERDICT_COLUMNS), model.tag,
                   detector.threshold_, detector.target_fpr), unknown

    @classmethod
    def of_each(cls, model: LoadedModel, frame: pd.DataFrame) -> Verdicts:
        """Scores record by record, NaN where the model cannot score one: the scorer's way
        out when a batch that merges several clients' records holds such a record, so that
        only its own request is rejected (by :meth:`from_rows`)."""
        parts = []
        for row in range(len(frame)):
            try:
                parts.append(cls.of(model, frame.iloc[row : row + 1]))
            except UnscorableRecordError:
                nan = np.array([np.nan])
                parts.append(cls(nan, nan, nan, np.array([False]), model.tag,
                                 model.detector.threshold_, model.detector.target_fpr))
        return cls.concat(parts)

    @classmethod
    def from_rows(cls, rows: list[list[Any]], tag: str) -> Verdicts:
        """Unpacks what :meth:`Scorer.verdicts` returns for rows sent for model ``tag``.

        Raises:
            ModelMismatchError: a row the scorer answered with another model (it does not serve
                ``tag``).
            UnscorableRecordError: a row the scorer could not score (NaN).
        """
        columns = list(zip(*rows, strict=True))
        scored_by = set(columns[4])
        if scored_by != {tag}:
            raise ModelMismatchError(tag, scored_by - {tag})
        verdicts = cls(*(np.asarray(c) for c in columns[:4]), *rows[0][4:])
        nan = np.flatnonzero(np.isnan(verdicts.log_likelihood.astype(np.float64)))
        if len(nan):
            raise UnscorableRecordError(int(nan[0]), count=len(nan))
        return verdicts

    @classmethod
    def concat(cls, parts: list[Verdicts]) -> Verdicts:
        """One request's verdicts from those of its chunks (all scored by one model)."""
        columns = (np.concatenate([getattr(p, c) for p in parts]) for c in VERDICT_COLUMNS)
        first = parts[0]
        return cls(*columns, first.tag, first.threshold, first.target_fpr)

    def __len__(self) -> int:
        return len(self.score)

    def results(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """Per-record verdicts of rows ``start:stop``, as the response lists them."""
        part = slice(start, stop)
        return [
            {"score": s, "log_likelihood": ll, "p_value": p, "is_anomaly": a}
            for s, ll, p, a in zip(self.score[part].tolist(), self.log_likelihood[part].tolist(),
                                   self.p_value[part].tolist(), self.is_anomaly[part].tolist(),
                                   strict=True)
        ]

    def head(self, unknown: dict[str, int]) -> dict[str, Any]:
        """Everything in the response but the per-record results."""
        return {"model": self.tag, "threshold": self.threshold, "target_fpr": self.target_fpr,
                "n": len(self), "unknown_categories": unknown,
                "zero_density": self.zero_density()}

    def zero_density(self) -> int:
        """Records of zero density (score +inf: a value off its column's grid)."""
        return int(np.isposinf(self.score).sum())

    def response(self, unknown: dict[str, int]) -> dict[str, Any]:
        """The ``/score`` body. orjson writes non-finite floats as null: JSON has no infinity,
        and an infinite score (a record the model gives zero density) is certainly anomalous."""
        return {**self.head(unknown), "results": self.results()}



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
    head = {**parts[0].head(unknown), "n": sum(len(part) for part in parts),
            "zero_density": sum(part.zero_density() for part in parts)}
    yield orjson.dumps(head)[:-1] + b',"results":['
    comma = b""
    for part in parts:
        for start in range(0, len(part), rows):
            yield comma + orjson.dumps(part.results(start, start + rows))[1:-1]
            comma = b","
    yield b"]}"


_SERVED_SCHEMA = served_schema(SETTINGS.model)
BUNDLED_TAG = model_to_bundle(SETTINGS.model)  # what `bentoml build` puts in the Bento
Record = record_model(_SERVED_SCHEMA) if _SERVED_SCHEMA else dict[str, Any]


class ScoreRequest(bentoml.IODescriptor):
    """The ``/score`` input as documented: ``{"records": [...]}``, each record typed from the
    served model's training schema (``RequestGuard`` also accepts the bare array)."""

    records: Annotated[list[Record], Field(min_length=1, max_length=SETTINGS.max_records)]

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ScoreRequest:
        """The records ``RequestGuard`` parsed and shape-checked, without parsing them again
        (nor through this model: the encoder validates the records against the schema)."""
        records = request.scope.get(PARSED_RECORDS)
        if records is None:  # not through the guard: its parse and shape check here
            try:
                body = parse_json(await request.body())
            except (ValueError, UnicodeDecodeError) as error:
                raise BadInput(f"malformed JSON: {error}") from None
            problem = shape_error(body)
            if problem:
                raise BadInput(problem)
            records = records_of(body)
        return cls.model_construct(records=records)


def json_response(body: dict[str, Any], status: int = HTTPStatus.OK) -> Response:
    """A ready-made response: BentoML does not re-validate it against the API's output type
    (a third of the time of a 1000-record request), and orjson encodes 5-10x faster."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _resources() -> dict[str, Any]:
    # Declare the GPU only where there is one, so the same service serves on CPU-only hosts.
    return {"gpu": 1} if torch.cuda.is_available() else {"cpu": "1"}


# torch.set_num_threads in __init__ sets torch's own count, but the OpenMP runtimes loaded in
# the worker (scikit-learn's and torch's libgomp) size the pools of the thread BentoML scores in
# from OMP_NUM_THREADS, default every core: with two workers on two cores, their spinning
# threads cut small-request throughput ~20x. BentoML sets ``envs`` in the worker processes
# before they start (a value the caller sets wins).
THREAD_ENVS = [{"name": "OMP_NUM_THREADS", "value": str(SETTINGS.torch_threads)}]


@bentoml.service(resources=_resources(), workers=1, traffic={"timeout": 120}, envs=THREAD_ENVS)
class Scorer:
    """Scores validated records with the flow; the only place that touches the accelerator."""

    def __init__(self) -> None:
        torch.set_num_threads(SETTINGS.torch_threads)
        self.follower = ModelFollower(SETTINGS.model, device="auto")
        self.follower.poll_every(SETTINGS.reload_interval)

    # max_latency_ms is a hard cap: BentoML's dispatcher answers 503 "overloaded" to requests
    # it predicts will exceed it. 50 ms shed requests while a new model was loading on this
    # 2-core machine. It also bounds the waits the dispatcher learns while collecting batches
    # (5 s let those grow to 100-300 ms at low concurrency), hence 500 ms.
    @bentoml.api(batchable=True, max_batch_size=20_000, max_latency_ms=500)
    def verdicts(self, rows: list[list[Any]]) -> list[list[Any]]:
        """Rows ``[model tag, *values in that model's schema order]`` -> ``[score,
        log_likelihood, p_value, is_anomaly, model tag, threshold, target FPR]`` per row (plain
        lists: cheaper than dicts both ways).

        A row is only scored by the model it names, whose columns it holds: a batch merges the
        calls of every front worker, and each one swaps models on its own. The tag costs little
        per row: the front puts one string object in all its rows, which pickle sends once. A row
        for a model this process does not serve makes it load the production model now (it may
        have just been promoted); a row whose model it still does not serve comes back unscored,
        with this process's tag, for the front to retry with that model.
        """
        model = self.follower.current  # one model for the whole batch
        if any(row[0] != model.tag for row in rows):
            self.follower.refresh()
            model = self.follower.current
        served = [row[1:] for row in rows if row[0] == model.tag]
        scored = iter(self._verdict_rows(model, served) if served else [])
        unserved = [math.nan, math.nan, math.nan, False, model.tag, math.nan, math.nan]
        return [next(scored) if row[0] == model.tag else unserved for row in rows]

    @staticmethod
    def _verdict_rows(model: LoadedModel, rows: list[list[Any]]) -> list[list[Any]]:
        frame = pd.DataFrame(rows, columns=model.detector.input_columns)
        try:
            verdicts = Verdicts.of(model, frame)
        except UnscorableRecordError:  # one client's record must not fail the whole batch
            verdicts = Verdicts.of_each(model, frame)
        constant = [verdicts.tag, verdicts.threshold, verdicts.target_fpr]
        return [[*values, *constant] for values in zip(
            verdicts.score.tolist(), verdicts.log_likelihood.tolist(),
            verdicts.p_value.tolist(), verdicts.is_anomaly.tolist(), strict=True,
        )]

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        """Loads the production model now if it changed: ``{"model": the tag being served,
        "problem": why the production model is not being served, or None}``."""
        self.follower.refresh(now=True)
        return {"model": self.follower.current.tag, "problem": self.follower.problem()}


_front: FlowadService | None = None  # the worker's service instance, for the GET routes
_scoring: anyio.CapacityLimiter | None = None  # /score's scoring thread, one request at a time


async def model_info(request: Request) -> JSONResponse:
    if _front is None:
        return JSONResponse({"error": "model not loaded"}, status_code=503)
    return JSONResponse(_front.describe())


async def score_file(request: Request) -> Response:
    """``POST /score_file``: a plain Starlette route rather than a BentoML API, so that the
    upload is parsed here (BentoML's file input downloads any URL sent in place of a file,
    writes the client's file name to disk and answers 500 to a malformed multipart body) and
    scoring stops when the client goes away or the time is up."""
    if _front is None:
        return JSONResponse({"error": "model not loaded"}, status_code=503)
    return await _front.score_upload(request)


ROUTES = [Route("/model", model_info, methods=["GET"]),
          Route("/score_file", score_file, methods=["POST"])]


@bentoml.asgi_app(Starlette(routes=ROUTES), path="/")
@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": 120}, envs=THREAD_ENVS)
class FlowadService:
    """HTTP front: request validation, metrics, drift; scoring is delegated to ``Scorer``."""

    if SETTINGS.remote_scoring:
        scorer = bentoml.depends(Scorer)
    if BUNDLED_TAG is not None:
        # Declared so that BentoML ships it with the Bento (service/bundle.py); never read
        # through this attribute: the follower loads and verifies the model.
        bundled_model = bentoml.models.BentoModel(BUNDLED_TAG)

    def __init__(self) -> None:
        global _front
        torch.set_num_threads(SETTINGS.torch_threads)
        service_metrics.forget_dead_processes()  # e.g. the worker this one replaces
        self.metrics: service_metrics.Metrics | None = None
        self.window: DriftWindow | None = None
        self._window_tag = ""  # the model whose scores self.window holds
        self._drift_updated = 0.0
        self._drift_published = False  # whether this window's statistics reached the gauges
        # A swap (the follower's thread) and a request's drift update must not interleave:
        # a late update for the old model would bring its retired series back.
        self._drift_lock = threading.Lock()
        # The front only validates and describes: its copy of the detector stays on the CPU.
        self.follower = ModelFollower(SETTINGS.model, device="cpu", on_swap=self._on_swap,
                                      on_failure=self._on_load_failure)
        self.follower.poll_every(SETTINGS.reload_interval)
        _front = self

    def __is_ready__(self) -> bool:
        return _front is self

    @property
    def tag(self) -> str:
        return self.follower.current.tag

    def _on_swap(self, new: LoadedModel, old: LoadedModel | None) -> None:
        detector = new.detector
        reference = detector.calibration_scores_  # the drift reference: calibration scores
        if self.metrics is None:  # histogram buckets come from the first model (see README)
            self.metrics = service_metrics.metrics(service_metrics.score_buckets(
                np.quantile(reference, service_metrics.SCORE_BUCKET_QUANTILES)
            ))
        m = self.metrics
        with self._drift_lock:
            self.window = DriftWindow(reference, detector.threshold_, SETTINGS.drift_window)
            self._window_tag = new.tag
            if old is not None and self._drift_published:
                # Retire the old model's drift series, or an alert such as
                # flowad_drift_psi > 0.2 keeps firing for a model no longer served. In
                # multiprocess mode a series cannot be removed (remove() forgets this process's
                # child, not the value in the file the collector reads), so it is set to NaN,
                # which no comparison matches; a worker still serving that model writes a
                # newer value, which wins (livemostrecent).
                for gauge in m.drift_gauges():
                    gauge.labels(old.tag).set(math.nan)
            self._drift_published = False
        if old is not None:
            m.model_info.labels(old.tag).set(0)
        m.model_info.labels(new.tag).set(1)
        m.load_seconds.labels(new.tag).set(new.load_seconds)
        m.target_fpr.labels(new.tag).set(detector.target_fpr)
        for q, value in zip(
            service_metrics.REFERENCE_QUANTILES,
            np.quantile(reference, service_metrics.REFERENCE_QUANTILES),
            strict=True,
        ):
            m.reference_quantile.labels(new.tag, str(q)).set(float(value))

    def _on_load_failure(self, tag: str) -> None:
        if self.metrics is not None:
            self.metrics.load_failures.inc()

    # ------------------------------------------------------------------ endpoints
    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, records: list[dict[str, Any]], ctx: bentoml.Context) -> Any:
        """Scores a JSON array of records (or ``{"records": [...]}``), in order; with
        ``?explain=true``, explains them too (module docstring).

        ``RequestGuard`` has parsed and checked the body; ``ScoreRequest`` takes its records.
        Scoring runs in a thread of its own, one request at a time per worker (as BentoML runs
        a synchronous API); explanations in another (:mod:`service.explaining`).
        """
        global _scoring
        if _scoring is None:  # created in the event loop
            _scoring = anyio.CapacityLimiter(1)
        started = time.monotonic()
        try:
            top = self._explain_top(ctx.request.query_params)
            if top is None:
                scored = await to_thread.run_sync(self._score_records, records, limiter=_scoring)
                return json_response(scored[1])
            return await self._explain_records(records, top, ctx.request, started)
        except RequestRejected as rejected:
            # an API that takes ctx answers with ctx.response's status, whatever it returns
            ctx.response.status_code = rejected.error_code
            return rejected.response()

    def _explain_top(self, query: Any) -> int | None:
        """Contributions to show per record from ``?explain=...&top=...``; None: no
        explanations."""
        explain = query.get("explain", "false").lower()
        if explain not in ("true", "false"):
            self._reject(f"explain must be true or false, got {shown(explain)}", "validation")
        top = query.get("top", str(DEFAULT_TOP))
        if top.lstrip("0") not in TOP_VALUES:
            self._reject(f"top must be an integer from 1 to {MAX_TOP}, got {shown(top)}",
                         "validation")
        return TOP_VALUES[top.lstrip("0")] if explain == "true" else None

    async def _explain_records(self, records: list[dict[str, Any]], top: int,
                               request: Request, started: float) -> Response:
        """The ``/score`` body plus each record's ``top`` contributions (a 204 if the client
        went away meanwhile). The records are scored first (validated and counted as any
        request); the model that scored them explains them, on this worker's CPU copy (named in
        ``explanation.model``), within the limits of :mod:`service.explaining`."""
        self._check_explain_limits(len(records), self.follower.current)
        model, body = await to_thread.run_sync(self._score_records, records, limiter=_scoring)
        self._check_explain_limits(len(records), model)  # a model swapped in meanwhile
        detector = model.detector
        frame = pd.DataFrame.from_records(records, columns=detector.input_columns)
        try:
            explained = await explain_in_chunks(
                detector, frame, top, client_gone=request.is_disconnected, started=started,
                seconds=SETTINGS.explain_seconds)
        except ExplainRefusedError as rejected:
            self._reject(rejected.message, rejected.reason, rejected.status,
                         RETRY_AFTER_S if rejected.status == HTTPStatus.SERVICE_UNAVAILABLE
                         else None)
        if explained is None:
            return Response(status_code=HTTPStatus.NO_CONTENT)
        for result, contributions in zip(body["results"], explained, strict=True):
            result["contributions"] = contributions
        reference = detector.explanation_reference()
        body["explanation"] = {
            "model": model.tag,
            "reference": reference,
            "reference_score": float(detector.decision_function(pd.DataFrame([reference]))[0]),
        }
        return json_response(body)

    def _check_explain_limits(self, n_records: int, model: LoadedModel) -> None:
        """A 413 if explaining ``n_records`` records with ``model`` is over the limits."""
        problem = explain_problem(n_records, len(model.detector.input_columns),
                                  SETTINGS.max_explain_records, SETTINGS.max_explain_work)
        if problem:
            self._reject(problem, "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    async def score_upload(self, request: Request) -> Response:
        """Scores an uploaded CSV or Parquet file (multipart field ``file``), all or nothing:
        every chunk is validated and scored before anything is counted or answered, and a bad
        row rejects the whole file, naming its row in the file."""
        started = time.monotonic()
        try:
            async with read_upload(request) as upload:
                parts, unknown = await self._score_table(request, upload, started)
        except UploadError as rejected:
            self._count_rejection(rejected.reason)
            return RequestRejected(rejected.message, rejected.reason, rejected.status).response()
        except RequestRejected as rejected:
            return rejected.response()
        if parts is None:  # the client went away: nothing was counted
            return Response(status_code=HTTPStatus.NO_CONTENT)
        for part in parts:
            self._observe(part)
        return StreamingResponse(stream_body(parts, unknown), media_type="application/json")

    async def _score_table(self, request: Request, upload: Any,
                           started: float) -> tuple[list[Verdicts] | None, dict[str, int]]:
        """Scores an upload with one model for the whole file: if the scorer serves another
        one, the file is scored again from its start (nothing was counted yet) with the model
        both then serve (:meth:`_agreed`)."""
        try:
            return await self._score_table_with(self.follower.current, request, upload, started)
        except ModelMismatchError:
            await to_thread.run_sync(self._catch_up)
        upload.file.seek(0)
        try:
            return await self._score_table_with(self.follower.current, request, upload, started)
        except ModelMismatchError as mismatch:
            self._reject_model_changing(mismatch)

    async def _score_table_with(self, model: LoadedModel, request: Request, upload: Any,
                                started: float) -> tuple[list[Verdicts] | None, dict[str, int]]:
        """Validates and scores an upload chunk by chunk, each in a worker thread; between
        chunks it stops if the client disconnected or the time limit passed."""
        chunks = upload_chunks(upload, model.detector.schema, SETTINGS.file_chunk_rows,
                               SETTINGS.max_file_bytes)
        parts: list[Verdicts] = []
        unknown: Counter[str] = Counter()
        n_rows = 0
        while (chunk := await to_thread.run_sync(next_chunk, chunks, upload.format)) is not None:
            if chunk.empty:  # a CSV of a header only: an empty file, as a 0-row Parquet
                continue
            if n_rows + len(chunk) > SETTINGS.max_file_rows:
                self._reject(f"the file has more than {SETTINGS.max_file_rows} rows, the limit "
                             "of /score_file (FLOWAD_MAX_FILE_ROWS): score it with `flowad "
                             "score` instead", "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            part, counts = await to_thread.run_sync(self._score_chunk, model, chunk, n_rows)
            parts.append(part)
            unknown.update(counts)
            n_rows += len(chunk)
            if await request.is_disconnected():
                log.info("/score_file: client disconnected after %d rows; stopped", n_rows)
                return None, {}
            if time.monotonic() - started > SETTINGS.file_seconds:
                self._reject(f"scoring the file took more than {SETTINGS.file_seconds:g} s "
                             f"(FLOWAD_FILE_SECONDS; {n_rows} rows done, none returned): split "
                             "it or score it with `flowad score`", "too_large",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if not parts:
            self._reject("empty file: no records to score", "empty")
        return parts, {k: v for k, v in unknown.items() if v}

    def _score_chunk(self, model: LoadedModel, chunk: pd.DataFrame,
                     first_row: int) -> tuple[Verdicts, dict[str, int]]:
        """Verdicts and unseen-category counts of one chunk, counting nothing; a rejection
        names the row in the whole file."""
        chunk = chunk.reset_index(drop=True)
        try:
            verdicts = self._verdicts(model, chunk)
        except UnscorableRecordError as error:
            self._reject_unscorable(model, error.in_file(first_row))
        except SchemaError as error:
            self._reject(str(error.in_file(first_row)), "schema")
        return verdicts, model.detector.unknown_counts(chunk)

    def _score_records(self, records: list[dict[str, Any]]) -> tuple[LoadedModel, dict[str, Any]]:
        """The ``/score`` body of ``records``, and the model that scored them."""
        if not records:
            self._reject("empty request: no records to score", "empty")
        if len(records) > SETTINGS.max_records:
            self._reject(
                f"{len(records)} records exceed the limit of {SETTINGS.max_records} per request",
                "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        return self._agreed(lambda model: self._check_and_score(model, records))

    def _check_and_score(self, model: LoadedModel,
                         records: list[dict[str, Any]]) -> tuple[LoadedModel, dict[str, Any]]:
        self._check_columns(model, records)
        return model, self._score_checked(model, records)

    def _agreed(self, score: Callable[[LoadedModel], Any]) -> Any:
        """``score(model)`` with this worker's model (read once: a request keeps its model even
        if a swap happens meanwhile), or, if the scorer serves another, once more with the
        model this worker then serves (:meth:`_catch_up`); a 503 if they still differ."""
        try:
            return score(self.follower.current)
        except ModelMismatchError:
            self._catch_up()
        try:
            return score(self.follower.current)
        except ModelMismatchError as mismatch:
            self._reject_model_changing(mismatch)

    def _catch_up(self) -> None:
        """Loads the production model now, without waiting for the next poll: the scorer, which
        does so when it sees a model it does not serve, serves another model than this
        worker's, most likely a newer one. A model that failed to load here stays backing off
        (not ``now=True``): every request must not try to load it again."""
        self.follower.refresh()

    def _reject_model_changing(self, mismatch: ModelMismatchError) -> None:
        self._reject(f"the served model is being changed ({mismatch}); retry shortly",
                     "model_changing", HTTPStatus.SERVICE_UNAVAILABLE, RETRY_AFTER_S)

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Loads the production model now (token-protected by ``AdminAuth``).

        This worker and the scorer switch at once, even to a model that failed before and is
        backing off; other front-end workers follow at their next poll. If the production model
        cannot be served (it fails to load or verify, or its pointer cannot be read), the answer
        is a 409 saying why, and the model that was serving stays.
        """
        previous = self.tag
        self.follower.refresh(now=True)
        scorer = ({"model": self.tag, "problem": None} if not SETTINGS.remote_scoring
                  else self.scorer.reload())
        body = {"model": self.tag, "previous": previous, "scorer_model": scorer["model"],
                "changed": self.tag != previous}
        problems = [p for p in (self.follower.problem(), scorer["problem"]) if p]
        if problems:
            ctx.response.status_code = HTTPStatus.CONFLICT
            body |= {"error": " / ".join(dict.fromkeys(problems)), "reason": "model_check"}
        return body

    @staticmethod
    def _is_production(tag: str) -> bool:
        """A built Bento's model is its production model (it has no pointer file); otherwise
        the registry's pointer decides."""
        if running_bento() is not None:
            return bundled_tag() == tag
        return registry.production_tag(tag.split(":")[0]) == tag

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` returns: the detector's own description, the threshold ``null``
        when it is +inf (JSON has no infinity; ``warnings`` then says why and what to do).

        It describes the model this process holds in memory, which keeps serving if its folder
        is deleted from the store or the pointer file is damaged: ``production`` and
        ``created`` are then ``null``, with a warning saying why."""
        current = self.follower.current
        about = current.detector.describe()
        threshold = about["threshold"]
        warnings = list(about["warnings"])
        production = _read_or_warn(
            lambda: self._is_production(current.tag), warnings,
            f"production is unknown: the production pointer of {current.tag.split(':')[0]!r} "
            "cannot be read")
        created = _read_or_warn(
            lambda: bentoml.models.get(current.tag).info.creation_time.isoformat(), warnings,
            f"created is unknown: {current.tag} cannot be read from the model store (deleted?)")
        return {
            "tag": current.tag,
            "production": production,
            "created": created,
            "model_kind": about["model_kind"],
            "target_fpr": about["target_fpr"],
            "threshold": threshold if math.isfinite(threshold) else None,
            "calibration": about["calibration"],
            "warnings": warnings,
            "schema": about["schema"],
            "training_metrics": about["metrics"],
            "unknown_category_policy": UNKNOWN_CATEGORY_POLICY,
            "limits": {"max_records": SETTINGS.max_records,
                       "max_body_bytes": SETTINGS.max_body_bytes},
        }

    # ------------------------------------------------------------------ helpers
    def _reject(self, message: str, reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST,
                retry_after: int | None = None) -> None:
        self._count_rejection(reason)
        raise RequestRejected(message, reason, status, retry_after)

    def _reject_unscorable(self, model: LoadedModel, error: SchemaError) -> None:
        """A record that passed every input check but has no log-likelihood: a 422, and a
        warning in the log, since it means the checks missed something or the model is bad."""
        log.warning("%s could not score a record that passed the input checks: %s",
                    model.tag, error)
        self._reject(str(error), "unscorable", HTTPStatus.UNPROCESSABLE_ENTITY)

    def _count_rejection(self, reason: str) -> None:
        self.metrics.rejected.labels(self.tag, reason).inc()

    def _check_columns(self, model: LoadedModel, records: list[dict[str, Any]]) -> None:
        """Rejects a record with a missing or unknown column."""
        expected = set(model.detector.input_columns)
        ignored = set(model.detector.exclude)
        for row, record in enumerate(records):
            keys = set(record) - ignored
            if keys != expected:
                missing, unknown = sorted(expected - keys), sorted(keys - expected)
                problem = (f"missing column {shown(missing[0])}" if missing
                           else f"unknown column {shown(unknown[0])}")
                self._reject(f"row {row}: {problem}; expected columns {sorted(expected)}",
                             "schema")

    def _score_checked(self, model: LoadedModel, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Scores records whose columns :meth:`_check_columns` accepted."""
        try:  # every record is checked against the schema before anything is scored
            if SETTINGS.remote_scoring:  # the scorer is sent the rows of a checked frame
                frame = pd.DataFrame.from_records(records, columns=model.detector.input_columns)
                verdicts = self._verdicts(model, frame)
                unknown = model.detector.unknown_counts(frame)
            else:  # pipelines builds no frame for a few records
                verdicts, unknown = Verdicts.of_records(model, records)
        except UnscorableRecordError as error:
            self._reject_unscorable(model, error)
        except SchemaError as error:
            self._reject(str(error), "schema")
        self._observe(verdicts)
        return verdicts.response({k: v for k, v in unknown.items() if v})

    def _verdicts(self, model: LoadedModel, frame: pd.DataFrame) -> Verdicts:
        """Validates and scores a frame, here or on the ``Scorer`` (in calls of at most
        ``SCORER_CALL_ROWS`` rows, each row led by the model's tag); counts nothing but a 503.

        Raises:
            ModelMismatchError: the scorer serves another model.
        """
        if not SETTINGS.remote_scoring:
            return Verdicts.of(model, frame)  # the encoder validates it
        detector = model.detector
        detector.validate(frame)
        tag = model.tag
        rows = [(tag, *values)
                for values in frame[detector.input_columns].itertuples(index=False, name=None)]
        answers: list[list[Any]] = []
        for start in range(0, len(rows), SCORER_CALL_ROWS):
            answers += self._call_scorer(rows[start : start + SCORER_CALL_ROWS])
        return Verdicts.from_rows(answers, tag)

    def _call_scorer(self, rows: list[tuple[Any, ...]]) -> list[list[Any]]:
        """The scorer's answer; a 503 if it cannot be reached or keeps shedding the call.

        BentoML's client (aiohttp) raises ServiceUnavailable for the dispatcher's "process is
        overloaded" (a call it sheds unscored when its queue would take longer than
        max_latency_ms), an aiohttp.ClientError when the connection fails or is dropped, and
        TimeoutError past the traffic timeout. A dropped connection is not always the scorer's
        doing: BentoML 1.4's client replaces its session every 100 calls by closing the old
        one, with the calls of the worker's other threads still in flight on it. So a call
        that was shed or dropped (scoring has no side effects) is tried again after a pause;
        one that timed out has used the request's time already.
        """
        pauses = iter(SCORER_RETRY_PAUSES_S)
        while True:
            try:
                return self.scorer.verdicts(rows)
            except (ServiceUnavailable, aiohttp.ClientError, TimeoutError) as error:
                pause = None if isinstance(error, TimeoutError) else next(pauses, None)
                if pause is None:
                    self._scorer_unavailable(len(rows), error)
                time.sleep(pause)

    def _scorer_unavailable(self, rows: int, error: Exception) -> None:
        log.warning("the scorer did not score %d rows: %s: %s", rows, type(error).__name__,
                    error)
        problem = ("is overloaded" if isinstance(error, ServiceUnavailable)
                   else f"could not be reached ({type(error).__name__})")
        self._reject(f"the scorer {problem}; retry shortly", "overloaded",
                     HTTPStatus.SERVICE_UNAVAILABLE, RETRY_AFTER_S)

    def _observe(self, verdicts: Verdicts) -> None:
        m, tag, scores = self.metrics, verdicts.tag, verdicts.score.astype(np.float64)
        flagged = int(verdicts.is_anomaly.sum())
        m.records.labels(tag).inc(len(scores))
        if flagged:
            m.anomalies.labels(tag).inc(flagged)
        impossible = verdicts.zero_density()
        if impossible:  # a column's values left the grid training saw: data-quality news
            m.zero_density.labels(tag).inc(impossible)
        service_metrics.observe_many(m.scores.labels(tag), scores)
        service_metrics.observe_many(m.p_values.labels(tag),
                                     verdicts.p_value.astype(np.float64))
        with self._drift_lock:
            if tag != self._window_tag:  # scored by a model swapped out meanwhile: not its window
                return
            self.window.add(scores)
            now = time.monotonic()
            if now - self._drift_updated < 1.0:  # KS on a full window costs ~1 ms; once a second
                return
            stats = self.window.statistics()
            if stats is None:
                return
            self._drift_updated, self._drift_published = now, True
            m.psi.labels(tag).set(stats.psi)
            m.ks_statistic.labels(tag).set(stats.ks_statistic)
            m.ks_pvalue.labels(tag).set(stats.ks_pvalue)
            m.window_anomaly_rate.labels(tag).set(stats.anomaly_rate)
            m.window_records.labels(tag).set(stats.n)


def _read_or_warn(read: Callable[[], Any], warnings: list[str], what: str) -> Any:
    """``read()``, or None with a warning ``what`` and the error: any failure (a missing
    folder, a pointer file that is empty, garbage or a directory) costs one field only."""
    try:
        return read()
    except Exception as error:
        warnings.append(f"{what}: {type(error).__name__}: {str(error)[:200]}")
        return None


def _count_guard_rejection(reason: str) -> None:
    if _front is not None:
        _front._count_rejection(reason)


# Paths the service answers; any other is one "unmatched" value of BentoML's endpoint label.
KNOWN_PATHS = frozenset({
    "/", "/docs.json", "/schema.json", "/livez", "/healthz", "/readyz", "/metrics",
    *(api.route for service in (FlowadService, Scorer) for api in service.apis.values()),
    *(route.path for route in ROUTES),
})
KNOWN_PREFIXES = ("/static_content/", "/assets/")  # the docs page's files


def _known_path(path: str) -> bool:
    return path in KNOWN_PATHS or path.startswith(KNOWN_PREFIXES)


service_metrics.bound_endpoint_label(_known_path)  # in every process of both services
Scorer.add_asgi_middleware(service_metrics.RestorePath)
FlowadService.add_asgi_middleware(service_metrics.RestorePath)  # first: the others read paths
FlowadService.add_asgi_middleware(DocumentRoutes)
FlowadService.add_asgi_middleware(
    AdminAuth, paths=("/admin/reload",), token=SETTINGS.admin_token
)
FlowadService.add_asgi_middleware(
    RequestGuard,
    json_routes={"/score": SETTINGS.max_body_bytes},
    upload_routes={"/score_file": SETTINGS.max_file_bytes},
    body_timeout=SETTINGS.body_timeout,
    on_reject=_count_guard_rejection,
)
