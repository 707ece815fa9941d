"""Scoring records for the service: verdicts, where they are computed, and model agreement.

A front-end worker scores the records it checked either itself (``FLOWAD_SCORING=local``) or by
calls to the ``Scorer`` service (``scorer``: :func:`scorer_verdicts` answers them), of at most
``SCORER_CALL_ROWS`` rows however large the request, which the scorer's dispatcher can batch
with other clients' calls. A call the scorer sheds as overloaded, or whose connection drops, is
tried again; if it still fails, or the scorer cannot be reached, the answer is a 503 with
``Retry-After`` (reason ``overloaded``), never a bare 500 (:func:`call_scorer`).

Every row names the model it was checked against: the front and the scorer each follow the
production pointer on their own, so during a swap they can disagree, and the new model can have
other columns. The scorer scores a row only with the model it names; the front, told that the
scorer serves another model, catches up and scores the request again with the model it then
serves (:meth:`RecordScoring.agreed`), or answers 503 (reason ``model_changing``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import aiohttp
import numpy as np
import orjson
import pandas as pd
from bentoml.exceptions import ServiceUnavailable
from starlette.responses import Response

from pipelines.errors import SchemaError, UnscorableRecordError, shown
from service.errors import RequestRejected
from service.follower import LoadedModel, ModelFollower

log = logging.getLogger("flowad.service")
# Rows per call to the scorer: a few milliseconds of work, which its dispatcher can batch with
# other requests' calls (max_batch_size) instead of shedding one huge call.
SCORER_CALL_ROWS = 2_000
RETRY_AFTER_S = 1  # a shed call or a model swap is over within about a second
SCORER_RETRY_PAUSES_S = (0.1, 0.3)  # before trying again a call the scorer shed or dropped
VERDICT_COLUMNS = ("score", "log_likelihood", "p_value", "is_anomaly")
T = TypeVar("T")


class ModelMismatchError(Exception):
    """The scorer answered rows with another model than the one the front worker checked
    them against (each follows the production pointer on its own)."""

    def __init__(self, front: str, scorer: set[str]) -> None:
        super().__init__(f"this worker serves {front}, the scorer {', '.join(sorted(scorer))}")


@dataclass(frozen=True)
class Verdicts:
    """One request's verdicts, as columns, and the model that scored them."""

    score: np.ndarray
    log_likelihood: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    tag: str
    threshold: float
    target_fpr: float | None

    @classmethod
    def of(cls, model: LoadedModel, frame: pd.DataFrame) -> Verdicts:
        """Scores a validated frame with ``model``."""
        detector = model.detector
        out = detector.verdict_columns(frame)
        return cls(out["score"], out["log_likelihood"], out["p_value"], out["is_anomaly"],
                   model.tag, detector.threshold_, model.target_fpr)

    @classmethod
    def of_records(cls, model: LoadedModel,
                   records: list[dict[str, Any]]) -> tuple[Verdicts, dict[str, int]]:
        """Scores records with ``model`` (checking them; a few without a DataFrame), with the
        unseen categories per column."""
        detector = model.detector
        out, unknown = detector.record_verdicts(records)
        return cls(out["score"], out["log_likelihood"], out["p_value"], out["is_anomaly"],
                   model.tag, detector.threshold_, model.target_fpr), unknown

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
                                 model.detector.threshold_, model.target_fpr))
        return cls.concat(parts)

    @classmethod
    def from_rows(cls, rows: list[list[Any]], tag: str) -> Verdicts:
        """Unpacks what :func:`scorer_verdicts` returns for rows sent for model ``tag``.

        Raises:
            ModelMismatchError: a row the scorer answered with another model (it does not serve
                ``tag``).
            UnscorableRecordError: a row the scorer could not score (NaN).
        """
        columns = list(zip(*rows, strict=True))
        scored_by = set(columns[4])
        if scored_by != {tag}:
            raise ModelMismatchError(tag, scored_by - {tag})
        score, log_likelihood, p_value, is_anomaly = (np.asarray(c) for c in columns[:4])
        verdicts = cls(score, log_likelihood, p_value, is_anomaly, tag, rows[0][5], rows[0][6])
        nan = np.flatnonzero(np.isnan(verdicts.log_likelihood.astype(np.float64)))
        if len(nan):
            raise UnscorableRecordError(int(nan[0]), count=len(nan))
        return verdicts

    @classmethod
    def concat(cls, parts: list[Verdicts]) -> Verdicts:
        """One request's verdicts from those of its chunks (all scored by one model)."""
        score, log_likelihood, p_value, is_anomaly = (
            np.concatenate([getattr(p, c) for p in parts]) for c in VERDICT_COLUMNS)
        first = parts[0]
        return cls(score, log_likelihood, p_value, is_anomaly, first.tag, first.threshold,
                   first.target_fpr)

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


