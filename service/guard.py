"""ASGI middleware that rejects oversized and malformed request bodies with a clear 4xx.

BentoML has no request-size limit, and a body that isn't JSON reaches its parser as a 500.
This middleware reads the body of JSON POSTs once (stopping as soon as it exceeds the limit),
checks that it parses and has the shape ``[{...}, ...]`` or ``{"records": [{...}, ...]}``,
and hands the parsed records on in the ASGI scope (``scope[PARSED_RECORDS]``): the API's input
spec takes them from there instead of parsing the body a second time (pydantic's parse was 7%
of a 1000-record request), so either shape is accepted. The body is replayed unchanged.

Uploads are not buffered (a 512 MiB file would sit in memory several times over): their bytes
pass through as they arrive, counted, and the first message past the limit raises a 413
:class:`~service.errors.RequestRejected` to the route reading them (answered here if the route
lets it through).

A body must also arrive in time: a JSON body within ``body_timeout`` seconds, an upload without
a pause longer than that (it may take longer as a whole). A client that stops sending would
otherwise hold its connection until BentoML's traffic timeout and get a 504, which counts as a
server error; it gets a 408 instead (an upload's pause raises it to the route, as above). Only
the identity content encoding is accepted (415 otherwise): a compressed body would reach the
parsers as bytes they cannot read. A JSON route's body must be declared JSON
(``Content-Type: application/json`` or a ``+json`` type, parameters such as ``charset``
allowed; 415 otherwise): a browser sends ``text/plain`` and form bodies cross-site without
asking the server first (no CORS preflight), so any web page could otherwise feed records into
the drift window and the anomaly counters.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.errors import shown
from service.errors import RequestRejected

PARSED_RECORDS = "flowad.records"  # the scope key of a checked body's record list


def body_too_large(limit: int) -> RequestRejected:
    """A body over its byte limit (413)."""
    return RequestRejected(f"request body exceeds {limit} bytes", "too_large",
                           HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


def body_timeout(seconds: float, what: str = "the rest of the upload") -> RequestRejected:
    """A body that stopped arriving: nothing came for ``seconds`` (408)."""
    return RequestRejected(f"{what} did not arrive within {seconds:g} s (FLOWAD_BODY_TIMEOUT_S)",
                           "timeout", HTTPStatus.REQUEST_TIMEOUT)


def parse_json(body: bytes) -> Any:
    """orjson (3x faster) with a fallback to the standard parser, which also accepts the
    ``NaN``/``Infinity`` tokens that clients such as Python's ``json`` emit: their values
    then reach validation and are rejected there with the row and column named.

    Raises:
        ValueError: not JSON, nested too deeply to be records (the standard parser raises
            ``RecursionError`` past ~1000 levels; orjson stops at 1024), or a string holding a
            lone surrogate (``UnicodeEncodeError``).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            parsed = json.loads(body)
            # The standard parser also accepts escaped lone surrogates ("\ud800"), which are
            # not text: no column holds them, and encoding one later (pandas, a response) fails.
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")
        except RecursionError:
            raise ValueError("JSON nested too deeply (records are flat objects)") from None
        return parsed


def is_json_media_type(content_type: str) -> bool:
    """Whether a ``Content-Type`` value declares JSON: ``application/json`` or any
    ``type/subtype+json`` (RFC 6839), with or without parameters, in any case.

    Arguments:
        content_type: the header's value ("" when there is none).
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind, slash, subtype = media_type.partition("/")
    if not (kind and slash and subtype) or any(c.isspace() for c in media_type):
        return False
    return media_type == "application/json" or subtype.endswith("+json")


def records_of(body: Any) -> list[Any] | None:
    """The record list of a parsed body, or None if it has neither accepted shape."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        return body["records"]
    return None


def shape_error(body: Any) -> str | None:
    """Why a parsed JSON body is not a list of records, or None if it is one."""
    records = records_of(body)
    if records is None:
        return 'expected a JSON array of records or an object {"records": [...]}'
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            return f"row {row}: expected an object keyed by column name, got {shown(record)}"
    return None


