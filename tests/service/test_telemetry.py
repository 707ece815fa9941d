"""A worker's metrics and drift window (service/telemetry.py, service/metrics.py), read from
``/metrics`` in process."""

import os
import time

import numpy as np
import pytest
from inprocess import narrow as narrow_model
from inprocess import records, reload, started

from pipelines import registry


# Both places records can be scored: in the front worker, and by the batching Scorer service
# (in process here): a service started for each.
@pytest.fixture(scope="module", params=["local", "scorer"])
def client(request):
    with started(request.param) as client:
        yield client


@pytest.fixture(scope="module")
def narrow():
    return narrow_model()



def test_metrics_are_exposed(client):
    client.post("/score", json=records(45))
    client.post("/score", json=records(45, seed=2))  # the drift window needs 50 records
    client.post("/score", content=b"[{", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    for name in ["flowad_records_scored_total", "flowad_score_bucket", "flowad_p_value_bucket",
                 "flowad_requests_rejected_total", "flowad_model_info", "flowad_drift_psi"]:
        assert name in text, name
    assert 'reason="malformed_json"' in text


DRIFT_GAUGES = ("flowad_drift_psi", "flowad_drift_ks_statistic", "flowad_drift_ks_pvalue",
                "flowad_window_anomaly_rate", "flowad_drift_window_records")


def _drift(client, tag: str) -> dict[str, float]:
    """The drift gauges of model ``tag`` in /metrics."""
    found = {}
    for line in client.get("/metrics").text.splitlines():
        name = line.split("{", 1)[0]
        if name in DRIFT_GAUGES and f'model="{tag}"' in line:
            found[name] = float(line.rsplit(" ", 1)[1])
    return found


def _publish_drift(client, tag: str) -> None:
    """Scores records until the drift gauges of ``tag`` show (50 records, once a second)."""

    deadline = time.monotonic() + 15
    while not all(np.isfinite(_drift(client, tag).get(name, np.nan)) for name in DRIFT_GAUGES):
        assert time.monotonic() < deadline, _drift(client, tag)
        assert client.post("/score", json=records(50, seed=11)).status_code == 200
        time.sleep(0.3)


def test_a_swap_retires_the_old_models_drift_gauges(client, narrow):
    """Else ``max by (job, model)(flowad_drift_psi) > 0.2`` keeps firing for a model no longer
    served. In multiprocess mode (these tests' too: conftest sets PROMETHEUS_MULTIPROC_DIR)
    the series cannot be removed, so they read NaN, which no alert threshold matches."""
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    _, new = narrow
    _publish_drift(client, client.tag)
    registry.promote(new)
    try:
        reload(client)
        retired = _drift(client, client.tag)
        assert set(retired) == set(DRIFT_GAUGES) and all(np.isnan(v) for v in retired.values())
        _publish_drift(client, new)
        assert all(np.isnan(v) for v in _drift(client, client.tag).values())
    finally:
        registry.promote(client.tag)
        reload(client)


def test_observe_many_matches_one_by_one_observations():
    from prometheus_client import CollectorRegistry, Histogram

    from service.metrics import observe_many

    values = np.concatenate([np.random.default_rng(0).normal(size=500), [0.0, 1.0, 1.0, 50.0]])
    registry = CollectorRegistry()
    one = Histogram("one", "", buckets=(-1.0, 0.0, 1.0, 2.0), registry=registry)
    many = Histogram("many", "", buckets=(-1.0, 0.0, 1.0, 2.0), registry=registry)
    for v in values:
        one.observe(v)
    observe_many(many, values)
    samples = {m.name: {(s.name.replace("many", "one"), tuple(sorted(s.labels.items()))): s.value
                        for s in m.samples if not s.name.endswith("_created")}
               for m in registry.collect()}
    assert samples["one"] == pytest.approx(samples["many"])


def test_an_infinite_score_is_counted_but_leaves_the_sum_finite():
    from prometheus_client import CollectorRegistry, Histogram

    from service.metrics import observe_many

    registry = CollectorRegistry()
    histogram = Histogram("scores", "", buckets=(0.0, 1.0), registry=registry)
    observe_many(histogram, np.array([0.5, np.inf, 2.0]))
    samples = {(s.name, s.labels.get("le")): s.value for s in next(registry.collect()).samples}
    assert samples[("scores_count", None)] == 3 and samples[("scores_bucket", "+Inf")] == 3
    assert samples[("scores_bucket", "1.0")] == 1 and samples[("scores_sum", None)] == 2.5


def test_a_contamination_models_expected_flag_rate_is_its_contamination(client):
    """Its threshold was not calibrated at a target FPR: the responses say so (null) and the
    flag-rate alert compares with its contamination, the share of training rows it flags."""
    from conftest import mixed_frame

    from pipelines import Detector
    from pipelines.registry.store import save_detector

    detector = Detector(exclude=["id"], contamination=0.08, train_options={"max_epochs": 2},
                        random_state=3).fit(mixed_frame(600, seed=3))
    tag = save_detector(detector, "service-test")
    registry.promote(tag)
    try:
        reload(client)
        response = client.post("/score", json=records(3))
        assert response.status_code == 200, response.text
        assert response.json()["target_fpr"] is None
        gauge = [line for line in client.get("/metrics").text.splitlines()
                 if line.startswith("flowad_target_fpr{") and f'model="{tag}"' in line]
        assert gauge and float(gauge[0].rsplit(" ", 1)[1]) == 0.08
    finally:
        registry.promote(client.tag)
        reload(client)
