"""``POST /score?explain=true`` in process: contributions, parameters, limits
(service/explaining.py; served for real, on a wide model, in test_served_edges.py)."""


import numpy as np
import pytest
from conftest import mixed_frame
from inprocess import records, started


# Both places records can be scored: in the front worker, and by the batching Scorer service
# (in process here): a service started for each.
@pytest.fixture(scope="module", params=["local", "scorer"])
def client(request):
    with started(request.param) as client:
        yield client



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