class RequestGuard:
    """Arguments:
    app: the wrapped ASGI application.
    json_routes: paths whose bodies must be JSON record lists, with their byte limits.
    upload_routes: paths of file uploads, with their byte limits (size check only).
    body_timeout: seconds allowed to receive a JSON body, and the longest pause in an upload.
    on_reject: called with a reason ("too_large", "malformed_json", "validation", "timeout",
        "encoding", "content_type") per rejection.
    """

    def __init__(
        self,
        app: ASGIApp,
        json_routes: dict[str, int],
        upload_routes: dict[str, int],
        body_timeout: float,
        on_reject: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.app = app
        self.json_routes = json_routes
        self.upload_routes = upload_routes
        self.body_timeout = body_timeout
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        limits = {**self.upload_routes, **self.json_routes}
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in limits:
            await self.app(scope, receive, send)
            return
        limit = limits[path]
        headers = dict(scope.get("headers", []))
        encoding = headers.get(b"content-encoding", b"").decode("latin-1")
        if encoding.strip().lower() not in ("", "identity"):
            await self._reject(send, RequestRejected(
                f"content encoding {shown(encoding)} is not supported: send the body "
                "uncompressed (identity)", "encoding", HTTPStatus.UNSUPPORTED_MEDIA_TYPE))
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if path in self.json_routes and not is_json_media_type(content_type):
            await self._reject(send, RequestRejected(
                f"content type {shown(content_type or '(none)')} is not supported: send the "
                "records as application/json", "content_type",
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE))
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, body_too_large(limit))
            return
        if path in self.upload_routes:
            await self._stream_upload(scope, receive, send, limit)
            return
        try:
            with anyio.fail_after(self.body_timeout):
                body = await _read_body(receive, limit)
        except TimeoutError:
            await self._reject(send, body_timeout(self.body_timeout, "the request body"))
            return
        if body is None:
            await self._reject(send, body_too_large(limit))
            return
        try:
            parsed = parse_json(body)
        except (ValueError, UnicodeDecodeError) as error:
            await self._reject(send, RequestRejected(f"malformed JSON: {error}",
                                                     "malformed_json"))
            return
        problem = shape_error(parsed)
        if problem:
            await self._reject(send, RequestRejected(problem, "validation"))
            return
        scope = {**scope, PARSED_RECORDS: records_of(parsed)}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # then the real channel, so that a client's disconnect is seen
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _stream_upload(self, scope: Scope, receive: Receive, send: Send,
                             limit: int) -> None:
        """Passes an upload through as it arrives, counting its bytes; 413 past ``limit``,
        408 after a pause longer than ``body_timeout``, raised to the route as it reads."""
        received = 0
        complete = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, complete
            if complete:  # the app now waits for a disconnect, as long as it likes
                return await receive()
            try:
                with anyio.fail_after(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                raise body_timeout(self.body_timeout) from None
            complete = not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > limit:
                raise body_too_large(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except RequestRejected as error:  # one the route let through unanswered
            if started:  # the route answered already; nothing left to say
                raise
            await self._reject(send, error)

    async def _reject(self, send: Send, error: RequestRejected) -> None:
        """Counts and answers a rejection."""
        self.on_reject(error.reason)
        await error.send(send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit`` bytes."""
    body = bytearray()
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        more = message.get("more_body", False)
    return bytes(body)


class AdminAuth:
    """Bearer-token check for admin routes, in front of BentoML (which would replace the body
    of a 401/403 raised inside an API by "Authorization error").

    The token is compared as bytes: the header's bytes as they arrived with the token's UTF-8
    bytes, neither decoded (:func:`service.settings.admin_token` lets only printable ASCII
    tokens through, which every client sends as the same bytes).

    Arguments:
        app: the wrapped ASGI application.
        paths: the protected paths.
        token: the expected token; None disables the paths (404).
    """

    def __init__(self, app: ASGIApp, paths: tuple[str, ...], token: str | None) -> None:
        self.app = app
        self.paths = paths
        self.token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.token is None:
            await RequestRejected("admin endpoints are disabled: set FLOWAD_ADMIN_TOKEN to "
                                  "enable them", "admin_disabled", HTTPStatus.NOT_FOUND).send(send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            await RequestRejected("missing bearer token", "unauthorized",
                                  HTTPStatus.UNAUTHORIZED).send(send)
            return
        if not hmac.compare_digest(given, self.token):
            await RequestRejected("invalid token", "forbidden", HTTPStatus.FORBIDDEN).send(send)
            return
        await self.app(scope, receive, send)

