"""``RequestGuard`` (service/guard.py) on its own, in front of an app that reads its body, with
clients that send their body slowly or stop sending it: a body must arrive within
``body_timeout`` (an upload may take longer, but never pause longer), else a 408."""

import json

import anyio
import pytest
from starlette.testclient import TestClient

from service.guard import AdminAuth, RequestGuard
from service.settings import admin_token

TIMEOUT = 0.3


async def reads_body(scope, receive, send):
    """Reads the whole body, then waits for the client to go away (as a streamed response
    listens for a disconnect), then answers."""
    while (await receive()).get("more_body"):
        pass
    assert (await receive())["type"] == "http.disconnect"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def call(path: str, pieces: list[tuple[float, bytes]], complete: bool = False,
         disconnect_after: float = 0.0,
         content_type: bytes | None = b"application/json") -> tuple[dict, list[str]]:
    """The guard's answer to a client sending ``pieces`` (after each delay, its bytes), then
    either stalling or, if ``complete``, ending the body and disconnecting
    ``disconnect_after`` seconds later; and the reasons it counted."""
    rejected: list[str] = []
    guard = RequestGuard(reads_body, json_routes={"/score": 10_000},
                         upload_routes={"/score_file": 10_000}, body_timeout=TIMEOUT,
                         on_reject=rejected.append)
    queue = list(pieces)
    sent: list[dict] = []

    async def receive():
        if queue:
            delay, body = queue.pop(0)
            await anyio.sleep(delay)
            return {"type": "http.request", "body": body, "more_body": bool(queue) or not complete}
        if not complete:
            await anyio.sleep_forever()  # the client stopped sending
        await anyio.sleep(disconnect_after)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def main():
        with anyio.fail_after(10):  # without a body timeout, the stalled client hangs here
            headers = [] if content_type is None else [(b"content-type", content_type)]
            await guard({"type": "http", "method": "POST", "path": path, "headers": headers},
                        receive, send)

    anyio.run(main)
    start = sent[0]
    return {"status": start["status"], "headers": dict(start["headers"]),
            "body": b"".join(m.get("body", b"") for m in sent[1:])}, rejected


@pytest.mark.parametrize("path", ["/score", "/score_file"])
def test_a_body_that_stops_arriving_is_a_408(path):
    answer, rejected = call(path, [(0, b"[")])
    assert answer["status"] == 408
    what = "the request body" if path == "/score" else "the rest of the upload"
    assert json.loads(answer["body"]) == {
        "error": f"{what} did not arrive within {TIMEOUT:g} s (FLOWAD_BODY_TIMEOUT_S)",
        "reason": "timeout"}
    assert answer["headers"][b"connection"] == b"close"  # its unread body is not a request
    assert rejected == ["timeout"]


def test_a_json_body_dripping_in_past_the_timeout_is_a_408():
    answer, rejected = call("/score", [(TIMEOUT / 3, b" ")] * 6)  # no pause is too long
    assert answer["status"] == 408 and rejected == ["timeout"]


def test_an_upload_may_take_longer_than_the_timeout_if_it_never_pauses_that_long():
    answer, rejected = call("/score_file", [(TIMEOUT / 3, b"x" * 100)] * 6, complete=True)
    assert answer["status"] == 200 and rejected == []


@pytest.mark.parametrize("path", ["/score", "/score_file"])
def test_once_the_body_is_in_the_app_may_wait_for_a_disconnect_as_long_as_it_likes(path):
    answer, rejected = call(path, [(0, b"[{}]")], complete=True, disconnect_after=2 * TIMEOUT)
    assert (answer["status"], rejected) == (200, []), answer


@pytest.mark.parametrize("content_type", [
    b"application/json", b"application/json; charset=utf-8", b"Application/JSON",
    b"application/vnd.api+json", b"application/merge-patch+json;charset=UTF-8",
])
def test_json_in_any_json_media_type_is_let_through(content_type):
    answer, rejected = call("/score", [(0, b"[{}]")], complete=True, content_type=content_type)
    assert (answer["status"], rejected) == (200, []), answer


@pytest.mark.parametrize("content_type", [
    None, b"", b"text/plain", b"text/plain; charset=utf-8", b"multipart/form-data; boundary=x",
    b"application/x-www-form-urlencoded", b"application/jsonp", b"json", b"application/ json",
    b"text/json+xml",
])
def test_a_body_not_declared_json_is_a_415(content_type):
    """A browser POSTs text/plain, form and multipart bodies cross-site without a CORS
    preflight: a page anyone visits could feed the drift window and the counters."""
    answer, rejected = call("/score", [(0, b"[{}]")], complete=True, content_type=content_type)
    assert answer["status"] == 415 and rejected == ["content_type"]
    body = json.loads(answer["body"])
    assert body["reason"] == "content_type"
    assert body["error"].endswith("is not supported: send the records as application/json")


