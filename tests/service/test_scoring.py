"""Scoring in the service (service/scoring.py): verdicts as the detector's, records the model
cannot score, and the front and the scorer agreeing on the model."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import corrupt_weights, mixed_frame
from inprocess import narrow as narrow_model
from inprocess import records, rejected, scored, started

from pipelines import registry
from pipelines.errors import SchemaError
from pipelines.registry.store import save_detector
from service import scoring
from service.service import Scorer


# Both places records can be scored: in the front worker, and by the batching Scorer service
# (in process here): a service started for each.
@pytest.fixture(scope="module", params=["local", "scorer"])
def client(request):
    with started(request.param) as client:
        yield client


@pytest.fixture(scope="module")
def narrow():
    return narrow_model()


@pytest.fixture(scope="module")
def scorer_client():
    """A front whose records are scored by the (in-process) Scorer."""
    with started("scorer") as client:
        yield client



def test_a_value_between_grid_points_scores_finite_and_worse(client):
    """``count`` took whole numbers in training: 2.5 is off its grid, scored at the nearest
    count with a finite penalty (it had zero density, +inf, written as null): no record of
    zero density, and ``count`` explains the difference."""
    body = records(3)
    body[1]["count"] = 2.5
    before = _zero_density(client)
    response = client.post("/score?explain=true&top=2", json=body)
    assert response.status_code == 200, response.text
    assert _zero_density(client) == before  # flowad_zero_density_records_total
    results = response.json()["results"]
    assert response.json()["zero_density"] == 0
    frame = mixed_frame(3, seed=1).drop(columns=["id"]).astype({"count": float})
    rounded = client.detector.decision_function(frame.assign(count=[frame["count"][0], 2.0,
                                                                    frame["count"][2]]))
    assert results[1]["score"] > rounded[1] + 5
    assert results[1]["score"] == pytest.approx(
        client.detector.decision_function(frame.assign(count=[frame["count"][0], 2.5,
                                                              frame["count"][2]]))[1], abs=1e-9)
    assert results[1]["contributions"][0]["column"] == "count"
    assert results[1]["contributions"][0]["contribution"] > 5
    expected = client.detector.decision_function(frame)
    assert [results[i]["score"] for i in (0, 2)] == pytest.approx(expected[[0, 2]], abs=1e-9)


def _zero_density(client) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith("flowad_zero_density_records_total{"))


def test_score_is_bit_identical_to_scoring_the_frame_of_the_records(client):
    """Local scoring checks a few records without a DataFrame (pipelines' records path): the
    verdicts, unseen-category counts and rejections are those of the frame of the records."""
    detector = client.detector
    body = records(50, seed=3)
    body[0].update(channel="carrier-pigeon", weekend=1)
    body[1].update(age=None, flag=True, count=4.0)
    for batch in (body[:1], body[:2], body[:16], body):
        frame = detector.encoder_.schema_.records_frame(batch)
        expected = detector.verdict_columns(frame)
        response = client.post("/score", json=batch)
        assert response.status_code == 200, response.text
        payload = response.json()
        for column, values in expected.items():  # JSON keeps a float64 exactly
            assert [r[column] for r in payload["results"]] == values.tolist(), column
        unknown = detector.encoder_.unknown_counts(frame)
        assert payload["unknown_categories"] == {k: v for k, v in unknown.items() if v}
    for column, value in [("amount", 1e300), ("ratio", True), ("ratio", float("nan")),
                          ("weekend", 2), ("channel", None), ("count", "x")]:
        batch = [body[0], {**body[1], column: value}]
        with pytest.raises(SchemaError) as error:
            detector.verdict_columns(detector.encoder_.schema_.records_frame(batch))
        response = client.post("/score", content=json.dumps(batch),
                               headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json() == {"error": str(error.value), "reason": "schema"}


def test_a_record_the_model_cannot_score_is_a_422_and_never_nan(client, monkeypatch):
    """A NaN log-likelihood (a model that misbehaves on some input that passes every check)
    must not reach a response, nor fail the other records a scorer batch merges with it."""
    from flowmodels import FlowMixture

    flow_class = type(client.detector.flow_)
    assert flow_class is FlowMixture
    original = flow_class.log_prob

    def nan_for_far_records(self, x):  # NaN where the first encoded column is far out
        out = original(self, x)
        return torch.where(x[:, 0] > 5, torch.full_like(out, float("nan")), out)

    monkeypatch.setattr(flow_class, "log_prob", nan_for_far_records)
    body = records(4)
    body[2]["amount"] = 1e4  # far, within the range the encoder accepts
    response = client.post("/score", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "unscorable" and "row 2" in response.json()["error"]
    assert "NaN" not in response.text.replace("(NaN)", "")
    assert client.post("/score", json=records(3)).status_code == 200


def _sides(client) -> dict:
    """The model followers of the front worker and of the (in-process) scorer."""
    return {"front": client.front.follower, "scorer": client.front.scoring.scorer.follower}


def _promote_on_one_side(client, old: str, new: str, side: str) -> None:
    """Both sides serve ``old``; then ``new`` is promoted and ``side`` alone loads it (each
    polls the pointer on its own)."""
    registry.promote(old)
    for follower in _sides(client).values():
        follower.refresh(now=True)
    registry.promote(new)
    assert _sides(client)[side].refresh(now=True)


def _restore(client, tag: str) -> None:
    registry.promote(tag)
    for follower in _sides(client).values():
        follower.refresh(now=True)
    assert {f.current.tag for f in _sides(client).values()} == {tag}


def _post_table(client, route: str, frame):
    if route == "/score":
        body = json.loads(frame.drop(columns=["id"]).to_json(orient="records", double_precision=15))
        return client.post("/score", json=body)
    data = frame.to_csv(index=False).encode()
    return client.post("/score_file", files={"file": ("t.csv", io.BytesIO(data))})


@pytest.mark.parametrize("route", ["/score", "/score_file"])
@pytest.mark.parametrize("first", ["front", "scorer"])
def test_front_and_scorer_agree_on_the_model_through_a_schema_change(scorer_client, narrow, first,
                                                                     route):
    """The front checks records with its model, the scorer scores them with its own, and
    after a promotion either may swap first: the new model has 6 columns, the old one 7.
    Whichever swapped first, the records are scored by the new model, with its columns (the
    front catches up with the scorer and retries, or the scorer loads the model the front
    names)."""
    client = scorer_client
    detector, new = narrow
    frame = mixed_frame(250 if route == "/score_file" else 50, seed=9)  # a file: 3 chunks
    try:
        _promote_on_one_side(client, client.tag, new, first)
        response = _post_table(client, route, frame)
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["model"] == new and payload["n"] == len(frame)
        np.testing.assert_allclose([r["score"] for r in payload["results"]],
                                   detector.decision_function(frame), rtol=0, atol=1e-9)
        assert {f.current.tag for f in _sides(client).values()} == {new}
    finally:
        _restore(client, client.tag)


def test_front_and_scorer_that_cannot_agree_answer_503(scorer_client, narrow):
    """The front swapped to a model the scorer fails to load: both keep their models, and a
    request, retried once with the front's current model, is a 503 to retry, never a 500."""
    import bentoml

    client = scorer_client
    other = save_detector(narrow[0], "service-test")
    _promote_on_one_side(client, client.tag, other, "front")
    weights = Path(bentoml.models.get(other).path_of("flow.pt"))
    original = corrupt_weights(other)  # after the front loaded it: the scorer cannot
    before = rejected(client, "model_changing")
    try:
        for route in ("/score", "/score_file"):
            response = _post_table(client, route, mixed_frame(40, seed=9))
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json() == {
                "error": f"the served model is being changed (this worker serves {other}, the "
                         f"scorer {client.tag}); retry shortly", "reason": "model_changing"}
        assert rejected(client, "model_changing") == before + 2
    finally:
        weights.write_bytes(original)
        _restore(client, client.tag)


def test_the_scorer_gets_calls_of_bounded_size(scorer_client, monkeypatch):
    """A file's chunks (100 rows here) and large requests go to the scorer in calls of at most
    SCORER_CALL_ROWS rows, whose verdicts are put back together in order."""
    client = scorer_client
    scorer = client.front.scoring.scorer
    sizes = []
    verdicts = scorer.verdicts

    def recorded(rows):
        sizes.append(len(rows))
        return verdicts(rows)

    monkeypatch.setattr(scorer, "verdicts", recorded)
    monkeypatch.setattr(scoring, "SCORER_CALL_ROWS", 30)
    frame = mixed_frame(250, seed=10)
    for route, calls in [("/score_file", [30, 30, 30, 10, 30, 30, 30, 10, 30, 20]),
                         ("/score", [30, 20])]:
        sizes.clear()
        response = _post_table(client, route, frame if route == "/score_file" else frame[:50])
        assert response.status_code == 200, response.text
        assert sizes == calls
        expected = client.detector.decision_function(frame)[: response.json()["n"]]
        # float32 arithmetic: a record's score varies by ~1e-6 with the size of its batch
        np.testing.assert_allclose([r["score"] for r in response.json()["results"]], expected,
                                   rtol=0, atol=1e-5)


def test_an_unreachable_scorer_is_a_503_to_retry(scorer_client, monkeypatch):
    """BentoML's real client (aiohttp) to a port where nothing listens: the error it raises
    (as for a dropped connection; the scorer's "process is overloaded" is another), tried
    again twice, is a 503."""
    from _bentoml_impl.client import RemoteProxy
    from test_integration import free_port

    client = scorer_client
    proxy = RemoteProxy(f"http://127.0.0.1:{free_port()}", service=Scorer)
    client.portal.call(proxy.__aenter__)  # what BentoML does for a worker's dependency
    monkeypatch.setattr(client.front.scoring, "scorer", proxy)
    before, scored_before = rejected(client, "overloaded"), scored(client)
    try:
        for route in ("/score", "/score_file"):
            response = _post_table(client, route, mixed_frame(20, seed=12))
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json() == {
                "error": "the scorer could not be reached (ClientConnectorError); retry shortly",
                "reason": "overloaded"}
    finally:
        client.portal.call(proxy.close)
    assert rejected(client, "overloaded") == before + 2 and scored(client) == scored_before
