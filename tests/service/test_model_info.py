"""``GET /model`` in process (service/model_info.py), also when the pointer file is damaged or
the model was deleted from the store."""


import pytest
from inprocess import narrow as narrow_model
from inprocess import records, reload, started

from pipelines import registry
from pipelines.store import save_detector


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
    assert info["calibration"] == {"n": 300, "min_rows_for_target_fpr": 19, "can_flag": True}
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
