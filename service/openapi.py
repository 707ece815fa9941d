"""The ``/score`` request schema, written from the served model's training schema, and the
docs of the service's plain Starlette routes (``/score_file``, ``/model``).

``/docs.json`` then documents every column with its JSON type (so clients, and fuzzers such as
schemathesis, know what a record looks like) instead of ``list[dict]``, and the most records a
request may hold. :class:`DocumentRoutes` writes both into BentoML's document as it is served,
from the model the worker serves at that moment: a model hot-swapped in with other columns is
documented from then on. Validation itself stays in
:meth:`pipelines.tabular.schema.Schema.check`: the request is not parsed through this model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.tabular.columns import BOOL_DTYPES, ColumnSpec
from pipelines.tabular.schema import Schema

log = logging.getLogger("flowad.service")
EXAMPLE_CATEGORIES = 10  # categories listed as examples per categorical column


def _field(spec: ColumnSpec) -> tuple[Any, Any]:
    """The annotation and pydantic field of one column, named by its alias."""
    if spec.kind == "categorical":
        kind: Any = str
        extra: dict[str, Any] = {"examples": list((spec.categories or ())[:EXAMPLE_CATEGORIES])}
        about = "text; a category unseen in training is scored as unlikely, not rejected"
    elif spec.dtype in BOOL_DTYPES:
        kind, extra, about = bool, {}, "true or false"
    else:
        kind, extra = float, {"examples": [spec.min]}
        about = f"a number ({spec.kind}; training range {spec.min:g} to {spec.max:g})"
    if spec.n_missing_train:
        kind, about = kind | None, f"{about}; null when missing"
    return kind, Field(..., alias=spec.name, title=spec.name, description=about,
                       json_schema_extra=extra or None)


def record_model(schema: Schema) -> Any:
    """A pydantic model of one record: a required field per column, excluded columns (ids,
    labels) optional and untyped, nothing else allowed; or, if the docs cannot express the
    schema, ``dict[str, Any]`` (untyped records), with a warning in the log.

    Training accepts any string as a column name, pydantic does not take every one as a field
    name (``_id``, ``model_dump``, ``json``, ``a b``, ...). So the fields have names of their
    own and each column's name is the field's alias, which the JSON schema shows and
    validation reads: every column name can be documented.

    Arguments:
        schema: the training schema of the served model.
    """
    try:
        fields = [_field(spec) for spec in schema.columns]
        fields += [(Any, Field(None, alias=name, title=name, description="ignored by the model"))
                   for name in schema.exclude]
        named: dict[str, Any] = {f"column_{i}": field for i, field in enumerate(fields)}
        model = create_model("Record", __config__=ConfigDict(extra="forbid"), **named)
        # what /docs.json will serve: strict JSON (a NaN in it is a 500 there)
        json.dumps(model.model_json_schema(), allow_nan=False)
    except Exception as error:  # the docs must never stop the service
        log.warning("/docs.json documents untyped records: the record schema of %d columns "
                    "could not be written (%s: %s)", len(schema.names), type(error).__name__,
                    error)
        return dict[str, Any]
    return model


def document_records(spec: dict[str, Any], record: Any, max_records: int) -> None:
    """Types the ``/score`` records of BentoML's OpenAPI document ``spec`` in place: each an
    object of ``record`` (a pydantic model, :func:`record_model`; untyped for
    ``dict[str, Any]``), at most ``max_records`` of them.

    Arguments:
        spec: the document (``GET /docs.json``).
        record: the record model.
        max_records: ``FLOWAD_MAX_RECORDS``.
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    items: dict[str, Any] | None = None
    if isinstance(record, type) and issubclass(record, BaseModel):
        document = record.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(document.pop("$defs", {}))
        schemas["Record"] = document
        items = {"$ref": "#/components/schemas/Record"}
    body = (spec.get("paths", {}).get("/score", {}).get("post", {}).get("requestBody", {})
            .get("content", {}).get("application/json", {}).get("schema", {}))
    for request in (body, schemas.get("ScoreRequest", {})):
        records = request.get("properties", {}).get("records")
        if records is not None:
            records["maxItems"] = max_records
            if items is not None:
                records["items"] = items


ERROR_BODY = {"application/json": {"schema": {"type": "object", "properties": {
    "error": {"type": "string"}, "reason": {"type": "string"}}}}}

# The plain Starlette routes of the service (BentoML documents its own APIs and mounted
# FastAPI apps only).
ROUTE_DOCS: dict[str, Any] = {
    "/score_file": {"post": {
        "tags": ["Service APIs"],
        "summary": "Score an uploaded CSV or Parquet file",
        "description": "All or nothing: one bad row rejects the file with the row named. The "
                       "response is /score's, streamed.",
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "the table, a .csv or .parquet file"}},
        }}}},
        "responses": {
            "200": {"description": "one verdict per row, in order",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": {"description": "a malformed or truncated upload, an empty file or a bad row",
                    "content": ERROR_BODY},
            "408": {"description": "the upload paused for longer than FLOWAD_BODY_TIMEOUT_S",
                    "content": ERROR_BODY},
            "413": {"description": "over FLOWAD_MAX_FILE_BYTES or FLOWAD_MAX_FILE_ROWS",
                    "content": ERROR_BODY},
            "415": {"description": "a Content-Encoding other than identity",
                    "content": ERROR_BODY},
            "503": {"description": "no model loaded, or (with Retry-After) the scorer overloaded "
                                   "or the served model being changed", "content": ERROR_BODY},
        },
    }},
    "/model": {"get": {
        "tags": ["Service APIs"],
        "summary": "The served model: tag, threshold, calibration, schema, training metrics",
        "responses": {
            "200": {"description": "what GET /model says about the model",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
            "503": {"description": "no model loaded", "content": ERROR_BODY},
        },
    }},
}


class DocumentRoutes:
    """ASGI middleware that completes BentoML's ``GET /docs.json``: the ``/score`` records typed
    from the served model (:func:`document_records`), and :data:`ROUTE_DOCS`.

    Arguments:
        app: the wrapped ASGI application.
        served: the served model's tag and training schema, and ``FLOWAD_MAX_RECORDS``.
    """

    def __init__(self, app: ASGIApp, served: Callable[[], tuple[str, Schema, int]]) -> None:
        self.app = app
        self.served = served
        self._record: tuple[str, Any] = ("", None)  # the last model's tag and record model

    def record_model(self, tag: str, schema: Schema) -> Any:
        """:func:`record_model` of ``schema``, written once per model."""
        if self._record[0] != tag:
            self._record = (tag, record_model(schema))
        return self._record[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope.get("method") == "GET"
                and scope.get("path") == "/docs.json"):
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def patched(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if start.get("status") == 200:
                spec = json.loads(body)
                tag, schema, max_records = self.served()
                document_records(spec, self.record_model(tag, schema), max_records)
                spec.setdefault("paths", {}).update(
                    {path: doc for path, doc in ROUTE_DOCS.items() if path not in spec["paths"]})
                body = json.dumps(spec).encode()
            headers = [(key, value) for key, value in start.get("headers", [])
                       if key.lower() != b"content-length"]
            length = (b"content-length", str(len(body)).encode())
            await send({**start, "headers": [*headers, length]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, patched)
