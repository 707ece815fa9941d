"""``GET /model`` in process (service/model_info.py), also when the pointer file is damaged or
the model was deleted from the store."""


import pytest
from conftest import mixed_frame
from inprocess import narrow as narrow_model
from inprocess import records, reload, started

from pipelines import Detector, registry
from pipelines.registry.store import save_detector


# Both places records can be scored: in the front worker, and by the batching Scorer service
# (in process here): a service started for each.
@pytest.fixture(scope="module", params=["local", "scorer"])
def client(request):
    with started(request.param) as client:
        yield client


@pytest.fixture(scope="module")
def narrow():
    return narrow_model()



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
        reload(client)
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
        reload(client)


def test_a_cross_conformal_model_is_served_with_its_rule(client):
    """A model of a small table (200 rows at target FPR 0.01: cross-conformal, 10 flows):
    promoted and reloaded, /score answers with its cross-conformal p-values and verdicts (as
    the detector's own), and GET /model names its calibration."""
    detector = Detector(exclude=["id"], train_options={"max_epochs": 3},
                        random_state=6).fit(mixed_frame(200, seed=6))
    assert detector.calibrator_.method == "cross-conformal"
    registry.promote(save_detector(detector, "service-test"))
    try:
        reload(client)
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
        reload(client)