def test_an_upload_is_not_held_to_the_json_content_type():
    answer, rejected = call("/score_file", [(0, b"x")], complete=True,
                            content_type=b"multipart/form-data; boundary=b")
    assert (answer["status"], rejected) == (200, [])


def admin_answer(token: str, authorization: bytes) -> int:
    """The status ``AdminAuth`` (guarding ``/admin/reload`` with ``token``) answers."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    async def main():
        auth = AdminAuth(app, paths=("/admin/reload",), token=token)
        await auth({"type": "http", "method": "POST", "path": "/admin/reload",
                    "headers": [(b"authorization", authorization)]}, None, send)

    anyio.run(main)
    return sent[0]["status"]


@pytest.mark.parametrize(("variable", "token"), [
    ("s3cret\n", "s3cret"), ("  s3cret \r\n", "s3cret"), ("s3cret", "s3cret"),
    ("a b!#%&", "a b!#%&"), ("", None), (None, None),
])
def test_an_admin_token_is_read_as_a_client_can_send_it(variable, token, caplog):
    """A token from a secret file ends in a newline, which no header carries: it is
    stripped (with a warning), and the token without it is accepted."""
    assert admin_token(variable) == token
    assert ("whitespace around the token" in caplog.text) == (variable not in (token, ""))
    if token:
        assert admin_answer(admin_token(variable), b"Bearer " + token.encode()) == 200
        assert admin_answer(admin_token(variable), b"Bearer " + token.encode() + b"x") == 403


@pytest.mark.parametrize("variable", ["sécret", "s3cret\u200b", "tab\tinside", "\x7f"])
def test_an_admin_token_no_client_can_send_is_refused_at_start(variable):
    """A header carries bytes: a client sends "é" as UTF-8 or Latin-1 as it likes, and the
    server reads them as Latin-1, so a non-ASCII token could never match."""
    with pytest.raises(ValueError, match=r"FLOWAD_ADMIN_TOKEN holds .*only printable ASCII"):
        admin_token(variable)


@pytest.mark.parametrize(("token", "authorization", "status", "reason", "error"), [
    (None, b"Bearer s3cret", 404, "admin_disabled",
     "admin endpoints are disabled: set FLOWAD_ADMIN_TOKEN to enable them"),
    ("s3cret", b"", 401, "unauthorized", "missing bearer token"),
    ("s3cret", b"s3cret", 401, "unauthorized", "missing bearer token"),
    ("s3cret", b"Bearer s3cre", 403, "forbidden", "invalid token"),
], ids=["disabled", "missing", "no-scheme", "wrong"])
def test_admin_refusals_have_the_body_of_every_rejection(token, authorization, status, reason,
                                                         error):
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def main():
        auth = AdminAuth(reads_body, paths=("/admin/reload",), token=token)
        await auth({"type": "http", "method": "POST", "path": "/admin/reload",
                    "headers": [(b"authorization", authorization)]}, None, send)

    anyio.run(main)
    start, body = sent
    assert start["status"] == status
    assert json.loads(body["body"]) == {"error": error, "reason": reason}
    assert ((b"www-authenticate", b"Bearer") in start["headers"]) == (status == 401)


def test_the_token_is_compared_as_the_bytes_that_arrived():
    """The header's bytes against the token's UTF-8 bytes, neither decoded: the UTF-8 bytes of
    "é" used to be read as Latin-1 ("Ã©") and encoded again, so "é" never matched itself."""
    assert admin_answer("é", "Bearer é".encode()) == 200
    assert admin_answer("é", "Bearer é".encode("latin-1")) == 403
    assert admin_answer("s3cret", "Bearer sécret".encode()) == 403


def test_an_upload_streamed_past_the_byte_limit_is_a_413():
    async def app(scope, receive, send):  # reads everything, like the multipart parser
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    wrapped = RequestGuard(app, json_routes={}, upload_routes={"/score_file": 1000},
                           body_timeout=30)

    def chunks():  # no content-length: the guard must count
        for _ in range(20):
            yield b"x" * 100

    response = TestClient(wrapped).post("/score_file", content=chunks())
    assert response.status_code == 413, response.text
    assert response.json()["reason"] == "too_large"
