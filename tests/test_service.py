"""In-process API tests: ``TestClient(FlowadService.to_asgi())`` on a freshly trained model."""

import dataclasses
import importlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import corrupt_weights, mixed_frame
from starlette.testclient import TestClient

from pipelines import Detector, registry
from pipelines.errors import SchemaError
from pipelines.registry.store import save_detector

TOKEN = "s3cret-token"
SETTINGS = {"FLOWAD_MODEL": "service-test", "FLOWAD_MAX_RECORDS": "50",
            "FLOWAD_MAX_BODY_BYTES": "20000", "FLOWAD_ADMIN_TOKEN": TOKEN,
            "FLOWAD_RELOAD_INTERVAL": "0", "FLOWAD_FILE_CHUNK_ROWS": "100",
            "FLOWAD_MAX_FILE_ROWS": "1000", "FLOWAD_MAX_EXPLAIN_RECORDS": "10"}


def train(seed: int) -> Detector:
    return Detector(exclude=["id"], target_fpr=0.05, train_options={"max_epochs": 5},
                    random_state=seed).fit(mixed_frame(1500, seed=seed))


@pytest.fixture(scope="module")
def served():
    """The service module, imported with the ``Scorer`` dependency, and a client of it."""
    detector = train(0)
    tag = save_detector(detector, "service-test")
    registry.promote(tag)
    settings = {**SETTINGS, "FLOWAD_SCORING": "scorer"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    import service.service as module

    module = importlib.reload(module)  # settings are read at import
    try:
        with TestClient(module.FlowadService.to_asgi()) as test_client:
            test_client.detector, test_client.tag = detector, tag
            yield module, test_client
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


# Both places records can be scored: in the front worker, and by the batching Scorer service
# (the mode is read per request, so one app serves both).
@pytest.fixture(scope="module", params=["local", "scorer"])
def client(request, served):
    module, test_client = served
    module.SETTINGS = dataclasses.replace(module.SETTINGS, scoring=request.param)
    return test_client


def records(n: int, seed: int = 1) -> list[dict]:
    frame = mixed_frame(n, seed=seed).drop(columns=["id"])
    return json.loads(frame.to_json(orient="records"))


def test_score_returns_verdicts_in_order_matching_the_detector(client):
    body = records(20)
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model"] == client.tag and payload["n"] == 20
    expected = client.detector.verdicts(mixed_frame(20, seed=1).drop(columns=["id"]))
    scores = [r["score"] for r in payload["results"]]
    np.testing.assert_allclose(scores, expected["score"], rtol=0, atol=1e-9)
    assert [r["is_anomaly"] for r in payload["results"]] == expected["is_anomaly"].tolist()
    assert all(0 < r["p_value"] <= 1 for r in payload["results"])


def test_explain_adds_the_top_contributions_of_each_record(client):
    body = records(4)
    response = client.post("/score?explain=true&top=3", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    expected = client.detector.explain(mixed_frame(4, seed=1).drop(columns=["id"]))
    explanation = payload["explanation"]
    assert explanation["model"] == payload["model"]
    for result, record, (_, row) in zip(payload["results"], body, expected.iterrows(),
                                        strict=True):
        top = result["contributions"]
        assert [c["column"] for c in top] == list(row.sort_values(ascending=False).index[:3])
        assert all(c["value"] == record[c["column"]] for c in top)
        np.testing.assert_allclose([c["contribution"] for c in top],
                                   row.sort_values(ascending=False)[:3], atol=1e-6)
    # contributions are measured from the reference: all of them sum to the score difference
    assert sum(expected.iloc[0]) == pytest.approx(
        payload["results"][0]["score"] - explanation["reference_score"], abs=1e-3)
    plain = client.post("/score", json=body).json()
    assert "contributions" not in plain["results"][0] and "explanation" not in plain


@pytest.mark.parametrize("query", ["explain=maybe", "explain=true&top=0", "explain=true&top=21",
                                   "explain=true&top=%C2%B2", "explain=true&top=%D9%A3",
                                   "explain=true&top=" + "1" * 5000],
                         ids=["explain", "0", "21", "superscript-2", "arabic-indic-3",
                              "5000-digits"])
def test_explain_parameters_are_checked(client, query):
    response = client.post(f"/score?{query}", json=records(2))
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "validation"
    if "top" in query:  # "²".isdigit() and "٣".isdigit() are True: only ASCII digits count
        assert response.json()["error"].startswith("top must be an integer from 1 to 20, got")


def test_explained_requests_are_bounded(client):
    response = client.post("/score?explain=true", json=records(11))
    assert response.status_code == 413
    assert "FLOWAD_MAX_EXPLAIN_RECORDS" in response.json()["error"]
    assert client.post("/score", json=records(11)).status_code == 200


def test_envelope_form_and_ignored_id_column(client):
    body = [dict(r, id=i) for i, r in enumerate(records(3))]
    response = client.post("/score", json={"records": body})
    assert response.status_code == 200, response.text
    assert response.json()["n"] == 3


def test_body_is_parsed_once_and_the_schema_still_documents_records(served, monkeypatch):
    module, test_client = served

    def second_parse(*args, **kwargs):
        raise AssertionError("the /score body was parsed a second time")

    monkeypatch.setattr(module.ScoreRequest, "model_validate_json", second_parse)
    for body in (records(3), {"records": records(3)}):
        response = test_client.post("/score", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["n"] == 3
    docs = test_client.get("/docs.json").json()
    media = docs["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    schema = media["schema"]
    if "$ref" in schema:
        schema = docs["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["records"]["type"] == "array"


def test_score_input_parses_the_body_itself_when_not_behind_the_guard(served):
    import asyncio

    from _bentoml_impl.serde import JSONSerde
    from starlette.requests import Request

    module, _ = served
    body = json.dumps({"records": records(2)}).encode()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    parsed = asyncio.run(module.ScoreRequest.from_http_request(request, JSONSerde()))
    assert parsed.records == records(2)


def test_unseen_category_is_scored_and_reported(client):
    body = records(3)
    body[1]["channel"] = "carrier-pigeon"
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["unknown_categories"] == {"channel": 1}



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


def test_model_endpoint(client):
    response = client.get("/model")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["tag"] == client.tag and info["model_kind"] == "realnvp"
    assert info["target_fpr"] == 0.05
    assert {c["name"] for c in info["schema"]["columns"]} >= {"amount", "channel"}
    assert "val_nll" in info["training_metrics"]
    # 300 calibration rows are enough for 5%: no warning (Detector.describe() is tested with one)
    assert info["calibration"] == {"method": "conformal", "n": 300, "min_rows_for_target_fpr": 19,
                                   "can_flag": True}
    assert info["warnings"] == []


def _with(row: int, **changes) -> list[dict]:
    body = records(5)
    body[row].update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "status", "needles"),
    [
        (b"[{\"amount\": 1.0,", 400, ["malformed JSON"]),
        (b"[]", 400, ["empty"]),
        (b"{\"rows\": []}", 400, ["records"]),
        (b"[1, 2]", 400, ["row 0", "object"]),
        ([{k: v for k, v in r.items() if k != "ratio"} for r in records(2)], 400,
         ["row 0", "ratio"]),
        (_with(2, surprise=1), 400, ["row 2", "surprise"]),
        (_with(3, amount="abc"), 400, ["row 3", "amount"]),
        (_with(1, ratio=None), 400, ["row 1", "ratio"]),
        (json.dumps(_with(4, amount=float("nan"))).encode(), 400, ["row 4", "amount"]),
        (_with(2, amount=1e300), 400, ["row 2", "amount", "out of range"]),
        (b'[{"amount": ' + b"9" * 401 + b', "ratio": 0.1, "count": 2, "flag": 0, '
         b'"weekend": false, "channel": "web", "age": 30}]', 400, ["row 0", "amount"]),
        (_with(1, ratio=True), 400, ["row 1", "ratio", "boolean"]),
        (_with(3, channel={"nested": [1, 2]}), 400, ["row 3", "channel"]),
        (_with(0, amount="x" * 15_000), 400, ["row 0", "amount", "15000 characters"]),
        (records(51), 413, ["51", "50"]),
        (json.dumps(records(40) * 10).encode(), 413, ["bytes"]),
    ],
    ids=["malformed", "empty", "wrong-shape", "not-objects", "missing-column",
         "unknown-column", "string-in-number", "null", "nan-token", "1e300", "401-digits",
         "bool-in-number", "object-in-text", "huge-string", "too-many", "too-many-bytes"],
)
def test_bad_input_is_a_clear_4xx(client, body, status, needles):
    if isinstance(body, bytes):
        response = client.post("/score", content=body,
                               headers={"content-type": "application/json"})
    else:
        response = client.post("/score", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "reason"}  # one body shape for every rejection
    for needle in needles:
        assert needle in response.json()["error"]
    # ... and the service is unaffected
    assert client.post("/score", json=records(2)).status_code == 200


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


def test_score_file_csv_and_parquet(client):
    frame = mixed_frame(120, seed=3)
    for name, data in [("in.csv", frame.to_csv(index=False).encode()),
                       ("in.parquet", frame.to_parquet())]:
        response = client.post("/score_file", files={"file": (name, io.BytesIO(data))})
        assert response.status_code == 200, response.text
        assert response.json()["n"] == 120
    bad = frame.drop(columns=["amount"]).to_csv(index=False).encode()
    response = client.post("/score_file", files={"file": ("bad.csv", io.BytesIO(bad))})
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "schema" and "amount" in response.json()["error"]


def test_an_empty_csv_or_parquet_is_one_rejection(client):
    frame = mixed_frame(0)
    for name, data in [("header-only.csv", frame.to_csv(index=False).encode()),
                       ("empty.parquet", frame.to_parquet())]:
        response = client.post("/score_file", files={"file": (name, io.BytesIO(data))})
        assert response.status_code == 400, response.text
        assert response.json() == {"error": "empty file: no records to score", "reason": "empty"}


def test_metrics_are_exposed(client):
    client.post("/score", json=records(45))
    client.post("/score", json=records(45, seed=2))  # the drift window needs 50 records
    client.post("/score", content=b"[{", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    for name in ["flowad_records_scored_total", "flowad_score_bucket", "flowad_p_value_bucket",
                 "flowad_requests_rejected_total", "flowad_model_info", "flowad_drift_psi"]:
        assert name in text, name
    assert 'reason="malformed_json"' in text


def test_health_endpoints(client):
    for path in ["/healthz", "/livez", "/readyz"]:
        assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 403), ({"Authorization": TOKEN}, 401)],
    ids=["missing", "wrong", "no-scheme"],
)
def test_reload_without_the_right_token_is_refused_and_changes_nothing(client, headers, status):
    other = save_detector(train(1), "service-test")
    registry.promote(other)
    try:
        response = client.post("/admin/reload", headers=headers)
        assert response.status_code == status, response.text
        assert client.post("/score", json=records(2)).json()["model"] == client.tag
    finally:
        registry.promote(client.tag)


def test_reload_with_the_token_swaps_the_model(client):
    other = save_detector(train(2), "service-test")
    registry.promote(other)
    try:
        response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == other and response.json()["changed"] is True
        assert client.post("/score", json=records(2)).json()["model"] == other
        assert client.get("/model").json()["tag"] == other
    finally:
        registry.promote(client.tag)
        client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.post("/score", json=records(2)).json()["model"] == client.tag


def test_reloading_a_broken_production_model_is_a_409_and_keeps_serving(client):
    import bentoml

    auth = {"Authorization": f"Bearer {TOKEN}"}
    broken = save_detector(train(3), "service-test")
    registry.promote(broken)
    weights = Path(bentoml.models.get(broken).path_of("flow.pt"))
    original = corrupt_weights(broken)
    try:
        response = client.post("/admin/reload", headers=auth)
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["reason"] == "model_check" and body["changed"] is False
        assert body["model"] == body["scorer_model"] == client.tag
        assert f"{broken} failed to load or verify (1 try): " in body["error"]
        assert "non-finite values in flow tensors" in body["error"]
        assert client.post("/score", json=records(2)).json()["model"] == client.tag
        # Repaired: the operator's reload tries it at once, not after the poller's backoff.
        weights.write_bytes(original)
        response = client.post("/admin/reload", headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == broken and "error" not in response.json()
        assert client.post("/score", json=records(2)).json()["model"] == broken
    finally:
        weights.write_bytes(original)
        registry.promote(client.tag)
        client.post("/admin/reload", headers=auth)
    assert client.post("/score", json=records(2)).json()["model"] == client.tag


@pytest.fixture(scope="module")
def narrow():
    """A model promoted in the tests' swaps, without the column ``flag`` (excluded): 6 input
    columns where the served model has 7. Records that hold ``flag`` suit both models."""
    detector = Detector(exclude=["id", "flag"], target_fpr=0.05, train_options={"max_epochs": 5},
                        random_state=4).fit(mixed_frame(1500, seed=4))
    return detector, save_detector(detector, "service-test")


def _reload(client) -> None:
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text


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
    import time

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
        _reload(client)
        retired = _drift(client, client.tag)
        assert set(retired) == set(DRIFT_GAUGES) and all(np.isnan(v) for v in retired.values())
        _publish_drift(client, new)
        assert all(np.isnan(v) for v in _drift(client, client.tag).values())
    finally:
        registry.promote(client.tag)
        _reload(client)


@pytest.mark.parametrize("damage", ["empty", "garbage", "directory"])
def test_model_endpoint_survives_a_damaged_production_pointer(client, damage):
    pointer = registry.pointer_path("service-test")
    original = pointer.read_text()
    try:
        if damage == "directory":
            pointer.unlink()
            pointer.mkdir()
        else:
            pointer.write_text("" if damage == "empty" else '{"tag": ')
        response = client.get("/model")
        assert response.status_code == 200, response.text
        info = response.json()
        assert info["tag"] == client.tag and info["production"] is None
        assert info["created"] is not None and info["threshold"] is not None
        assert any(w.startswith("production is unknown: the production pointer of "
                                "'service-test' cannot be read: ") for w in info["warnings"])
    finally:
        if pointer.is_dir():
            pointer.rmdir()
        pointer.write_text(original)
    assert client.get("/model").json()["production"] is True


def test_model_endpoint_survives_the_models_deletion_from_the_store(client, narrow):
    import bentoml

    doomed = save_detector(narrow[0], "service-test")
    registry.promote(doomed)
    try:
        _reload(client)
        bentoml.models.delete(doomed)  # what `bentoml models delete` does
        response = client.get("/model")
        assert response.status_code == 200, response.text
        info = response.json()
        assert info["tag"] == doomed and info["production"] is True and info["created"] is None
        assert any(w.startswith(f"created is unknown: {doomed} cannot be read from the model "
                                "store (deleted?): ") for w in info["warnings"])
        assert client.post("/score", json=records(3)).json()["model"] == doomed  # from memory
    finally:
        registry.promote(client.tag)
        _reload(client)


# ------------------------------------------------------------ the front and the scorer
@pytest.fixture
def scorer_mode(served, monkeypatch):
    module, test_client = served
    monkeypatch.setattr(module, "SETTINGS", dataclasses.replace(module.SETTINGS, scoring="scorer"))
    return module, test_client


def _sides(module) -> dict:
    """The model followers of the front worker and of the (in-process) scorer."""
    return {"front": module._front.follower, "scorer": module._front.scorer.follower}


def _promote_on_one_side(module, old: str, new: str, side: str) -> None:
    """Both sides serve ``old``; then ``new`` is promoted and ``side`` alone loads it (each
    polls the pointer on its own)."""
    registry.promote(old)
    for follower in _sides(module).values():
        follower.refresh(now=True)
    registry.promote(new)
    assert _sides(module)[side].refresh(now=True)


def _restore(module, tag: str) -> None:
    registry.promote(tag)
    for follower in _sides(module).values():
        follower.refresh(now=True)
    assert {f.current.tag for f in _sides(module).values()} == {tag}


def _post_table(client, route: str, frame):
    if route == "/score":
        body = json.loads(frame.drop(columns=["id"]).to_json(orient="records", double_precision=15))
        return client.post("/score", json=body)
    data = frame.to_csv(index=False).encode()
    return client.post("/score_file", files={"file": ("t.csv", io.BytesIO(data))})


@pytest.mark.parametrize("route", ["/score", "/score_file"])
@pytest.mark.parametrize("first", ["front", "scorer"])
def test_front_and_scorer_agree_on_the_model_through_a_schema_change(scorer_mode, narrow, first,
                                                                     route):
    """The front checks records with its model, the scorer scores them with its own, and
    after a promotion either may swap first: the new model has 6 columns, the old one 7.
    Whichever swapped first, the records are scored by the new model, with its columns (the
    front catches up with the scorer and retries, or the scorer loads the model the front
    names)."""
    module, client = scorer_mode
    detector, new = narrow
    frame = mixed_frame(250 if route == "/score_file" else 50, seed=9)  # a file: 3 chunks
    try:
        _promote_on_one_side(module, client.tag, new, first)
        response = _post_table(client, route, frame)
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["model"] == new and payload["n"] == len(frame)
        np.testing.assert_allclose([r["score"] for r in payload["results"]],
                                   detector.decision_function(frame), rtol=0, atol=1e-9)
        assert {f.current.tag for f in _sides(module).values()} == {new}
    finally:
        _restore(module, client.tag)


def test_front_and_scorer_that_cannot_agree_answer_503(scorer_mode, narrow):
    """The front swapped to a model the scorer fails to load: both keep their models, and a
    request, retried once with the front's current model, is a 503 to retry, never a 500."""
    import bentoml

    module, client = scorer_mode
    other = save_detector(narrow[0], "service-test")
    _promote_on_one_side(module, client.tag, other, "front")
    weights = Path(bentoml.models.get(other).path_of("flow.pt"))
    original = corrupt_weights(other)  # after the front loaded it: the scorer cannot
    before = _rejected(client, "model_changing")
    try:
        for route in ("/score", "/score_file"):
            response = _post_table(client, route, mixed_frame(40, seed=9))
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json() == {
                "error": f"the served model is being changed (this worker serves {other}, the "
                         f"scorer {client.tag}); retry shortly", "reason": "model_changing"}
        assert _rejected(client, "model_changing") == before + 2
    finally:
        weights.write_bytes(original)
        _restore(module, client.tag)


def test_the_scorer_gets_calls_of_bounded_size(scorer_mode, monkeypatch):
    """A file's chunks (100 rows here) and large requests go to the scorer in calls of at most
    SCORER_CALL_ROWS rows, whose verdicts are put back together in order."""
    module, client = scorer_mode
    scorer = module._front.scorer
    sizes = []
    verdicts = scorer.verdicts

    def recorded(rows):
        sizes.append(len(rows))
        return verdicts(rows)

    monkeypatch.setattr(scorer, "verdicts", recorded)
    monkeypatch.setattr(module, "SCORER_CALL_ROWS", 30)
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


def test_an_unreachable_scorer_is_a_503_to_retry(scorer_mode, monkeypatch):
    """BentoML's real client (aiohttp) to a port where nothing listens: the error it raises
    (as for a dropped connection; the scorer's "process is overloaded" is another), tried
    again twice, is a 503."""
    from _bentoml_impl.client import RemoteProxy
    from test_integration import free_port

    module, client = scorer_mode
    proxy = RemoteProxy(f"http://127.0.0.1:{free_port()}", service=module.Scorer)
    client.portal.call(proxy.__aenter__)  # what BentoML does for a worker's dependency
    monkeypatch.setattr(module._front, "scorer", proxy)
    before, scored = _rejected(client, "overloaded"), _scored(client)
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
    assert _rejected(client, "overloaded") == before + 2 and _scored(client) == scored


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


# ------------------------------------------------------------ hostile input and faults
def _scored(client) -> float:
    """flowad_records_scored_total summed over models, from /metrics."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("flowad_records_scored_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("body", ["[" * 2000 + "]" * 2000, '{"a":' * 2000 + "1" + "}" * 2000,
                                  "[" + '{"a":' * 1100 + "1" + "}" * 1100 + "]"],
                         ids=["arrays", "objects", "in-a-record"])
def test_deeply_nested_json_is_a_fast_400(client, body):
    import time

    start = time.perf_counter()
    response = client.post("/score", content=body.encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert time.perf_counter() - start < 5
    assert len(response.text) < 1000  # the nested value is not echoed whole


@pytest.mark.parametrize("where", ["value", "key"])
def test_a_lone_surrogate_in_a_string_is_a_400(client, where):
    # orjson refuses "\ud800"; the standard parser (the fallback for NaN tokens) accepts it,
    # and a string holding it cannot be encoded as text anywhere later.
    record = json.loads(mixed_frame(1, seed=3).drop(columns=["id"]).to_json(orient="records"))[0]
    if where == "value":
        record["channel"] = "\ud800"
    else:
        record["\ud800"] = 1
    body = json.dumps([record])  # ASCII: the surrogate travels as the escape \ud800
    scored = _scored(client)
    response = client.post("/score", content=body.encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "surrogate" in response.json()["error"]
    assert _scored(client) == scored


def test_score_file_ignores_a_long_file_name(client):
    data = mixed_frame(30, seed=4).to_csv(index=False).encode()
    response = client.post("/score_file", files={"file": ("x" * 300 + ".csv", io.BytesIO(data))})
    assert response.status_code == 200, response.text
    assert response.json()["n"] == 30


@pytest.mark.parametrize("cut", [8, 60, 400], ids=["in-the-closing-boundary", "in-the-file",
                                                  "in-the-part-headers"])
def test_a_truncated_upload_is_said_to_be_truncated(client, cut):
    import httpx

    data = mixed_frame(30, seed=4).to_csv(index=False).encode()
    upload = httpx.Request("POST", "http://x/score_file", files={"file": ("a.csv", data)})
    body = upload.read()
    body = body[:-cut] if cut < 100 else body[:cut]
    response = client.post("/score_file", content=body,
                           headers={"content-type": upload.headers["content-type"]})
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "validation"
    assert "malformed or truncated multipart body" in response.json()["error"]


@pytest.mark.parametrize(("route", "encoding"), [("/score", "gzip"), ("/score", "deflate"),
                                                 ("/score_file", "gzip")])
def test_a_compressed_body_is_a_415(client, route, encoding):
    import gzip
    import zlib

    compress = gzip.compress if encoding == "gzip" else zlib.compress
    before = _rejected(client, "encoding")
    response = client.post(route, content=compress(json.dumps(records(3)).encode()),
                           headers={"content-type": "application/json",
                                    "content-encoding": encoding})
    assert response.status_code == 415, response.text
    assert response.json() == {
        "error": f"content encoding '{encoding}' is not supported: send the body uncompressed "
                 "(identity)", "reason": "encoding"}
    assert _rejected(client, "encoding") == before + 1
    response = client.post("/score", json=records(3), headers={"content-encoding": "identity"})
    assert response.status_code == 200, response.text


def _rejected(client, reason: str) -> float:
    """flowad_requests_rejected_total{reason} summed over models, from /metrics."""
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("flowad_requests_rejected_total{")
               and f'reason="{reason}"' in line)


def test_score_file_without_a_boundary_is_a_400(client):
    response = client.post("/score_file", content=b"--abc\r\nnonsense",
                           headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "validation" and "boundary" in response.json()["error"]
    response = client.post("/score_file", content=b"--abc\r\nnonsense",
                           headers={"content-type": "multipart/form-data; boundary=abc"})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error", "reason"}


def test_score_file_never_downloads_a_url_sent_as_text(client):
    import http.server
    import threading

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(mixed_frame(5).to_csv(index=False).encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.csv"
        response = client.post("/score_file", files={"file": (None, url)})  # a text part
        assert response.status_code == 400, response.text
        assert "not a file" in response.json()["error"]
        response = client.post("/score_file", data={"file": url})  # a url-encoded form
        assert response.status_code == 400, response.text
        assert hits == []
    finally:
        server.shutdown()


def test_score_file_is_all_or_nothing_and_names_the_row_in_the_file(client):
    frame = mixed_frame(300, seed=5)
    frame["amount"] = frame["amount"].astype(object)
    frame.loc[250, "amount"] = "not a number"  # in the third chunk of 100 rows
    before = _scored(client)
    response = client.post("/score_file", files={
        "file": ("bad.csv", io.BytesIO(frame.to_csv(index=False).encode()))})
    assert response.status_code == 400, response.text
    assert "row 250" in response.json()["error"] and "index label" not in response.json()["error"]
    assert _scored(client) == before  # the first 250 rows were not counted


def test_score_file_over_the_row_limit_is_a_413(client):
    data = mixed_frame(1001, seed=6).to_csv(index=False).encode()
    response = client.post("/score_file", files={"file": ("big.csv", io.BytesIO(data))})
    assert response.status_code == 413, response.text
    assert "1000" in response.json()["error"]


def test_an_upload_streamed_past_the_byte_limit_is_a_413():
    from service.guard import RequestGuard

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


def test_unknown_paths_share_one_endpoint_label(client):
    import uuid

    for _ in range(30):
        client.get(f"/{uuid.uuid4().hex}")
        client.post(f"/score/{uuid.uuid4().hex}", json=[])
    endpoints = set()
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("bentoml_") and 'endpoint="' in line:
            endpoints.add(line.split('endpoint="', 1)[1].split('"', 1)[0])
    assert "/unmatched" in endpoints
    assert len(endpoints) < 15, sorted(endpoints)
    # ... and the real routes still answer
    assert client.get("/model").status_code == 200
    assert client.get("/docs.json").status_code == 200


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


def test_docs_type_every_column_of_the_served_model(client):
    docs = client.get("/docs.json").json()
    record = docs["components"]["schemas"]["Record"]
    detector = client.detector
    assert set(record["required"]) == set(detector.encoder_.schema_.names)
    assert record["additionalProperties"] is False and "id" in record["properties"]
    properties = record["properties"]
    assert properties["amount"]["type"] == "number"
    assert properties["weekend"]["type"] == "boolean"
    assert properties["channel"]["type"] == "string"
    assert {"type": "null"} in properties["age"]["anyOf"]  # missing in training: nullable


def test_docs_describe_the_file_upload_and_the_model_routes(client):
    response = client.get("/docs.json")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    paths = response.json()["paths"]
    upload = paths["/score_file"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["file"]  # the part service/uploads.py reads
    assert {"200", "400", "413"} <= set(paths["/score_file"]["post"]["responses"])
    assert "get" in paths["/model"] and "post" in paths["/score"]


def test_score_file_past_its_time_stops_and_counts_nothing(served, monkeypatch):
    module, test_client = served
    monkeypatch.setattr(module, "SETTINGS", dataclasses.replace(module.SETTINGS, file_seconds=0))
    before = _scored(test_client)
    data = mixed_frame(300, seed=7).to_csv(index=False).encode()
    response = test_client.post("/score_file", files={"file": ("slow.csv", io.BytesIO(data))})
    assert response.status_code == 413, response.text
    assert "100 rows done" in response.json()["error"]  # stopped after the first chunk
    assert _scored(test_client) == before


def test_score_file_abandoned_by_its_client_stops_and_counts_nothing(served):
    import asyncio

    import httpx
    from starlette.requests import Request

    module, test_client = served
    data = mixed_frame(300, seed=8).to_csv(index=False).encode()
    upload = httpx.Request("POST", "http://x/score_file", files={"file": ("a.csv", data)})
    body = upload.read()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():  # the body, then the client is gone
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/score_file", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in upload.headers.items()]}
    before = _scored(test_client)
    response = asyncio.run(module._front.score_upload(Request(scope, receive)))
    assert response.status_code == 204
    assert _scored(test_client) == before


# ------------------------------------------------------------------ what an upload may hold
def _upload(client, name: str, data: bytes):
    return client.post("/score_file", files={"file": (name, io.BytesIO(data))})


def test_score_file_names_a_nested_column_in_a_400(client):
    frame = mixed_frame(50, seed=20)
    frame["tags"] = [["a", "b"]] * len(frame)
    response = _upload(client, "nested.parquet", frame.to_parquet())  # was a plain-text 500
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "could not read the uploaded parquet file: column 'tags' holds list<element: "
                 "string> values, not one number or text per row: flatten it into columns or "
                 "drop it", "reason": "validation"}


def test_score_file_refuses_a_decompression_bomb_before_decoding_it(client):
    frame = mixed_frame(40, seed=21).assign(channel="x" * 8_000_000)  # 305 MiB of text
    data = frame.to_parquet(compression="zstd")
    assert len(data) < 30_000
    before = _rejected(client, "too_large")
    started = time.monotonic()
    response = _upload(client, "bomb.parquet", data)
    assert response.status_code == 413, response.text
    assert response.json()["error"].startswith(
        "the uploaded parquet file is too large to read: column 'channel' holds 305 MiB of text")
    assert time.monotonic() - started < 5
    assert _rejected(client, "too_large") == before + 1
    # a column the model does not know is refused from the footer, before any page is read
    response = _upload(client, "note.parquet", mixed_frame(40).assign(
        note="x" * 8_000_000).to_parquet(compression="zstd"))
    assert response.json() == {"error": "unexpected column(s) not in the schema: 'note'",
                               "reason": "schema"}
    assert time.monotonic() - started < 5


def test_score_file_refuses_a_wide_header_before_reading_rows(client):
    data = (",".join(f"c{i}" for i in range(300_000)) + "\n" + ",".join("1" * 300_000)).encode()
    started = time.monotonic()
    response = _upload(client, "wide.csv", data)  # took 16 s and +650 MiB for its 400
    assert response.status_code == 413, response.text
    assert "the header is longer than 1048576 bytes (FLOWAD_MAX_HEADER_BYTES)" in response.text
    assert time.monotonic() - started < 3


def test_score_file_refuses_a_text_cell_over_the_limit(client):
    frame = mixed_frame(20, seed=22)
    frame.loc[7, "channel"] = "w" * 100_001
    response = _upload(client, "long.csv", frame.to_csv(index=False).encode())
    assert response.status_code == 413, response.text
    assert response.json()["error"] == (
        "the uploaded csv file is too large to read: column 'channel', row 7: a text cell of "
        "100001 characters, more than the limit of 100000 (FLOWAD_MAX_CELL_CHARS)")


def test_score_file_reads_missing_value_words_of_text_columns_as_text(client):
    frame = mixed_frame(20, seed=23)
    frame.loc[[3, 5], "channel"] = ["NA", "null"]  # channel had no missing values in training
    response = _upload(client, "words.csv", frame.to_csv(index=False).encode())
    assert response.status_code == 200, response.text  # was 400: missing value in 'channel'
    assert response.json()["unknown_categories"] == {"channel": 2}
    body = json.loads(frame.drop(columns=["id"]).to_json(orient="records", double_precision=15))
    as_json = client.post("/score", json=body).json()["results"]
    assert [r["p_value"] for r in response.json()["results"]] == [r["p_value"] for r in as_json]


def test_score_file_reads_pandas_index_columns(client):
    frame = mixed_frame(30, seed=24)
    response = _upload(client, "indexed.parquet", frame.set_index("amount").to_parquet())
    assert response.status_code == 200, response.text  # was 400: missing column(s): 'amount'
    expected = client.detector.decision_function(frame.drop(columns=["id"]))
    assert [r["score"] for r in response.json()["results"]] == pytest.approx(expected,
                                                                                abs=1e-9)


def test_a_cross_conformal_model_is_served_with_its_rule(client):
    """A model of a small table (200 rows at target FPR 0.01: cross-conformal, 10 flows):
    promoted and reloaded, /score answers with its cross-conformal p-values and verdicts (as
    the detector's own), and GET /model names its calibration."""
    detector = Detector(exclude=["id"], train_options={"max_epochs": 3},
                        random_state=6).fit(mixed_frame(200, seed=6))
    assert detector.calibrator_.method == "cross-conformal"
    registry.promote(save_detector(detector, "service-test"))
    try:
        _reload(client)
        body = records(8)
        body[3]["amount"] *= 40
        response = client.post("/score", json=body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        expected, _ = detector.record_verdicts(body)
        assert [r["p_value"] for r in results] == pytest.approx(expected["p_value"].tolist())
        assert [r["is_anomaly"] for r in results] == expected["is_anomaly"].tolist()
        assert results[3]["is_anomaly"]
        info = client.get("/model").json()
        assert info["calibration"] == {"method": "cross-conformal", "n": 200, "folds": 5,
                                       "min_rows_for_target_fpr": 99, "can_flag": True}
    finally:
        registry.promote(client.tag)
        _reload(client)
