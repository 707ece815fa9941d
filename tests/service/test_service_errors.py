"""The one rejection type (service/errors.py): the same answer from a route and from ASGI
middleware, the headers each status needs, and a body for any message."""

import json
from http import HTTPStatus

import anyio
import pytest

from service.errors import RequestRejected, error_body

CASES = [
    (RequestRejected("row 3: missing column 'amount'", "schema"), {}),
    (RequestRejected("the request body did not arrive within 2 s", "timeout",
                     HTTPStatus.REQUEST_TIMEOUT), {"connection": "close"}),
    (RequestRejected("the scorer is overloaded; retry shortly", "overloaded",
                     HTTPStatus.SERVICE_UNAVAILABLE, retry_after=1), {"retry-after": "1"}),
    (RequestRejected("missing bearer token", "unauthorized", HTTPStatus.UNAUTHORIZED),
     {"www-authenticate": "Bearer"}),
]


def sent(rejection: RequestRejected) -> tuple[int, dict[str, str], bytes]:
    """What :meth:`RequestRejected.send` sends: status, headers, body."""
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    anyio.run(rejection.send, send)
    start, body = messages
    assert body == {"type": "http.response.body", "body": body["body"]}
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            body["body"])


@pytest.mark.parametrize(("rejection", "headers"), CASES,
                         ids=["400", "408", "503", "401"])
def test_a_route_and_middleware_answer_a_rejection_alike(rejection, headers):
    response = rejection.response()
    status, sent_headers, body = sent(rejection)
    assert status == response.status_code == rejection.status
    assert body == response.body
    assert json.loads(body) == {"error": rejection.message, "reason": rejection.reason}
    assert sent_headers == dict(response.headers)
    assert {k: v for k, v in sent_headers.items()
            if k not in ("content-type", "content-length")} == headers
    assert sent_headers["content-type"] == "application/json"
    assert int(sent_headers["content-length"]) == len(body)


def test_any_message_has_a_json_body():
    """A message echoes what a client sent; a lone surrogate is no UTF-8 (orjson, which wrote
    the routes' bodies, refused it: the answer would have been a 500)."""
    message = "column 'x\ud800', row 0: not a number"
    assert json.loads(error_body(message, "schema")) == {"error": message, "reason": "schema"}
    assert json.loads(RequestRejected(message, "schema").response().body)["error"] == message
