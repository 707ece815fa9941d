"""Explanations for ``POST /score?explain=true``, at a bounded cost.

Explaining a record costs ``(columns + 1) x samples`` flow evaluations of hybrid records as
wide as the model (:mod:`pipelines.explain`), and each evaluation costs more the more columns
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
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import anyio
import pandas as pd
from anyio import to_thread

from pipelines.model.detector import Detector
from pipelines.model.explain import N_SAMPLES, top_contributions

log = logging.getLogger("flowad.service")
EXPLAIN_CONCURRENCY = 1  # explained requests at a time per worker: more would only share a core
CHUNK_EVALUATIONS = 4_096  # flow evaluations per chunk: ~0.1-0.4 s on one core

_limiter: anyio.CapacityLimiter | None = None  # created in the event loop, on first use


class ExplainRefusedError(Exception):
    """An explained request refused or stopped: ``status`` and ``reason`` for the answer."""

    def __init__(self, message: str, reason: str, status: HTTPStatus) -> None:
        super().__init__(message)
        self.message, self.reason, self.status = message, reason, status


def explain_work(n_records: int, n_columns: int, n_samples: int = N_SAMPLES) -> int:
    """Flow evaluations that explaining ``n_records`` records of ``n_columns`` input columns
    takes: ``n_records x (n_columns + 1) x n_samples`` (n_samples rounded up to even, as
    :func:`pipelines.explain.contributions` does).

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


async def explain_in_chunks(
    detector: Detector,
    frame: pd.DataFrame,
    top: int,
    *,
    client_gone: Callable[[], Awaitable[bool]],
    started: float,
    seconds: float,
) -> list[list[dict[str, Any]]] | None:
    """Each record's ``top`` contributions (:func:`pipelines.explain.top_contributions`), or
    None if the client went away meanwhile.

    Arguments:
        detector: the model that scored the records.
        frame: the validated records, in the model's input columns.
        top: contributions per record.
        client_gone: whether the client has disconnected.
        started: ``time.monotonic()`` when the request arrived.
        seconds: time allowed from ``started`` (``FLOWAD_EXPLAIN_SECONDS``).

    Raises:
        ExplainRefusedError: no turn to explain came in time (503), or the time ran out (413).
    """
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(EXPLAIN_CONCURRENCY)
    n_columns = len(detector.input_columns)
    step = max(1, CHUNK_EVALUATIONS // explain_work(1, n_columns))
    acquired = False
    with anyio.move_on_after(started + seconds - time.monotonic()):
        await _limiter.acquire()
        acquired = True
    if not acquired:
        raise ExplainRefusedError(
            f"no explanation could start within {seconds:g} s (FLOWAD_EXPLAIN_SECONDS): this "
            "worker is explaining other requests; retry shortly", "overloaded",
            HTTPStatus.SERVICE_UNAVAILABLE)
    try:
        explained: list[list[dict[str, Any]]] = []
        for start in range(0, len(frame), step):
            if await client_gone():
                log.info("/score?explain=true: client disconnected after %d of %d records; "
                         "stopped", start, len(frame))
                return None
            if time.monotonic() - started > seconds:
                raise ExplainRefusedError(
                    f"explaining took more than {seconds:g} s (FLOWAD_EXPLAIN_SECONDS; {start} "
                    f"of {len(frame)} records done, none returned): explain fewer records",
                    "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            chunk = frame.iloc[start : start + step]
            explained += await to_thread.run_sync(_explain, detector, chunk, top)
        return explained
    finally:
        _limiter.release()


def _explain(detector: Detector, chunk: pd.DataFrame, top: int) -> list[list[dict[str, Any]]]:
    return top_contributions(detector.explain(chunk), chunk, top)
