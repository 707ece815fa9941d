"""The flowad BentoML service: ``POST /score``, ``POST /score_file``, ``GET /model``,
``POST /admin/reload``. This module is the BentoML wiring only: the two services, their
decorators, routes and middleware; the work is done in the modules it names.

Two services, composed the BentoML way:
- ``Scorer`` holds the detector on the accelerator (CUDA when present) and exposes one
  batchable API: adaptive batching merges the records of concurrent requests into one call.
- ``FlowadService`` is the HTTP front: it parses and checks requests (:mod:`service.guard`; a
  bad request never reaches the batch, so it cannot affect other clients' records), has them
  scored (:mod:`service.scoring`) and explained (``?explain=true``: :mod:`service.explaining`),
  scores uploaded files (:mod:`service.files`), describes the model (:mod:`service.model_info`),
  and keeps the Prometheus metrics and the drift window (:mod:`service.telemetry`).
Where the records are scored is ``FLOWAD_SCORING`` (:class:`~service.settings.Deployment`):
with a GPU, by the scorer; on a CPU-only host, by the front worker itself, one worker per
core: there the scorer would compete for the same cores, and the hop to it (serialising every
record both ways) cost more than scoring them. ``scorer`` is only a dependency in the first
case. In tests (``FlowadService.to_asgi()``) the scorer runs in-process; under ``bentoml serve``
it is its own process and the front's workers reach it over BentoML's internal transport.

State: the decorators' arguments (:class:`~service.settings.Deployment`) are read when this
module is imported, since ``bentoml serve`` and ``bentoml build`` read the decorators then (and
the other settings are checked then, not kept).
Everything else belongs to the service instance BentoML creates in each worker: its settings
(:class:`~service.settings.Settings`), model follower, metrics and drift window. The Starlette
routes and the request checks reach it through the state of the routes' Starlette app, where
the instance puts itself when it starts (:func:`front_of`): ``bentoml.get_current_service()``
would do in a worker, but it is one per process, and an app that stops clears it for every
other app in the process (tests start several). A test starts a front of its own settings
with :func:`front_service`.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Annotated, Any, ClassVar

import anyio
import bentoml
import torch
from anyio import to_thread
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics as service_metrics
from service.bentoml_compat import RestorePath, bound_endpoint_label
from service.errors import RequestRejected
from service.explaining import Explainer, explain_top
from service.files import FileScoring, stream_body
from service.follower import LoadedModel, ModelFollower
from service.guard import (
    PARSED_RECORDS,
    AdminAuth,
    RequestGuard,
    parse_json,
    records_of,
    shape_error,
)
from service.model_info import model_info
from service.openapi import DocumentRoutes
from service.scoring import RecordScoring, json_response, scorer_verdicts
from service.settings import Deployment, Settings
from service.telemetry import Telemetry

DEPLOYMENT = Deployment.from_env()
# Every setting is read now too, and dropped: one that cannot be read (a number that is not one,
# a token no client can send) then stops `bentoml serve` and `bentoml build` where they start.
# A worker that fails to start its instance is restarted by BentoML for ever.
Settings.from_env()
TRAFFIC = {"timeout": 120}
ADMIN_PATHS = ("/admin/reload",)


class ScoreRequest(bentoml.IODescriptor):
    """The ``/score`` input as documented: ``{"records": [...]}``, each record typed from the
    served model's training schema (``RequestGuard`` also accepts the bare array)."""

    # typed, and limited to FLOWAD_MAX_RECORDS, in /docs.json by DocumentRoutes
    records: Annotated[list[dict[str, Any]], Field(min_length=1)]

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ScoreRequest:
        """The records ``RequestGuard`` parsed and shape-checked, without parsing them again
        (nor through this model: the encoder validates the records against the schema)."""
        records = request.scope.get(PARSED_RECORDS)
        if records is None:  # not through the guard: its parse and shape check here
            try:
                body = parse_json(await request.body())
            except (ValueError, UnicodeDecodeError) as error:
                raise RequestRejected(f"malformed JSON: {error}", "malformed_json") from None
            problem = shape_error(body)
            if problem:
                raise RequestRejected(problem, "validation")
            records = records_of(body)
        return cls.model_construct(records=records)


@bentoml.service(resources=DEPLOYMENT.scorer_resources(), workers=1, traffic=TRAFFIC,
                 envs=DEPLOYMENT.thread_envs())
