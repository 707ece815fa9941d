"""The flowad BentoML service: ``POST /score``, ``POST /score_file``, ``GET /model``.

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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import orjson
import pandas as pd
import torch
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipelines import registry
from pipelines.schema import SchemaError
from pipelines.tables import iter_table
from service import metrics as service_metrics
from service.drift import DriftWindow
from service.follower import LoadedModel, ModelFollower
from service.guard import PARSED_RECORDS, AdminAuth, RequestGuard
from service.settings import Settings

SETTINGS = Settings.from_env()
UNKNOWN_CATEGORY_POLICY = (
    "unseen categories are scored, not rejected: they map to the column's 'unknown' slot, "
    "which training never saw, so they raise the score"
)


class RequestRejected(BentoMLException):
    """A 4xx whose message names the row and column; ``reason`` labels the metric."""

    error_code = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message, error_code=status)
        self.message, self.reason = message, reason

    def response(self) -> Response:
        """``{"error": ..., "reason": ...}``, the body ``RequestGuard``'s rejections have too
        (raised through BentoML, the body would be ``[{"error": ...}]``)."""
        return json_response({"error": self.message, "reason": self.reason}, self.error_code)


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
    def from_rows(cls, rows: list[list[Any]]) -> Verdicts:
        """Unpacks what :meth:`Scorer.verdicts` returns (one model scores one request)."""
        columns = list(zip(*rows, strict=True))
        return cls(*(np.asarray(c) for c in columns[:4]), *rows[0][4:])

    def response(self, unknown: dict[str, int]) -> dict[str, Any]:
        """The ``/score`` body. orjson writes non-finite floats as null: JSON has no infinity,
        and an infinite score (a record the model gives zero density) is certainly anomalous."""
        results = [
            {"score": s, "log_likelihood": ll, "p_value": p, "is_anomaly": a}
            for s, ll, p, a in zip(self.score.tolist(), self.log_likelihood.tolist(),
                                   self.p_value.tolist(), self.is_anomaly.tolist(), strict=True)
        ]
        return {"model": self.tag, "threshold": self.threshold, "target_fpr": self.target_fpr,
                "n": len(results), "results": results, "unknown_categories": unknown}


class ScoreRequest(bentoml.IODescriptor):
    """The ``/score`` input as documented: ``{"records": [...]}`` (``RequestGuard`` also
    accepts the bare array)."""

    records: list[dict[str, Any]]

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ScoreRequest:
        """The records ``RequestGuard`` parsed and shape-checked, without parsing them again."""
        records = request.scope.get(PARSED_RECORDS)
        if records is None:  # not through the guard
            return await super().from_http_request(request, serde)
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
        """Rows of values in schema order -> ``[score, log_likelihood, p_value, is_anomaly,
        model tag, threshold, target FPR]`` per row (plain lists: cheaper than dicts both ways)."""
        model = self.follower.current  # one model for the whole batch
        names = model.detector.encoder_.schema_.names
        verdicts = Verdicts.of(model, pd.DataFrame(rows, columns=names))
        constant = [verdicts.tag, verdicts.threshold, verdicts.target_fpr]
        return [[*values, *constant] for values in zip(
            verdicts.score.tolist(), verdicts.log_likelihood.tolist(),
            verdicts.p_value.tolist(), verdicts.is_anomaly.tolist(), strict=True,
        )]

    @bentoml.api
    def reload(self) -> str:
        """Loads the production model now if it changed; returns the tag being served."""
        self.follower.refresh()
        return self.follower.current.tag


_front: FlowadService | None = None  # the worker's service instance, for the GET routes


async def model_info(request: Request) -> JSONResponse:
    if _front is None:
        return JSONResponse({"error": "model not loaded"}, status_code=503)
    return JSONResponse(_front.describe())


@bentoml.asgi_app(Starlette(routes=[Route("/model", model_info, methods=["GET"])]), path="/")
@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": 120}, envs=THREAD_ENVS)
class FlowadService:
    """HTTP front: request validation, metrics, drift; scoring is delegated to ``Scorer``."""

    if SETTINGS.remote_scoring:
        scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        global _front
        torch.set_num_threads(SETTINGS.torch_threads)
        self.metrics: service_metrics.Metrics | None = None
        self.window: DriftWindow | None = None
        self._drift_updated = 0.0
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
        calibrator = new.detector.calibrator_
        if self.metrics is None:  # histogram buckets come from the first model (see README)
            self.metrics = service_metrics.metrics(service_metrics.score_buckets(
                calibrator.quantiles(np.array(service_metrics.SCORE_BUCKET_QUANTILES))
            ))
        m = self.metrics
        self.window = DriftWindow(calibrator.reference_scores_, calibrator.threshold_,
                                  SETTINGS.drift_window)
        if old is not None:
            m.model_info.labels(old.tag).set(0)
        m.model_info.labels(new.tag).set(1)
        m.load_seconds.labels(new.tag).set(new.load_seconds)
        m.target_fpr.labels(new.tag).set(new.detector.target_fpr)
        for q, value in zip(
            service_metrics.REFERENCE_QUANTILES,
            calibrator.quantiles(np.array(service_metrics.REFERENCE_QUANTILES)),
            strict=True,
        ):
            m.reference_quantile.labels(new.tag, str(q)).set(float(value))

    def _on_load_failure(self, model: str) -> None:
        if self.metrics is not None:
            self.metrics.load_failures.inc()

    # ------------------------------------------------------------------ endpoints
    @bentoml.api(route="/score", input_spec=ScoreRequest)
    def score(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Scores a JSON array of records (or ``{"records": [...]}``), in order.

        ``RequestGuard`` has parsed and checked the body; ``ScoreRequest`` takes its records.
        """
        try:
            return json_response(self._score_records(records))
        except RequestRejected as rejected:
            return rejected.response()

    @bentoml.api(route="/score_file")
    def score_file(self, file: Path) -> dict[str, Any]:
        """Scores an uploaded CSV or Parquet file in chunks; same response as ``/score``."""
        try:
            return json_response(self._score_upload(file))
        except RequestRejected as rejected:
            return rejected.response()

    def _score_records(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        if not records:
            self._reject("empty request: no records to score", "empty")
        if len(records) > SETTINGS.max_records:
            self._reject(
                f"{len(records)} records exceed the limit of {SETTINGS.max_records} per request",
                "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        model = self.follower.current  # this request's model, even if a swap happens now
        return self._score_frame(model, self._frame(model, records))

    def _score_upload(self, file: Path) -> dict[str, Any]:
        model = self.follower.current
        results: list[dict[str, Any]] = []
        unknown: dict[str, int] = {}
        suffix = Path(getattr(file, "name", str(file))).suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            self._reject(f"unsupported file type {suffix!r}: upload a .csv or .parquet file",
                         "validation")
        response: dict[str, Any] = {}
        try:
            for chunk in iter_table(file):
                response = self._score_frame(model, chunk)
                results += response["results"]
                for column, count in response["unknown_categories"].items():
                    unknown[column] = unknown.get(column, 0) + count
        except (ValueError, OSError) as error:
            if isinstance(error, SchemaError):
                self._reject(str(error), "schema")
            self._reject(f"could not read the uploaded file: {error}", "validation")
        if not results:
            self._reject("empty file: no records to score", "empty")
        return {**response, "n": len(results), "results": results, "unknown_categories": unknown}

    @bentoml.api(route="/admin/reload")
    def admin_reload(self) -> dict[str, Any]:
        """Loads the production model now (token-protected by ``AdminAuth``).

        This worker and the scorer switch at once; other front-end workers follow at their
        next poll.
        """
        previous = self.tag
        self.follower.refresh()
        scorer_tag = self.scorer.reload() if SETTINGS.remote_scoring else self.tag
        return {"model": self.tag, "previous": previous, "scorer_model": scorer_tag,
                "changed": self.tag != previous}

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` returns."""
        current = self.follower.current
        d = current.detector
        return {
            "tag": current.tag,
            "production": registry.production_tag(current.tag.split(":")[0]) == current.tag,
            "created": bentoml.models.get(current.tag).info.creation_time.isoformat(),
            "model_kind": d.model,
            "target_fpr": d.target_fpr,
            "threshold": d.threshold_ if math.isfinite(d.threshold_) else None,
            "schema": d.encoder_.schema_.to_dict(),
            "training_metrics": d.metrics_,
            "unknown_category_policy": UNKNOWN_CATEGORY_POLICY,
            "limits": {"max_records": SETTINGS.max_records,
                       "max_body_bytes": SETTINGS.max_body_bytes},
        }

    # ------------------------------------------------------------------ helpers
    def _reject(self, message: str, reason: str,
                status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        self.metrics.rejected.labels(self.tag, reason).inc()
        raise RequestRejected(message, reason, status)

    def _frame(self, model: LoadedModel, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Records -> DataFrame, rejecting a record with a missing or unknown column."""
        columns = model.detector.encoder_.schema_.names
        expected, ignored = set(columns), set(model.detector.exclude)
        for row, record in enumerate(records):
            keys = set(record) - ignored
            if keys != expected:
                missing, unknown = sorted(expected - keys), sorted(keys - expected)
                problem = (f"missing column {missing[0]!r}" if missing
                           else f"unknown column {unknown[0]!r}")
                self._reject(f"row {row}: {problem}; expected columns {sorted(expected)}",
                             "schema")
        return pd.DataFrame.from_records(records, columns=columns)

    def _score_frame(self, model: LoadedModel, frame: pd.DataFrame) -> dict[str, Any]:
        encoder = model.detector.encoder_
        try:  # the whole frame is checked against the schema before anything is scored
            if SETTINGS.remote_scoring:
                encoder.validate(frame)
                rows = list(frame[list(encoder.schema_.names)].itertuples(index=False, name=None))
                verdicts = Verdicts.from_rows(self.scorer.verdicts(rows))
            else:
                verdicts = Verdicts.of(model, frame)  # the encoder validates it
        except SchemaError as error:
            self._reject(str(error), "schema")
        unknown = {k: v for k, v in encoder.unknown_counts(frame).items() if v}
        self._observe(verdicts)
        return verdicts.response(unknown)

    def _observe(self, verdicts: Verdicts) -> None:
        m, tag, scores = self.metrics, verdicts.tag, verdicts.score.astype(np.float64)
        flagged = int(verdicts.is_anomaly.sum())
        m.records.labels(tag).inc(len(scores))
        if flagged:
            m.anomalies.labels(tag).inc(flagged)
        service_metrics.observe_many(m.scores.labels(tag), scores)
        service_metrics.observe_many(m.p_values.labels(tag),
                                     verdicts.p_value.astype(np.float64))
        self.window.add(scores)
        now = time.monotonic()
        if now - self._drift_updated >= 1.0:  # KS on a full window costs ~1 ms; once a second
            stats = self.window.statistics()
            if stats is not None:
                self._drift_updated = now
                m.psi.labels(tag).set(stats.psi)
                m.ks_statistic.labels(tag).set(stats.ks_statistic)
                m.ks_pvalue.labels(tag).set(stats.ks_pvalue)
                m.window_anomaly_rate.labels(tag).set(stats.anomaly_rate)
                m.window_records.labels(tag).set(stats.n)


def _count_guard_rejection(reason: str) -> None:
    if _front is not None:
        _front.metrics.rejected.labels(_front.tag, reason).inc()


FlowadService.add_asgi_middleware(
    AdminAuth, paths=("/admin/reload",), token=SETTINGS.admin_token
)
FlowadService.add_asgi_middleware(
    RequestGuard,
    json_routes={"/score": SETTINGS.max_body_bytes},
    upload_routes={"/score_file": SETTINGS.max_file_bytes},
    on_reject=_count_guard_rejection,
)
