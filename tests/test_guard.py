"""``RequestGuard`` (service/guard.py) on its own, in front of an app that reads its body, with
clients that send their body slowly or stop sending it: a body must arrive within
``body_timeout`` (an upload may take longer, but never pause longer), else a 408."""

import json

import anyio
import pytest

from service.guard import RequestGuard

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
         disconnect_after: float = 0.0) -> tuple[dict, list[str]]:
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
            await guard({"type": "http", "method": "POST", "path": path, "headers": []},
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
