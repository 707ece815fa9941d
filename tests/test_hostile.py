"""A real ``bentoml serve`` under hostile input and faults: a fuzzer driven by ``/docs.json``,
deep JSON, scans of random paths, ``kill -9`` of a worker. Nothing may answer 5xx or hang."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import REPO, mixed_frame
from test_integration import free_port, http, records, stop, wait_for

from pipelines import Detector, registry
from pipelines.store import save_detector

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    detector = Detector(exclude=["id"], target_fpr=0.05, train_options={"max_epochs": 3},
                        flow_options={"members": 1}).fit(mixed_frame(1500, seed=0))
    registry.promote(save_detector(detector, "hostile-test"))
    port = free_port()
    env = {**os.environ, "FLOWAD_MODEL": "hostile-test", "FLOWAD_WORKERS": "2",
           "FLOWAD_SCORING": "local", "FLOWAD_MAX_RECORDS": "200", "BENTOML_DO_NOT_TRACK": "true"}
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
