"""Explanations for ``POST /score?explain=true`` (optionally ``&top=k``, 1 to ``MAX_TOP``,
default ``DEFAULT_TOP``), at a bounded cost.

Each result gets its ``contributions``: the ``k`` input columns that raised its score most, with
the record's value and the contribution in nats (:mod:`pipelines.model.explain`), and the body an
``explanation`` with the reference record they are measured from and its score. The records are
scored first, as any request (validated and counted); the model that scored them explains them,
on the front worker's CPU copy (named in ``explanation.model``).

Explaining a record costs ``(columns + 1) x samples`` flow evaluations of hybrid records as
wide as the model (:mod:`pipelines.model.explain`), and each evaluation costs more the more columns
there are, so a request's cost grows with the square of the column count: on a 200-column model
100 explained records took 16 s of CPU, on a 1000-column one ~580 s. Three bounds:

* **Work**: ``records x (columns + 1) x samples``, the flow evaluations a request asks for, is at
  most ``FLOWAD_MAX_EXPLAIN_WORK``; more is a 413 naming that budget, before anything is scored
  (:func:`explain_problem`).
* **Its own thread**: a worker explains one request at a time (:data:`EXPLAIN_CONCURRENCY`), in
  a thread apart from the one plain ``/score`` requests are scored in, so a plain request never
  waits behind an explanation; they share the CPU. An explained request that waits for its
  turn longer than its time allows is a 503 to retry (reason ``overloaded``).
* **Chunks**: the records are explained a few at a time (at most :data:`CHUNK_EVALUATIONS` flow
  evaluations, or one record), and between chunks the work stops if the client has gone
  (nothing is answered) or ``FLOWAD_EXPLAIN_SECONDS`` have passed since the request arrived (a
  413 saying so: below BentoML's 120 s traffic timeout, so the client hears why rather than a
  bare 504). When the traffic timeout cancels a request anyway, the chunk in hand finishes and
  no further one starts.

A record's explanation does not depend on the records explained with it (fixed orderings), so
explaining in chunks gives what one call would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import anyio
import pandas as pd
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response

from pipelines.errors import shown
from pipelines.model.detector import Detector
from pipelines.model.explain import N_SAMPLES, top_contributions
from service.errors import RequestRejected
from service.follower import LoadedModel
from service.scoring import RETRY_AFTER_S, json_response
from service.settings import Settings

log = logging.getLogger("flowad.service")
EXPLAIN_CONCURRENCY = 1  # explained requests at a time per worker: more would only share a core
CHUNK_EVALUATIONS = 4_096  # flow evaluations per chunk: ~0.1-0.4 s on one core
DEFAULT_TOP, MAX_TOP = 5, 20  # contributions per explained record: default, most
# ``top`` as it may be written (less leading zeros): str.isdigit() also accepts "²" and "٣",
# which int() refuses or reads as 3, and int() of a 5,000-digit string raises.
TOP_VALUES = {str(k): k for k in range(1, MAX_TOP + 1)}


def explain_top(query: Mapping[str, str]) -> int | None:
    """Contributions to show per record from ``?explain=...&top=...``; None: no explanations.

    Raises:
        RequestRejected: ``explain`` other than true or false, ``top`` not an integer from 1 to
            ``MAX_TOP`` (400, ``validation``).
    """
    explain = query.get("explain", "false").lower()
    if explain not in ("true", "false"):
        raise RequestRejected(f"explain must be true or false, got {shown(explain)}",
                              "validation")
    top = query.get("top", str(DEFAULT_TOP))
    if top.lstrip("0") not in TOP_VALUES:
        raise RequestRejected(f"top must be an integer from 1 to {MAX_TOP}, got {shown(top)}",
                              "validation")
    return TOP_VALUES[top.lstrip("0")] if explain == "true" else None


def explain_work(n_records: int, n_columns: int, n_samples: int = N_SAMPLES) -> int:
    """Flow evaluations that explaining ``n_records`` records of ``n_columns`` input columns
    takes: ``n_records x (n_columns + 1) x n_samples`` (n_samples rounded up to even, as
    :func:`pipelines.model.explain.contributions` does).

    Arguments:
        n_records: records to explain.
        n_columns: the model's input columns.
        n_samples: orderings per record.
    """
    return n_records * (n_columns + 1) * (n_samples + n_samples % 2)


def explain_problem(n_records: int, n_columns: int, max_records: int,
                    max_work: int) -> str | None:
    """Why a request to explain ``n_records`` records is over its limits, or None.

    Arguments:
        n_records: records in the request.
        n_columns: the model's input columns.
        max_records: ``FLOWAD_MAX_EXPLAIN_RECORDS``.
        max_work: ``FLOWAD_MAX_EXPLAIN_WORK``, flow evaluations.
    """
    if n_records > max_records:
        return (f"{n_records} records exceed the limit of {max_records} per explained request "
                "(FLOWAD_MAX_EXPLAIN_RECORDS)")
    work = explain_work(n_records, n_columns)
    if work <= max_work:
        return None
    fits = max_work // explain_work(1, n_columns)
    advice = (f"send at most {fits} records per explained request" if fits
              else "this model has too many columns to explain a record within the budget")
    return (f"explaining {n_records} records of {n_columns} columns takes {work} flow "
            f"evaluations ({n_records} x ({n_columns} + 1) x {explain_work(1, 0)} samples), over "
            f"the budget of {max_work} per request (FLOWAD_MAX_EXPLAIN_WORK): {advice}")


class Explainer:
    """Explains the ``/score?explain=true`` requests of one front-end worker, one at a time.

    Arguments:
        settings: the service's settings (the explain limits).
    """

    def __init__(self, settings: Settings) -> None:
        self.max_records = settings.max_explain_records
        self.max_work = settings.max_explain_work
        self.seconds = settings.explain_seconds
        self._limiter: anyio.CapacityLimiter | None = None  # created in the event loop

    def check_limits(self, n_records: int, model: LoadedModel) -> None:
        """Refuses to explain ``n_records`` records with ``model`` over the limits.

        Raises:
            RequestRejected: over ``FLOWAD_MAX_EXPLAIN_RECORDS`` or ``FLOWAD_MAX_EXPLAIN_WORK``
                (413, ``too_large``).
        """
        problem = explain_problem(n_records, len(model.detector.input_columns),
                                  self.max_records, self.max_work)
        if problem:
            raise RequestRejected(problem, "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    async def respond(
        self,
        records: list[dict[str, Any]],
        top: int,
        request: Request,
        started: float,
        *,
        current: LoadedModel,
        score: Callable[[list[dict[str, Any]]], Awaitable[tuple[LoadedModel, dict[str, Any]]]],
    ) -> Response:
        """The ``/score`` body plus each record's ``top`` contributions (a 204 if the client
        went away meanwhile).

        Arguments:
            records: the request's records.
            top: contributions per record.
            request: the request (to see whether its client has gone).
            started: ``time.monotonic()`` when the request arrived.
            current: the model the worker serves now (limits are checked before scoring).
            score: scores the records: the model that scored them, and the ``/score`` body.

        Raises:
            RequestRejected: over the limits, or refused by the scoring.
        """
        self.check_limits(len(records), current)
        model, body = await score(records)
        self.check_limits(len(records), model)  # a model swapped in meanwhile
        detector = model.detector
        frame = pd.DataFrame.from_records(records, columns=detector.input_columns)
        explained = await self.explain_in_chunks(detector, frame, top,
                                                 client_gone=request.is_disconnected,
                                                 started=started)
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

    async def explain_in_chunks(
        self,
        detector: Detector,
        frame: pd.DataFrame,
        top: int,
        *,
        client_gone: Callable[[], Awaitable[bool]],
        started: float,
    ) -> list[list[dict[str, Any]]] | None:
        """Each record's ``top`` contributions (:func:`pipelines.model.explain.top_contributions`),
        or None if the client went away meanwhile.

        Arguments:
            detector: the model that scored the records.
            frame: the validated records, in the model's input columns.
            top: contributions per record.
            client_gone: whether the client has disconnected.
            started: ``time.monotonic()`` when the request arrived; the time allowed from then
                is ``FLOWAD_EXPLAIN_SECONDS``.

        Raises:
            RequestRejected: no turn to explain came in time (503, ``overloaded``), or the time
                ran out (413, ``too_large``).
        """
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(EXPLAIN_CONCURRENCY)
        limiter, seconds = self._limiter, self.seconds
        n_columns = len(detector.input_columns)
        step = max(1, CHUNK_EVALUATIONS // explain_work(1, n_columns))
        acquired = False
        with anyio.move_on_after(started + seconds - time.monotonic()):
            await limiter.acquire()
            acquired = True
        if not acquired:
            raise RequestRejected(
                f"no explanation could start within {seconds:g} s (FLOWAD_EXPLAIN_SECONDS): "
                "this worker is explaining other requests; retry shortly", "overloaded",
                HTTPStatus.SERVICE_UNAVAILABLE, RETRY_AFTER_S)
        try:
            explained: list[list[dict[str, Any]]] = []
            for start in range(0, len(frame), step):
                if await client_gone():
                    log.info("/score?explain=true: client disconnected after %d of %d records; "
                             "stopped", start, len(frame))
                    return None
                if time.monotonic() - started > seconds:
                    raise RequestRejected(
                        f"explaining took more than {seconds:g} s (FLOWAD_EXPLAIN_SECONDS; "
                        f"{start} of {len(frame)} records done, none returned): explain fewer "
                        "records", "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                chunk = frame.iloc[start : start + step]
                explained += await to_thread.run_sync(_explain, detector, chunk, top)
            return explained
        finally:
            limiter.release()


def _explain(detector: Detector, chunk: pd.DataFrame, top: int) -> list[list[dict[str, Any]]]:
    return top_contributions(detector.explain(chunk), chunk, top)
