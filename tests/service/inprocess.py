"""The service in process: ``TestClient(front_service(...).to_asgi())`` on a freshly trained
model, started with settings of its own, and what the tests read from its ``/metrics``.

A service instance reads its settings from the environment when it starts
(:class:`service.settings.Settings`), and its decorators from the environment when they are
declared (:class:`service.settings.Deployment`): :func:`started` sets the variables for both,
then restores them, so nothing a test starts changes what later tests see.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from conftest import mixed_frame
from starlette.testclient import TestClient

from pipelines import Detector, registry
from pipelines.registry.store import save_detector
from service.service import front_of, front_service
from service.settings import Deployment

MODEL = "service-test"
TOKEN = "s3cret-token"
SETTINGS = {"FLOWAD_MODEL": MODEL, "FLOWAD_MAX_RECORDS": "50",
            "FLOWAD_MAX_BODY_BYTES": "20000", "FLOWAD_ADMIN_TOKEN": TOKEN,
            "FLOWAD_RELOAD_INTERVAL": "0", "FLOWAD_FILE_CHUNK_ROWS": "100",
            "FLOWAD_MAX_FILE_ROWS": "1000", "FLOWAD_MAX_EXPLAIN_RECORDS": "10"}


def train(seed: int) -> Detector:
    return Detector(exclude=["id"], target_fpr=0.05, train_options={"max_epochs": 5},
                    random_state=seed).fit(mixed_frame(1500, seed=seed))


@cache
def trained() -> tuple[Detector, str]:
    """The served model, trained and saved once per test session."""
    detector = train(0)
    return detector, save_detector(detector, MODEL)


@cache
def narrow() -> tuple[Detector, str]:
    """A model promoted in the tests' swaps, without the column ``flag`` (excluded): 6 input
    columns where the served model has 7. Records that hold ``flag`` suit both models."""
    detector = Detector(exclude=["id", "flag"], target_fpr=0.05, train_options={"max_epochs": 5},
                        random_state=4).fit(mixed_frame(1500, seed=4))
    return detector, save_detector(detector, MODEL)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set to ``values``, restored on exit."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def forget_bentoml_request_metrics() -> None:
    """Drops BentoML's request metrics from prometheus_client's registry: each app's metrics
    middleware registers them there once, as if it were the only app in the process (as in a
    worker), so a second app in a test process fails with DuplicateTimeseries. In multiprocess
    mode (conftest sets PROMETHEUS_MULTIPROC_DIR) ``/metrics`` reads the metric files, not this
    registry: apps started before keep counting and exposing them."""
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        if any(name.startswith("bentoml_") for name in REGISTRY._collector_to_names[collector]):
            REGISTRY.unregister(collector)


@contextmanager
def started(scoring: str, **settings: str) -> Iterator[TestClient]:
    """A client of a front service serving :func:`trained` (promoted first), started with
    :data:`SETTINGS`, ``FLOWAD_SCORING=scoring`` (``scorer``: the ``Scorer`` runs in process)
    and ``settings``. The client also holds ``detector``, ``tag`` and ``front``, the service
    instance."""
    detector, tag = trained()
    registry.promote(tag)
    with environment({**SETTINGS, "FLOWAD_SCORING": scoring, **settings}):
        service = front_service(Deployment.from_env())
        forget_bentoml_request_metrics()
        client = TestClient(service.to_asgi())
        client.__enter__()  # the instance starts, and reads its settings, now
    try:
        client.detector, client.tag = detector, tag
        client.front = front_of(service.inner.routes)
        assert client.front is not None
        yield client
    finally:
        client.__exit__(None, None, None)


def records(n: int, seed: int = 1) -> list[dict]:
    frame = mixed_frame(n, seed=seed).drop(columns=["id"])
    return json.loads(frame.to_json(orient="records"))


def metric_total(client: TestClient, series: str, label: str = "") -> float:
    """The values of ``series`` (``name{``) in /metrics summed, over lines holding ``label``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith(series) and label in line)


def scored(client: TestClient) -> float:
    """flowad_records_scored_total summed over models."""
    return metric_total(client, "flowad_records_scored_total{")


def rejected(client: TestClient, reason: str) -> float:
    """flowad_requests_rejected_total{reason} summed over models."""
    return metric_total(client, "flowad_requests_rejected_total{", f'reason="{reason}"')


def reload(client: TestClient) -> None:
    """``POST /admin/reload``, which must succeed."""
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