class Scorer:
    """Scores validated records with the flow; the only place that touches the accelerator."""

    def __init__(self) -> None:
        settings = Settings.from_env()
        torch.set_num_threads(settings.torch_threads)
        bound_endpoint_label(known_path)
        self.follower = ModelFollower(settings.model, device="auto")
        self.follower.poll_every(settings.reload_interval)

    # max_latency_ms is a hard cap: BentoML's dispatcher answers 503 "overloaded" to requests
    # it predicts will exceed it. 50 ms shed requests while a new model was loading on this
    # 2-core machine. It also bounds the waits the dispatcher learns while collecting batches
    # (5 s let those grow to 100-300 ms at low concurrency), hence 500 ms.
    @bentoml.api(batchable=True, max_batch_size=20_000, max_latency_ms=500)
    def verdicts(self, rows: list[list[Any]]) -> list[list[Any]]:
        """Verdicts of rows ``[model tag, *values]`` (:func:`service.scoring.scorer_verdicts`)."""
        return scorer_verdicts(self.follower, rows)

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        """Loads the production model now if it changed: ``{"model": the tag being served,
        "problem": why the production model is not being served, or None}``."""
        self.follower.refresh(now=True)
        return {"model": self.follower.current.tag, "problem": self.follower.problem()}


class Front:
    """The HTTP front of one worker; ``FlowadService`` is this class as :func:`front_service`
    declares it."""

    deployment: ClassVar[Deployment]  # what the service was declared with
    routes: ClassVar[Starlette]  # the Starlette app of its plain routes
    scorer: Any  # the Scorer dependency, declared only where records are scored there

    def __init__(self) -> None:
        settings = self.settings = Settings.from_env()
        torch.set_num_threads(settings.torch_threads)
        bound_endpoint_label(known_path)
        service_metrics.forget_dead_processes()  # e.g. the worker this one replaces
        self.telemetry = Telemetry(settings.drift_window)
        # The front only validates and describes: its copy of the detector stays on the CPU.
        self.follower = ModelFollower(settings.model, device="cpu",
                                      on_swap=self.telemetry.on_swap,
                                      on_failure=self.telemetry.on_load_failure)
        self.follower.poll_every(settings.reload_interval)
        self.scoring = RecordScoring(
            self.follower, self.scorer if self.deployment.remote_scoring else None)
        self.files = FileScoring(self.scoring, settings)
        self.explainer = Explainer(settings)
        self._scoring_thread: anyio.CapacityLimiter | None = None  # made in the event loop
        self.routes.state.front = self  # for the routes and the request checks: front_of()

    def __is_ready__(self) -> bool:
        return front_of(self.routes) is self

    @property
    def tag(self) -> str:
        """The model this worker serves."""
        return self.follower.current.tag

    def count_rejection(self, reason: str) -> None:
        """Counts a rejected request (of this worker's model)."""
        self.telemetry.count_rejection(self.tag, reason)

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, records: list[dict[str, Any]], ctx: bentoml.Context) -> Any:
        """Scores a JSON array of records (or ``{"records": [...]}``), in order; with
        ``?explain=true``, explains them too (:mod:`service.explaining`).

        ``RequestGuard`` has parsed and checked the body; ``ScoreRequest`` takes its records.
        Scoring runs in a thread of its own, one request at a time per worker (as BentoML runs
        a synchronous API); explanations in another.
        """
        started = time.monotonic()
        try:
            top = explain_top(ctx.request.query_params)
            if top is None:
                return json_response((await self._scored(records))[1])
            return await self.explainer.respond(records, top, ctx.request, started,
                                                current=self.follower.current,
                                                score=self._scored)
        except RequestRejected as rejected:
            self.count_rejection(rejected.reason)
            # an API that takes ctx answers with ctx.response's status, whatever it returns
            ctx.response.status_code = rejected.status
            return rejected.response()

    async def _scored(self, records: list[dict[str, Any]]) -> tuple[LoadedModel, dict[str, Any]]:
        """The model that scored the records and their ``/score`` body, in the scoring thread."""
        if self._scoring_thread is None:
            self._scoring_thread = anyio.CapacityLimiter(1)
        return await to_thread.run_sync(self._score_and_observe, records,
                                        limiter=self._scoring_thread)

    def _score_and_observe(self, records: list[dict[str, Any]]
                           ) -> tuple[LoadedModel, dict[str, Any]]:
        model, verdicts, unknown = self.scoring.score_records(records, self.settings.max_records)
        self.telemetry.observe(verdicts)
        return model, verdicts.response(unknown)

    async def score_file(self, request: Request) -> Response:
        """``POST /score_file`` (:mod:`service.files`): the verdicts streamed, counted once the
        whole file passed; a 204 if the client went away (nothing counted)."""
        try:
            scored = await self.files.score_upload(request)
        except RequestRejected as rejected:
            self.count_rejection(rejected.reason)
            return rejected.response()
        if scored is None:
            return Response(status_code=HTTPStatus.NO_CONTENT)
        parts, unknown = scored
        for part in parts:
            self.telemetry.observe(part)
        return StreamingResponse(stream_body(parts, unknown), media_type="application/json")

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
        scorer = (self.scoring.scorer.reload() if self.scoring.scorer is not None
                  else {"model": self.tag, "problem": None})
        body = {"model": self.tag, "previous": previous, "scorer_model": scorer["model"],
                "changed": self.tag != previous}
        problems = [p for p in (self.follower.problem(), scorer["problem"]) if p]
        if problems:
            ctx.response.status_code = HTTPStatus.CONFLICT
            body |= {"error": " / ".join(dict.fromkeys(problems)), "reason": "model_check"}
        return body

    def request_checks(self, app: ASGIApp) -> ASGIApp:
        """This worker's checks around ``app``, outermost first: the docs of the served model,
        the admin token, the request bodies (rejections counted)."""
        settings = self.settings
        guarded = RequestGuard(app, json_routes={"/score": settings.max_body_bytes},
                               upload_routes={"/score_file": settings.max_file_bytes},
                               body_timeout=settings.body_timeout,
                               on_reject=self.count_rejection)
        return DocumentRoutes(AdminAuth(guarded, paths=ADMIN_PATHS, token=settings.admin_token),
                              served=self._documented)

    def _documented(self) -> tuple[str, Any, int]:
        current = self.follower.current
        return current.tag, current.detector.schema, self.settings.max_records


