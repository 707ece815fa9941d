"""The service in process, through its routes: ``/score``, the request checks, ``/admin/reload``,
``/docs.json``, the metrics' endpoint label (``TestClient`` on a freshly trained model)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import corrupt_weights, mixed_frame
from inprocess import TOKEN, records, rejected, reload, scored, started, train
from inprocess import narrow as narrow_model

from pipelines import registry
from pipelines.registry.store import save_detector
from service.errors import RequestRejected
from service.service import ScoreRequest


# Both places records can be scored: in the front worker, and by the batching Scorer service
# (in process here): a service started for each.
@pytest.fixture(scope="module", params=["local", "scorer"])
def client(request):
    with started(request.param) as client:
        yield client


@pytest.fixture(scope="module")
def narrow():
    return narrow_model()


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


def test_envelope_form_and_ignored_id_column(client):
    body = [dict(r, id=i) for i, r in enumerate(records(3))]
    response = client.post("/score", json={"records": body})
    assert response.status_code == 200, response.text
    assert response.json()["n"] == 3


def test_body_is_parsed_once_and_the_schema_still_documents_records(client, monkeypatch):
    def second_parse(*args, **kwargs):
        raise AssertionError("the /score body was parsed a second time")

    monkeypatch.setattr(ScoreRequest, "model_validate_json", second_parse)
    for body in (records(3), {"records": records(3)}):
        response = client.post("/score", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["n"] == 3
    docs = client.get("/docs.json").json()
    media = docs["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    schema = media["schema"]
    if "$ref" in schema:
        schema = docs["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["records"]["type"] == "array"


def test_score_input_parses_the_body_itself_when_not_behind_the_guard():
    import asyncio

    from _bentoml_impl.serde import JSONSerde
    from starlette.requests import Request

    body = json.dumps({"records": records(2)}).encode()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    parsed = asyncio.run(ScoreRequest.from_http_request(request, JSONSerde()))
    assert parsed.records == records(2)


@pytest.mark.parametrize(("body", "reason"), [(b"[{", "malformed_json"), (b"[1]", "validation")])
def test_score_input_not_behind_the_guard_rejects_as_the_guard_does(body, reason):
    import asyncio

    from _bentoml_impl.serde import JSONSerde
    from starlette.requests import Request

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(RequestRejected) as rejected:
        asyncio.run(ScoreRequest.from_http_request(request, JSONSerde()))
    assert (rejected.value.status, rejected.value.reason) == (400, reason)


def test_unseen_category_is_scored_and_reported(client):
    body = records(3)
    body[1]["channel"] = "carrier-pigeon"
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["unknown_categories"] == {"channel": 1}


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


def _documented_records(client) -> tuple[dict, int]:
    """The record schema and the most records /docs.json documents for /score."""
    docs = client.get("/docs.json").json()
    body = docs["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    records = body["schema"]["properties"]["records"]
    assert records["items"] == {"$ref": "#/components/schemas/Record"}
    return docs["components"]["schemas"]["Record"], records["maxItems"]


def test_docs_follow_the_model_swapped_in(client, narrow):
    """The records are documented from the model the worker serves (they were from the one
    served when the module was imported): ``flag``, an input column of the first model, is
    an ignored one of the new model."""
    detector, new = narrow
    record, max_items = _documented_records(client)
    assert "flag" in record["required"] and max_items == 50
    registry.promote(new)
    try:
        reload(client)
        record, max_items = _documented_records(client)
        assert record["required"] == list(detector.input_columns) and "flag" not in record[
            "required"]
        assert record["properties"]["flag"]["description"] == "ignored by the model"
        assert max_items == 50
    finally:
        registry.promote(client.tag)
        reload(client)
    assert "flag" in _documented_records(client)[0]["required"]


def test_two_services_in_one_process_each_keep_their_settings_and_model(narrow):
    """Settings are read by each service when it starts (they were read once, at import, into
    a module global), and the routes answer for their own service (they used a module global
    holding the last one started)."""
    _, pinned = narrow
    with (started("local", FLOWAD_MAX_RECORDS="3") as first,
          started("scorer", FLOWAD_MODEL=pinned, FLOWAD_MAX_RECORDS="5") as second):
        assert first.get("/model").json()["tag"] == first.tag
        assert second.get("/model").json()["tag"] == pinned
        assert first.get("/model").json()["limits"]["max_records"] == 3
        assert second.get("/model").json()["limits"]["max_records"] == 5
        response = first.post("/score", json=records(4))
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "4 records exceed the limit of 3 per request"
        response = second.post("/score", json=records(4))
        assert response.status_code == 200, response.text
        assert response.json()["model"] == pinned
        assert second.post("/score", json=records(6)).status_code == 413
        assert _documented_records(first)[1] == 3 and _documented_records(second)[1] == 5
        csv = mixed_frame(20, seed=2).to_csv(index=False).encode()
        for client, tag in ((first, first.tag), (second, pinned)):
            response = client.post("/score_file", files={"file": ("t.csv", csv)})
            assert response.status_code == 200 and response.json()["model"] == tag


@pytest.mark.parametrize("body", ["[" * 2000 + "]" * 2000, '{"a":' * 2000 + "1" + "}" * 2000,
                                  "[" + '{"a":' * 1100 + "1" + "}" * 1100 + "]"],
                         ids=["arrays", "objects", "in-a-record"])
def test_deeply_nested_json_is_a_fast_400(client, body):

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
    before = scored(client)
    response = client.post("/score", content=body.encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "surrogate" in response.json()["error"]
    assert scored(client) == before


@pytest.mark.parametrize(("route", "encoding"), [("/score", "gzip"), ("/score", "deflate"),
                                                 ("/score_file", "gzip")])
def test_a_compressed_body_is_a_415(client, route, encoding):
    import gzip
    import zlib

    compress = gzip.compress if encoding == "gzip" else zlib.compress
    before = rejected(client, "encoding")
    response = client.post(route, content=compress(json.dumps(records(3)).encode()),
                           headers={"content-type": "application/json",
                                    "content-encoding": encoding})
    assert response.status_code == 415, response.text
    assert response.json() == {
        "error": f"content encoding '{encoding}' is not supported: send the body uncompressed "
                 "(identity)", "reason": "encoding"}
    assert rejected(client, "encoding") == before + 1
    response = client.post("/score", json=records(3), headers={"content-encoding": "identity"})
    assert response.status_code == 200, response.text
