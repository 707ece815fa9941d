"""The service's one rejection type, and the one JSON body every rejection is answered with.

Every refusal is a :class:`RequestRejected`, whichever module refuses: a body the request guard
stops (:mod:`service.guard`), an upload that cannot be read (:mod:`service.uploads`), a record
the schema refuses or a scorer that cannot be reached (:mod:`service.scoring`), an explanation
over its budget (:mod:`service.explaining`), a missing admin token. It carries the HTTP status,
a bounded ``reason`` (the ``reason`` label of ``flowad_requests_rejected``), the message, which
names the row and column where there is one, and for a 503 the seconds to wait before retrying.
It is answered as ``{"error": message, "reason": reason}`` (:func:`error_body`), by a route
(:meth:`RequestRejected.response`) or by ASGI middleware (:meth:`RequestRejected.send`).
"""

from __future__ import annotations

import json
from http import HTTPStatus

from bentoml.exceptions import BentoMLException
from starlette.responses import Response
from starlette.types import Send


def error_body(message: str, reason: str) -> bytes:
    """``{"error": message, "reason": reason}`` as JSON bytes, ASCII only: a message may echo
    any string a client sent, a lone surrogate included, which no UTF-8 encoder takes.

    Arguments:
        message: what was wrong, and where.
        reason: the bounded label of the rejection.
    """
    return json.dumps({"error": message, "reason": reason}).encode()


class RequestRejected(BentoMLException):
    """A request the service refuses: a 4xx, or a 503 when it cannot be scored now.

    A subclass of BentoML's exception so that one raised through BentoML keeps its status.

    Arguments:
        message: what was wrong, naming the row and column where there is one.
        reason: the label of the rejection metric (``service.metrics.REJECTION_REASONS``;
            refusals that are not counted have reasons of their own).
        status: the HTTP status.
        retry_after: seconds a client should wait before retrying (a 503), or None.
    """

    error_code = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST,
                 retry_after: int | None = None) -> None:
        super().__init__(message, error_code=status)
        self.message, self.reason, self.status, self.retry_after = (message, reason, status,
                                                                    retry_after)

    def headers(self) -> dict[str, str]:
        """``Retry-After`` for a 503 to retry; ``Connection: close`` for a 408, rather than
        keep the connection open for the rest of a body that may never come; for a 401 the
        scheme the admin routes take (``Bearer``, the only one)."""
        headers = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        if self.status == HTTPStatus.REQUEST_TIMEOUT:
            headers["connection"] = "close"
        if self.status == HTTPStatus.UNAUTHORIZED:
            headers["www-authenticate"] = "Bearer"
        return headers

    def response(self) -> Response:
        """The answer, for a route to return."""
        return Response(error_body(self.message, self.reason), status_code=self.status,
                        headers=self.headers(), media_type="application/json")

    async def send(self, send: Send) -> None:
        """Sends the answer through an ASGI ``send`` channel (from middleware)."""
        body = error_body(self.message, self.reason)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   *((key.encode(), value.encode()) for key, value in self.headers().items())]
        await send({"type": "http.response.start", "status": int(self.status),
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})