def front_of(routes: Starlette) -> Front | None:
    """The front instance that serves ``routes`` (its service's Starlette app), None before
    BentoML created it."""
    front = getattr(routes.state, "front", None)
    return front if isinstance(front, Front) else None


def not_started() -> RequestRejected:
    return RequestRejected("model not loaded", "not_ready", HTTPStatus.SERVICE_UNAVAILABLE)


class RequestChecks:
    """ASGI middleware running :meth:`Front.request_checks` of the service's instance: BentoML
    builds its middleware before it creates the instance, whose settings the checks take.

    Arguments:
        app: the wrapped ASGI application.
        routes: the Starlette app of the service's plain routes (:func:`front_of`).
    """

    def __init__(self, app: ASGIApp, routes: Starlette) -> None:
        self.app = app
        self.routes = routes
        self._checks: tuple[Front | None, ASGIApp] = (None, app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        front = front_of(self.routes)
        if front is None:
            await not_started().send(send)
            return
        if self._checks[0] is not front:
            self._checks = (front, front.request_checks(self.app))
        await self._checks[1](scope, receive, send)


async def get_model(request: Request) -> Response:
    """``GET /model`` (:mod:`service.model_info`)."""
    front = front_of(request.app)
    if front is None:
        return not_started().response()
    return JSONResponse(model_info(front.follower.current, front.settings))


async def post_score_file(request: Request) -> Response:
    """``POST /score_file``: a plain Starlette route rather than a BentoML API, so that the
    upload is parsed here (BentoML's file input downloads any URL sent in place of a file,
    writes the client's file name to disk and answers 500 to a malformed multipart body) and
    scoring stops when the client goes away or the time is up."""
    front = front_of(request.app)
    if front is None:
        return not_started().response()
    return await front.score_file(request)


ROUTES = [Route("/model", get_model, methods=["GET"]),
          Route("/score_file", post_score_file, methods=["POST"])]


def front_service(declared: Deployment) -> Any:
    """The ``FlowadService`` BentoML service as ``declared``: the ``Scorer`` a dependency where
    records are scored there, the bundled model declared for ``bentoml build``.

    Arguments:
        declared: what the decorators declare (the module's ``FlowadService``: the
            environment's :class:`~service.settings.Deployment`).
    """

    plain_routes = Starlette(routes=ROUTES)

    @bentoml.asgi_app(plain_routes, path="/")
    @bentoml.service(workers=declared.workers, traffic=TRAFFIC, envs=declared.thread_envs())
    class FlowadService(Front):
        """HTTP front: request validation, metrics, drift; scoring here or by ``Scorer``."""

        deployment = declared
        routes = plain_routes
        if declared.remote_scoring:
            scorer = bentoml.depends(Scorer)
        if declared.bundled_tag is not None:
            # Declared so that BentoML ships it with the Bento (service/bundle.py); never read
            # through this attribute: the follower loads and verifies the model.
            bundled_model = bentoml.models.BentoModel(declared.bundled_tag)

    service: Any = FlowadService  # a bentoml.Service, which mypy does not see decorators make
    service.add_asgi_middleware(RestorePath)  # first: the others read paths
    service.add_asgi_middleware(RequestChecks, routes=plain_routes)
    return service


FlowadService = front_service(DEPLOYMENT)
SCORER_SERVICE: Any = Scorer
SCORER_SERVICE.add_asgi_middleware(RestorePath)

# Paths the service answers; any other is one "unmatched" value of BentoML's endpoint label.
KNOWN_PATHS = frozenset({
    "/", "/docs.json", "/schema.json", "/livez", "/healthz", "/readyz", "/metrics",
    *(api.route for service in (FlowadService, SCORER_SERVICE) for api in service.apis.values()),
    *(route.path for route in ROUTES),
})
KNOWN_PREFIXES = ("/static_content/", "/assets/")  # the docs page's files


def known_path(path: str) -> bool:
    """Whether the service answers ``path`` (else BentoML's metrics label it unmatched)."""
    return path in KNOWN_PATHS or path.startswith(KNOWN_PREFIXES)
