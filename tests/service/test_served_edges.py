"""A real ``bentoml serve`` at its edges: column names pydantic refuses, the Content-Type of
``/score``, an admin token read from a secret file, and the cost of ``?explain=true`` on a wide
model (a work budget, a plain request that does not wait behind an explanation, explanations
that stop when their time is up or their client is gone)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import REPO
from test_hostile import rejected, workers
from test_integration import free_port, http, stop, wait_for

from pipelines import Detector, registry
from pipelines.registry.store import save_detector

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TOKEN = "s3cret-token"
WIDE_COLUMNS = 120
EXPLAIN_SECONDS = 2


def awkward_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Columns named as pydantic refuses field names: MongoDB's ``_id`` and ``__v``, its own
    ``model_*`` names, BaseModel attributes (``json``, ``copy``), a name that is not an
    identifier; ``_id`` and ``model_validate`` are excluded from the model."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({
        "_id": np.arange(n), "model_validate": rng.choice(["a", "b"], n),
        "__v": rng.integers(0, 3, n), "model_dump": np.exp(x + 0.3 * rng.normal(size=n)),
        "json": rng.choice(["web", "app", "store"], n), "copy": x + 0.5 * rng.normal(size=n),
        "model_config": rng.random(n) < 0.3, "amount (€)": rng.gamma(2.0, 10.0, n),
    })


def wide_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(WIDE_COLUMNS, WIDE_COLUMNS)) / WIDE_COLUMNS**0.5
    return pd.DataFrame(rng.normal(size=(n, WIDE_COLUMNS)) @ mixing,
                        columns=[f"c{i}" for i in range(WIDE_COLUMNS)])


def serve(tmp: Path, name: str, **settings: str) -> tuple[subprocess.Popen, str, Path]:
    """Starts ``bentoml serve`` (one worker, local scoring) on model ``name``."""
    port = free_port()
    env = {**os.environ, "FLOWAD_MODEL": name, "FLOWAD_WORKERS": "1",
           "FLOWAD_SCORING": "local", "FLOWAD_RELOAD_INTERVAL": "0",
           "BENTOML_DO_NOT_TRACK": "true", **settings}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets its own
    log = tmp / f"{name}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", ".", "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """The awkward model served, the admin token given with a secret file's final newline."""
    tmp = tmp_path_factory.mktemp("awkward")
    detector = Detector(exclude=["_id", "model_validate"], target_fpr=0.05,
                        train_options={"max_epochs": 5}).fit(awkward_frame(1500))
    registry.promote(save_detector(detector, "served-awkward"))
    process, base, log = serve(tmp, "served-awkward", FLOWAD_ADMIN_TOKEN=TOKEN + "\n")
    try:
        wait_for(lambda: process.poll() is not None
                 or http("GET", f"{base}/readyz")[0] == 200, 120, "bentoml serve")
        assert process.poll() is None, log.read_text()[-3000:]
        yield base, detector, log
    finally:
        stop(process)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 120-column model; explanations limited to 200,000 flow evaluations (103 records) and
    2 s, the records limit out of the way."""
    tmp = tmp_path_factory.mktemp("wide")
    detector = Detector(flow_options={"members": 1},
                        train_options={"max_epochs": 2}).fit(wide_frame(600))
    registry.promote(save_detector(detector, "served-wide"))
    process, base, log = serve(tmp, "served-wide", FLOWAD_MAX_EXPLAIN_RECORDS="1000",
                               FLOWAD_MAX_EXPLAIN_WORK="200000",
                               FLOWAD_EXPLAIN_SECONDS=str(EXPLAIN_SECONDS))
    try:
        wait_for(lambda: http("GET", f"{base}/readyz")[0] == 200, 120, "bentoml serve")
        (worker,) = workers(process.pid)
        yield base, detector, log, worker
    finally:
        stop(process)


def as_records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def post(base: str, path: str, body: bytes, headers: dict[str, str],
         timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


JSON = {"Content-Type": "application/json"}


def test_columns_pydantic_refuses_are_served_scored_and_documented(awkward):
    """``_id`` (MongoDB's id) as an excluded column stopped the service at import; every other
    name pydantic refuses did too."""
    base, detector, _ = awkward
    frame = awkward_frame(30, seed=1)
    status, body = post(base, "/score", json.dumps(as_records(frame)).encode(), JSON)
    assert status == 200, body
    expected = detector.decision_function(frame)
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected, atol=1e-9)

    status, body = post(base, "/score?explain=true&top=2",
                        json.dumps(as_records(frame.iloc[:3])).encode(), JSON)
    assert status == 200, body
    contributions = detector.explain(frame.iloc[:3])
    for result, (_, row) in zip(body["results"], contributions.iterrows(), strict=True):
        top = row.sort_values(ascending=False).index[:2]
        assert [c["column"] for c in result["contributions"]] == list(top)

    docs = json.loads(http("GET", f"{base}/docs.json")[1])
    record = docs["components"]["schemas"]["Record"]
    assert list(record["properties"]) == [*detector.input_columns, "_id", "model_validate"]
    assert record["required"] == list(detector.input_columns)
    assert record["properties"]["model_config"]["type"] == "boolean"
    assert record["properties"]["json"]["type"] == "string"
    assert record["properties"]["amount (€)"]["type"] == "number"


@pytest.mark.parametrize(("content_type", "status"), [
    ("text/plain", 415), ("text/plain;charset=UTF-8", 415),
    ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    ("application/json", 200), ("application/json; charset=utf-8", 200),
    ("application/vnd.flowad+json", 200),
])
def test_score_takes_only_a_body_declared_json(awkward, content_type, status):
    """Any web page can POST text/plain or a form cross-site without a CORS preflight."""
    base, _, _ = awkward
    before = rejected(base, "content_type")
    answer = post(base, "/score", json.dumps(as_records(awkward_frame(2))).encode(),
                  {"Content-Type": content_type})
    assert answer[0] == status, answer
    if status == 415:
        assert answer[1] == {"reason": "content_type", "error": answer[1]["error"]}
        assert "send the records as application/json" in answer[1]["error"]
        wait_for(lambda: rejected(base, "content_type") == before + 1, 10, "the rejection")


def test_score_without_any_content_type_is_a_415(awkward):
    """Over a raw socket: a request with no Content-Type header at all."""
    base, _, _ = awkward
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(as_records(awkward_frame(2))).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, payload = answer.split(b"\r\n\r\n", 1)
    assert int(head.split()[1]) == 415, answer
    assert json.loads(payload)["reason"] == "content_type"


def test_uploads_and_admin_reload_keep_their_content_types(awkward):
    """``/score_file`` takes multipart, ``/admin/reload`` no body; the token comes from a
    secret file with its final newline, which no header carries: stripped at start, with a
    warning in the log."""
    base, _, log = awkward
    csv = awkward_frame(5, seed=3).to_csv(index=False).encode()
    boundary = "flowad-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.csv"\r\n'
            f"Content-Type: text/csv\r\n\r\n").encode() + csv + f"\r\n--{boundary}--\r\n".encode()
    status, answer = post(base, "/score_file", body,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and answer["n"] == 5, answer
    status, answer = post(base, "/admin/reload", b"", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and answer["changed"] is False, answer
    status, _ = post(base, "/admin/reload", b"", {"Authorization": f"Bearer {TOKEN}x"})
    assert status == 403
    assert "FLOWAD_ADMIN_TOKEN: whitespace around the token" in log.read_text()


def test_a_token_no_client_can_send_stops_the_service_at_start(tmp_path):
    """A non-ASCII token was accepted and then refused every request, forever."""
    process, _, log = serve(tmp_path, "served-awkward", FLOWAD_ADMIN_TOKEN="sécret")
    try:
        assert process.wait(timeout=120) != 0
    finally:
        stop(process)
    assert "FLOWAD_ADMIN_TOKEN holds 'é'" in log.read_text()


def cpu_time(worker: psutil.Process) -> float:
    """CPU seconds the worker has used so far."""
    return sum(worker.cpu_times()[:2])


def cpu_seconds(worker: psutil.Process, during: float) -> float:
    """CPU seconds the worker spends over the next ``during`` seconds."""
    before = cpu_time(worker)
    time.sleep(during)  # the window measured, not a wait for something to happen
    return cpu_time(worker) - before


def wait_until_busy(worker: psutil.Process, since: float, seconds: float = 0.3) -> None:
    """Polls until the worker has used ``seconds`` of CPU since it had used ``since``: the
    request sent meanwhile is being worked on."""
    wait_for(lambda: cpu_time(worker) - since > seconds, 30, "the worker to be busy")


def explain_body(n: int) -> bytes:
    return json.dumps(as_records(wide_frame(n, seed=5))).encode()


def test_explaining_over_the_work_budget_is_a_413_that_names_it(wide):
    base, _, _, _ = wide
    status, body = post(base, "/score?explain=true", explain_body(104), JSON)
    assert status == 413 and body["reason"] == "too_large", body
    assert body["error"] == (
        "explaining 104 records of 120 columns takes 201344 flow evaluations (104 x (120 + 1) x "
        "16 samples), over the budget of 200000 per request (FLOWAD_MAX_EXPLAIN_WORK): send at "
        "most 103 records per explained request")


def test_explained_records_are_explained_as_in_process_across_chunks(wide):
    """Explained 2 records at a time on this model (4,096 flow evaluations a chunk): within
    the determinism contract's 1e-4 nats of one call (float32 sums of other batch sizes)."""
    base, detector, _, _ = wide
    frame = wide_frame(5, seed=6)
    status, body = post(base, "/score?explain=true&top=3", json.dumps(as_records(frame)).encode(),
                        JSON)
    assert status == 200, body
    expected = detector.explain(frame)
    for result, (_, row) in zip(body["results"], expected.iterrows(), strict=True):
        np.testing.assert_allclose([c["contribution"] for c in result["contributions"]],
                                   row.sort_values(ascending=False)[:3], atol=1e-4)


def test_a_plain_request_does_not_wait_behind_an_explanation_that_stops_in_time(wide):
    """100 explained records of 120 columns are ~10 s of CPU here: the service stops at
    FLOWAD_EXPLAIN_SECONDS with a 413, and a plain /score sent meanwhile is answered first."""
    base, _, _, worker = wide
    finished: dict[str, float] = {}
    answers: dict[str, tuple] = {}

    def explain() -> None:
        answers["explain"] = post(base, "/score?explain=true", explain_body(100), JSON)
        finished["explain"] = time.monotonic()

    thread = threading.Thread(target=explain)
    busy = cpu_time(worker)
    thread.start()
    wait_until_busy(worker, busy)  # scored, and explaining
    answers["plain"] = post(base, "/score", explain_body(1), JSON)
    finished["plain"] = time.monotonic()
    thread.join(timeout=120)
    assert answers["plain"][0] == 200
    assert finished["plain"] < finished["explain"]
    status, body = answers["explain"]
    assert status == 413 and body["reason"] == "too_large", body
    assert body["error"].startswith(f"explaining took more than {EXPLAIN_SECONDS} s "
                                    "(FLOWAD_EXPLAIN_SECONDS; ")
    assert cpu_seconds(worker, 1.5) < 0.5  # and nothing goes on computing


def test_an_explanation_stops_when_its_client_is_gone(wide):
    base, _, log, worker = wide
    host, port = base.removeprefix("http://").split(":")
    body = explain_body(100)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        busy = cpu_time(worker)
        sock.sendall(f"POST /score?explain=true HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until_busy(worker, busy)  # scored, and explaining
    # the line is logged only when the client's absence stops it (the time limit answers 413)
    wait_for(lambda: "client disconnected after" in log.read_text(), 30,
             "the explanation to stop")
    assert cpu_seconds(worker, 1.0) < 0.4
