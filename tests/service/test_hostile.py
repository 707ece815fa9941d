"""A real ``bentoml serve`` under hostile input and faults: a fuzzer driven by ``/docs.json``,
deep JSON, scans of random paths, ``kill -9`` of a worker. Nothing may answer 5xx or hang."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import REPO, mixed_frame
from test_integration import free_port, http, records, stop, wait_for

from pipelines import Detector, registry
from pipelines.registry.store import save_detector

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
BODY_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    detector = Detector(exclude=["id"], target_fpr=0.05, train_options={"max_epochs": 3},
                        flow_options={"members": 1}).fit(mixed_frame(1500, seed=0))
    registry.promote(save_detector(detector, "hostile-test"))
    port = free_port()
    env = {**os.environ, "FLOWAD_MODEL": "hostile-test", "FLOWAD_WORKERS": "2",
           "FLOWAD_SCORING": "local", "FLOWAD_MAX_RECORDS": "200", "BENTOML_DO_NOT_TRACK": "true",
           "FLOWAD_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets its own
    log = open(tmp / "service.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(BIN / "bentoml"), "serve", ".", "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http("GET", f"{base}/readyz")[0] == 200, 120, "bentoml serve")
        yield base, process.pid
    finally:
        stop(process)
        log.close()
        print((tmp / "service.log").read_text()[-3000:])


def scored(base: str) -> float:
    text = http("GET", f"{base}/metrics")[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("flowad_records_scored_total{"))


def workers(pid: int) -> list[psutil.Process]:
    """The live worker processes of the server (a killed one is a zombie until reaped)."""
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker.service" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:  # a zombie, or gone meanwhile
            pass
    return found


def test_a_fuzzer_driven_by_the_docs_finds_no_server_error(server, tmp_path):
    """schemathesis generates valid and invalid bodies from /docs.json, whose record schema
    comes from the model's columns, so valid ones reach the scoring code (records counted)."""
    base, _ = server
    before = scored(base)
    result = subprocess.run(
        [str(BIN / "st"), "run", f"{base}/docs.json", "--checks", "not_a_server_error",
         "--max-examples", "150", "--seed", "1", "--request-timeout", "30",
         "--exclude-path", "/admin/reload"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    print(result.stdout[-4000:], result.stderr[-2000:])
    assert result.returncode == 0, result.stdout[-4000:]
    assert scored(base) > before, "no fuzzed request was scored"


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000,
                                  '{"records": [' + '{"a":' * 5000 + "1" + "}" * 5000 + "]}"])
def test_deep_json_is_a_fast_400(server, body):
    base, _ = server
    start = time.monotonic()
    status, answer = _post_raw(base, body)
    assert status == 400, answer[:300]
    assert time.monotonic() - start < 5


def _post_raw(base: str, body: str) -> tuple:
    import urllib.request

    request = urllib.request.Request(f"{base}/score", data=body.encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_scanning_random_paths_does_not_grow_the_metrics(server):
    base, _ = server
    http("GET", f"{base}/{uuid.uuid4().hex}")
    size = len(http("GET", f"{base}/metrics")[1])
    for _ in range(200):
        assert http("GET", f"{base}/{uuid.uuid4().hex}/{uuid.uuid4().hex}")[0] == 404
    text = http("GET", f"{base}/metrics")[1].decode()
    endpoints = {line.split('endpoint="', 1)[1].split('"', 1)[0]
                 for line in text.splitlines() if 'endpoint="' in line}
    assert "/unmatched" in endpoints and len(endpoints) < 15, sorted(endpoints)
    assert len(text) < size * 1.2
    assert http("POST", f"{base}/score", records(3, seed=1))[0] == 200


def stalled_request(base: str, path: str, headers: str, first: bytes) -> tuple[int, dict, float]:
    """Over a real socket: the request's headers and the first bytes of its body, then nothing.
    Returns the status, the JSON body and the seconds the answer took."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        start = time.monotonic()
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode() + first)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes it: the rest may never come
            answer += chunk
        took = time.monotonic() - start
    head, body = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body), took


def rejected(base: str, reason: str) -> float:
    lines = http("GET", f"{base}/metrics")[1].decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("flowad_requests_rejected_total{")
               and f'reason="{reason}"' in line)


def test_clients_that_stop_sending_their_body_get_a_408_not_a_504(server):
    """Slow-body clients were held for the 120 s traffic timeout and answered 504, a server
    error for the alerts; FLOWAD_BODY_TIMEOUT_S (2 s here) bounds the wait."""
    base, _ = server
    before = rejected(base, "timeout")
    score = ("/score", "Content-Type: application/json\r\nContent-Length: 100\r\n", b"[")
    upload = ("/score_file", "Content-Type: multipart/form-data; boundary=b\r\n"
              "Content-Length: 10000\r\n", b'--b\r\nContent-Disposition: form-data; name="file"; '
              b'filename="a.csv"\r\n\r\namount,ratio\r\n1.0,')
    cases = [score] * 40 + [upload] * 4
    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(lambda case: stalled_request(base, *case), cases))
    for (path, *_), (status, body, took) in zip(cases, answers, strict=True):
        assert status == 408, (path, body)
        assert body["reason"] == "timeout" and f"within {BODY_TIMEOUT_S} s" in body["error"]
        assert took < BODY_TIMEOUT_S + 3, (path, took)  # and the connection is closed
    wait_for(lambda: rejected(base, "timeout") == before + len(cases), 10, "the rejections")
    assert http("POST", f"{base}/score", records(3, seed=1))[0] == 200


def test_a_killed_worker_is_replaced_and_its_gauges_are_forgotten(server):
    base, pid = server
    for seed in range(4):  # both workers publish their gauges
        assert http("POST", f"{base}/score", records(50, seed=seed))[0] == 200
    victim = workers(pid)[0]
    directory = Path(victim.environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert list(directory.glob(f"gauge_live*_{victim.pid}.db"))
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: len(workers(pid)) == 2 and victim.pid not in {p.pid for p in workers(pid)},
             60, "a replacement worker")
    wait_for(lambda: http("GET", f"{base}/readyz")[0] == 200, 60, "readiness")
    wait_for(lambda: not list(directory.glob(f"gauge_live*_{victim.pid}.db")), 60,
             "the dead worker's gauge files to go")
    failures = [status for seed in range(20)
                if (status := http("POST", f"{base}/score", records(5, seed=seed))[0]) != 200]
    assert not failures