def json_response(body: dict[str, Any], status: int = HTTPStatus.OK) -> Response:
    """A ready-made response: BentoML does not re-validate it against the API's output type
    (a third of the time of a 1000-record request), and orjson encodes 5-10x faster."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def scorer_verdicts(follower: ModelFollower, rows: list[list[Any]]) -> list[list[Any]]:
    """The ``Scorer`` service's answer to rows ``[model tag, *values in that model's schema
    order]``: ``[score, log_likelihood, p_value, is_anomaly, model tag, threshold, target FPR]``
    per row (plain lists: cheaper than dicts both ways).

    A row is only scored by the model it names, whose columns it holds: a batch merges the calls
    of every front worker, and each one swaps models on its own. The tag costs little per row:
    the front puts one string object in all its rows, which pickle sends once. A row for a model
    the scorer does not serve makes it load the production model now (it may have just been
    promoted); a row whose model it still does not serve comes back unscored, with the scorer's
    tag, for the front to retry with that model.

    Arguments:
        follower: the scorer's model follower.
        rows: the rows of a batch, from any number of calls.
    """
    model = follower.current  # one model for the whole batch
    if any(row[0] != model.tag for row in rows):
        follower.refresh()
        model = follower.current
    served = [row[1:] for row in rows if row[0] == model.tag]
    scored = iter(_verdict_rows(model, served) if served else [])
    unserved = [math.nan, math.nan, math.nan, False, model.tag, math.nan, math.nan]
    return [next(scored) if row[0] == model.tag else unserved for row in rows]


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


def unscorable(model: LoadedModel, error: SchemaError) -> RequestRejected:
    """A record that passed every input check but has no log-likelihood: a 422, and a warning
    in the log, since it means the checks missed something or the model is bad."""
    log.warning("%s could not score a record that passed the input checks: %s", model.tag,
                error)
    return RequestRejected(str(error), "unscorable", HTTPStatus.UNPROCESSABLE_ENTITY)


def model_changing(mismatch: ModelMismatchError) -> RequestRejected:
    """The 503 of a front and a scorer that still serve different models after a retry."""
    return RequestRejected(f"the served model is being changed ({mismatch}); retry shortly",
                           "model_changing", HTTPStatus.SERVICE_UNAVAILABLE, RETRY_AFTER_S)


def check_columns(model: LoadedModel, records: list[dict[str, Any]]) -> None:
    """Rejects a record with a missing or unknown column.

    Raises:
        RequestRejected: the first such record (400, ``schema``).
    """
    expected = set(model.detector.input_columns)
    ignored = set(model.detector.exclude)
    for row, record in enumerate(records):
        keys = set(record) - ignored
        if keys != expected:
            missing, unknown = sorted(expected - keys), sorted(keys - expected)
            problem = (f"missing column {shown(missing[0])}" if missing
                       else f"unknown column {shown(unknown[0])}")
            raise RequestRejected(f"row {row}: {problem}; expected columns {sorted(expected)}",
                                  "schema")


class RecordScoring:
    """Scores one front-end worker's checked records: here, or on the ``Scorer`` service.

    Arguments:
        follower: the worker's model follower (its CPU copy of the production model).
        scorer: the ``Scorer`` service (a BentoML dependency), or None to score here.
    """

    def __init__(self, follower: ModelFollower, scorer: Any | None) -> None:
        self.follower = follower
        self.scorer = scorer

    def score_records(self, records: list[dict[str, Any]],
                      max_records: int) -> tuple[LoadedModel, Verdicts, dict[str, int]]:
        """Checks and scores the records of a ``/score`` request: the model that scored them,
        their verdicts, and the unseen categories per column (those seen only).

        Arguments:
            records: the request's records.
            max_records: ``FLOWAD_MAX_RECORDS``.

        Raises:
            RequestRejected: no records, too many, a record the schema refuses, one the model
                cannot score, a scorer that cannot be reached or serves another model.
        """
        if not records:
            raise RequestRejected("empty request: no records to score", "empty")
        if len(records) > max_records:
            raise RequestRejected(
                f"{len(records)} records exceed the limit of {max_records} per request",
                "too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return self.agreed(lambda model: self._check_and_score(model, records))

    def _check_and_score(self, model: LoadedModel, records: list[dict[str, Any]]
                         ) -> tuple[LoadedModel, Verdicts, dict[str, int]]:
        check_columns(model, records)
        try:  # every record is checked against the schema before anything is scored
            if self.scorer is not None:  # the scorer is sent the rows of a checked frame
                frame = pd.DataFrame.from_records(records, columns=model.detector.input_columns)
                verdicts = self.verdicts(model, frame)
                unknown = model.detector.unknown_counts(frame)
            else:  # pipelines builds no frame for a few records
                verdicts, unknown = Verdicts.of_records(model, records)
        except UnscorableRecordError as error:
            raise unscorable(model, error) from None
        except SchemaError as error:
            raise RequestRejected(str(error), "schema") from None
        return model, verdicts, {k: v for k, v in unknown.items() if v}

    def agreed(self, score: Callable[[LoadedModel], T]) -> T:
        """``score(model)`` with this worker's model (read once: a request keeps its model even
        if a swap happens meanwhile), or, if the scorer serves another, once more with the
        model this worker then serves (:meth:`catch_up`).

        Raises:
            RequestRejected: they still differ (503, ``model_changing``).
        """
        try:
            return score(self.follower.current)
        except ModelMismatchError:
            self.catch_up()
        try:
            return score(self.follower.current)
        except ModelMismatchError as mismatch:
            raise model_changing(mismatch) from None

    def catch_up(self) -> None:
        """Loads the production model now, without waiting for the next poll: the scorer, which
        does so when it sees a model it does not serve, serves another model than this
        worker's, most likely a newer one. A model that failed to load here stays backing off
        (not ``now=True``): every request must not try to load it again."""
        self.follower.refresh()

    def verdicts(self, model: LoadedModel, frame: pd.DataFrame) -> Verdicts:
        """Validates and scores a frame, here or on the ``Scorer`` (in calls of at most
        ``SCORER_CALL_ROWS`` rows, each row led by the model's tag).

        Raises:
            ModelMismatchError: the scorer serves another model.
            RequestRejected: the scorer cannot be reached or keeps shedding the calls (503).
        """
        scorer = self.scorer
        if scorer is None:
            return Verdicts.of(model, frame)  # the encoder validates it
        detector = model.detector
        detector.validate(frame)
        tag = model.tag
        rows = [(tag, *values)
                for values in frame[detector.input_columns].itertuples(index=False, name=None)]
        answers: list[list[Any]] = []
        for start in range(0, len(rows), SCORER_CALL_ROWS):
            answers += call_scorer(scorer, rows[start : start + SCORER_CALL_ROWS])
        return Verdicts.from_rows(answers, tag)


def call_scorer(scorer: Any, rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """The scorer's answer to ``rows``.

    BentoML's client (aiohttp) raises ServiceUnavailable for the dispatcher's "process is
    overloaded" (a call it sheds unscored when its queue would take longer than
    max_latency_ms), an aiohttp.ClientError when the connection fails or is dropped, and
    TimeoutError past the traffic timeout. A dropped connection is not always the scorer's
    doing: BentoML 1.4's client replaces its session every 100 calls by closing the old
    one, with the calls of the worker's other threads still in flight on it. So a call
    that was shed or dropped (scoring has no side effects) is tried again after a pause;
    one that timed out has used the request's time already.

    Arguments:
        scorer: the ``Scorer`` service (BentoML's client of it, or the instance in-process).
        rows: at most ``SCORER_CALL_ROWS`` rows ``[model tag, *values]``.

    Raises:
        RequestRejected: the scorer cannot be reached or keeps shedding the call (503,
            ``overloaded``, with ``Retry-After``).
    """
    pauses = iter(SCORER_RETRY_PAUSES_S)
    while True:
        try:
            answer: list[list[Any]] = scorer.verdicts(rows)
            return answer
        except (ServiceUnavailable, aiohttp.ClientError, TimeoutError) as error:
            pause = None if isinstance(error, TimeoutError) else next(pauses, None)
            if pause is None:
                raise _scorer_unavailable(len(rows), error) from None
            time.sleep(pause)


def _scorer_unavailable(rows: int, error: Exception) -> RequestRejected:
    log.warning("the scorer did not score %d rows: %s: %s", rows, type(error).__name__, error)
    problem = ("is overloaded" if isinstance(error, ServiceUnavailable)
               else f"could not be reached ({type(error).__name__})")
    return RequestRejected(f"the scorer {problem}; retry shortly", "overloaded",
                           HTTPStatus.SERVICE_UNAVAILABLE, RETRY_AFTER_S)
