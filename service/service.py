"""The flowad BentoML service: ``POST /score``, ``POST /score_file``, ``GET /model``.

Two services, composed the BentoML way:
- ``Scorer`` holds the detector on the accelerator (CUDA when present) and exposes one
  batchable API: adaptive batching merges the records of concurrent requests into one call.
- ``FlowadService`` is the HTTP front: it parses and validates requests (a bad request never
  reaches the batch, so it cannot affect other clients' records), calls the scorer, and keeps
  the Prometheus metrics and the drift window.
In tests (``FlowadService.to_asgi()``) the scorer runs in-process; under ``bentoml serve`` it
is its own process and the front's workers reach it over BentoML's internal transport.
"""

from __future__ import annotations

import math
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import torch
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.detector import Detector
from pipelines.schema import SchemaError
from pipelines.store import load_detector
from pipelines.tables import iter_table
from service import metrics as service_metrics
from service.drift import DriftWindow
from service.guard import RequestGuard
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
        self.reason = reason


class RecordsEnvelope(BaseModel):
    records: list[dict[str, Any]]


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an infinite score (certainly anomalous) is reported as null."""
    return float(value) if math.isfinite(value) else None


def _resources() -> dict[str, Any]:
    # Declare the GPU only where there is one, so the same service serves on CPU-only hosts.
    return {"gpu": 1} if torch.cuda.is_available() else {"cpu": "1"}


@bentoml.service(resources=_resources(), workers=1, traffic={"timeout": 120})
class Scorer:
    """Scores validated records with the flow; the only place that touches the accelerator."""

    def __init__(self) -> None:
        torch.set_num_threads(SETTINGS.torch_threads)
        self.detector: Detector = load_detector(SETTINGS.model_tag)
        self.tag: str = self.detector.tag_

    @bentoml.api(batchable=True, max_batch_size=20_000, max_latency_ms=50)
    def verdicts(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        frame = pd.DataFrame.from_records(records, columns=self.detector.encoder_.schema_.names)
        out = self.detector.verdicts(frame)
        out["model"] = self.tag
        return out.to_dict("records")


_front: FlowadService | None = None  # the worker's service instance, for the GET routes


async def model_info(request: Request) -> JSONResponse:
    if _front is None:
        return JSONResponse({"error": "model not loaded"}, status_code=503)
    return JSONResponse(_front.describe())


@bentoml.asgi_app(Starlette(routes=[Route("/model", model_info, methods=["GET"])]), path="/")
@bentoml.service(workers=1, traffic={"timeout": 120})
class FlowadService:
    """HTTP front: request validation, metrics, drift; scoring is delegated to ``Scorer``."""

    scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        global _front
        torch.set_num_threads(SETTINGS.torch_threads)
        start = time.perf_counter()
        # The front only validates and describes: its copy of the detector stays on the CPU.
        self.detector: Detector = load_detector(SETTINGS.model_tag, device="cpu")
        self.tag: str = self.detector.tag_
        calibrator = self.detector.calibrator_
        self.window = DriftWindow(
            calibrator.reference_scores_, calibrator.threshold_, SETTINGS.drift_window
        )
        self._drift_updated = 0.0
        self.metrics = service_metrics.metrics(service_metrics.score_buckets(
            calibrator.quantiles(np.array(service_metrics.SCORE_BUCKET_QUANTILES))
        ))
        m, tag = self.metrics, self.tag
        m.model_info.labels(tag).set(1)
        m.load_seconds.labels(tag).set(time.perf_counter() - start)
        m.target_fpr.labels(tag).set(self.detector.target_fpr)
        for q, value in zip(
            service_metrics.REFERENCE_QUANTILES,
            calibrator.quantiles(np.array(service_metrics.REFERENCE_QUANTILES)),
            strict=True,
        ):
            m.reference_quantile.labels(tag, str(q)).set(float(value))
        self.columns = list(self.detector.encoder_.schema_.names)
        self.ignored = set(self.detector.exclude)
        _front = self

    def __is_ready__(self) -> bool:
        return _front is self

    # ------------------------------------------------------------------ endpoints
    @bentoml.api(route="/score")
    def score(self, body: list[dict[str, Any]] | RecordsEnvelope, /) -> dict[str, Any]:
        """Scores a JSON array of records (or ``{"records": [...]}``), in order."""
        records = body.records if isinstance(body, RecordsEnvelope) else body
        if not records:
            self._reject("empty request: no records to score", "empty")
        if len(records) > SETTINGS.max_records:
            self._reject(
                f"{len(records)} records exceed the limit of {SETTINGS.max_records} per request",
                "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        frame = self._frame(records)
        return self._score_frame(frame, records)

    @bentoml.api(route="/score_file")
    def score_file(self, file: Path) -> dict[str, Any]:
        """Scores an uploaded CSV or Parquet file in chunks; same response as ``/score``."""
        results, unknown = [], {}
        suffix = Path(getattr(file, "name", str(file))).suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            self._reject(f"unsupported file type {suffix!r}: upload a .csv or .parquet file",
                         "validation")
        tag = self.tag
        try:
            for chunk in iter_table(file):
                response = self._score_frame(self._checked(chunk), chunk.to_dict("records"))
                results += response["results"]
                tag = response["model"]
                for column, count in response["unknown_categories"].items():
                    unknown[column] = unknown.get(column, 0) + count
        except (ValueError, OSError) as error:
            if isinstance(error, SchemaError):
                self._reject(str(error), "schema")
            self._reject(f"could not read the uploaded file: {error}", "validation")
        if not results:
            self._reject("empty file: no records to score", "empty")
        return self._response(tag, results, unknown)

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` returns."""
        d = self.detector
        return {
            "tag": self.tag,
            "created": bentoml.models.get(self.tag).info.creation_time.isoformat(),
            "model_kind": d.model,
            "target_fpr": d.target_fpr,
            "threshold": _finite_or_none(d.threshold_),
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

    def _frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Records -> DataFrame, rejecting a record with a missing or unknown column."""
        expected = set(self.columns)
        for row, record in enumerate(records):
            keys = set(record) - self.ignored
            if keys != expected:
                missing, unknown = sorted(expected - keys), sorted(keys - expected)
                problem = (f"missing column {missing[0]!r}" if missing
                           else f"unknown column {unknown[0]!r}")
                self._reject(f"row {row}: {problem}; expected columns {sorted(expected)}",
                             "schema")
        return self._checked(pd.DataFrame.from_records(records, columns=self.columns))

    def _checked(self, frame: pd.DataFrame) -> pd.DataFrame:
        try:
            self.detector.encoder_.validate(frame)
        except SchemaError as error:
            self._reject(str(error), "schema")
        return frame

    def _score_frame(self, frame: pd.DataFrame, records: list[dict[str, Any]]) -> dict[str, Any]:
        unknown = {k: v for k, v in self.detector.encoder_.unknown_counts(frame).items() if v}
        clean = frame[self.columns].to_dict("records")
        verdicts = self.scorer.verdicts(clean)
        tag = verdicts[0]["model"]
        self._observe(tag, verdicts)
        results = [
            {
                "score": _finite_or_none(v["score"]),
                "log_likelihood": _finite_or_none(v["log_likelihood"]),
                "p_value": float(v["p_value"]),
                "is_anomaly": bool(v["is_anomaly"]),
            }
            for v in verdicts
        ]
        return self._response(tag, results, unknown)

    def _response(self, tag: str, results: list[dict[str, Any]],
                  unknown: dict[str, int]) -> dict[str, Any]:
        return {
            "model": tag,
            "threshold": _finite_or_none(self.detector.threshold_),
            "target_fpr": self.detector.target_fpr,
            "n": len(results),
            "results": results,
            "unknown_categories": unknown,
        }

    def _observe(self, tag: str, verdicts: list[dict[str, Any]]) -> None:
        m = self.metrics
        scores = np.array([v["score"] for v in verdicts], dtype=np.float64)
        flagged = sum(bool(v["is_anomaly"]) for v in verdicts)
        m.records.labels(tag).inc(len(verdicts))
        if flagged:
            m.anomalies.labels(tag).inc(flagged)
        score_histogram, p_histogram = m.scores.labels(tag), m.p_values.labels(tag)
        for v in verdicts:
            score_histogram.observe(v["score"])
            p_histogram.observe(v["p_value"])
        self.window.add(scores)
        now = time.monotonic()
        if now - self._drift_updated >= 1.0:  # KS on a full window costs ~1 ms; once a second
            self._drift_updated = now
            stats = self.window.statistics()
            if stats is not None:
                m.psi.labels(tag).set(stats.psi)
                m.ks_statistic.labels(tag).set(stats.ks_statistic)
                m.ks_pvalue.labels(tag).set(stats.ks_pvalue)
                m.window_anomaly_rate.labels(tag).set(stats.anomaly_rate)
                m.window_records.labels(tag).set(stats.n)


def _count_guard_rejection(reason: str) -> None:
    if _front is not None:
        _front.metrics.rejected.labels(_front.tag, reason).inc()


FlowadService.add_asgi_middleware(
    RequestGuard,
    json_routes={"/score": SETTINGS.max_body_bytes},
    upload_routes={"/score_file": SETTINGS.max_file_bytes},
    on_reject=_count_guard_rejection,
)
