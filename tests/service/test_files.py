"""``POST /score_file`` in process (service/files.py, service/uploads.py): CSV and Parquet,
all or nothing, malformed and hostile uploads, limits of time and size."""

import io
import json
import time

import pytest
from conftest import mixed_frame
from inprocess import rejected, scored, started


# Both places records can be scored: in the front worker, and by the batching Scorer service
# (in process here): a service started for each.
@pytest.fixture(scope="module", params=["local", "scorer"])
def client(request):
    with started(request.param) as client:
        yield client



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
    before = scored(client)
    response = client.post("/score_file", files={
        "file": ("bad.csv", io.BytesIO(frame.to_csv(index=False).encode()))})
    assert response.status_code == 400, response.text
    assert "row 250" in response.json()["error"] and "index label" not in response.json()["error"]
    assert scored(client) == before  # the first 250 rows were not counted


def test_score_file_over_the_row_limit_is_a_413(client):
    data = mixed_frame(1001, seed=6).to_csv(index=False).encode()
    response = client.post("/score_file", files={"file": ("big.csv", io.BytesIO(data))})
    assert response.status_code == 413, response.text
    assert "1000" in response.json()["error"]


def test_score_file_past_its_time_stops_and_counts_nothing():
    with started("local", FLOWAD_FILE_SECONDS="0") as test_client:
        before = scored(test_client)
        data = mixed_frame(300, seed=7).to_csv(index=False).encode()
        response = test_client.post("/score_file", files={"file": ("slow.csv", io.BytesIO(data))})
        assert response.status_code == 413, response.text
        assert "100 rows done" in response.json()["error"]  # stopped after the first chunk
        assert scored(test_client) == before


def test_score_file_abandoned_by_its_client_stops_and_counts_nothing(client):
    import asyncio

    import httpx
    from starlette.requests import Request

    data = mixed_frame(300, seed=8).to_csv(index=False).encode()
    upload = httpx.Request("POST", "http://x/score_file", files={"file": ("a.csv", data)})
    body = upload.read()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():  # the body, then the client is gone
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/score_file", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in upload.headers.items()]}
    before = scored(client)
    response = asyncio.run(client.front.score_file(Request(scope, receive)))
    assert response.status_code == 204
    assert scored(client) == before


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
    before = rejected(client, "too_large")
    started = time.monotonic()
    response = _upload(client, "bomb.parquet", data)
    assert response.status_code == 413, response.text
    assert response.json()["error"].startswith(
        "the uploaded parquet file is too large to read: column 'channel' holds 305 MiB of text")
    assert time.monotonic() - started < 5
    assert rejected(client, "too_large") == before + 1
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


def test_an_upload_streamed_past_its_byte_limit_is_one_413():
    """No Content-Length: the guard counts the bytes as the multipart parser reads them and
    raises past FLOWAD_MAX_FILE_BYTES; the route answers it, counted once."""
    import httpx

    data = mixed_frame(400, seed=25).to_csv(index=False).encode()
    upload = httpx.Request("POST", "http://x/score_file", files={"file": ("big.csv", data)})
    body = upload.read()
    assert len(body) > 20_000

    def streamed():
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    with started("local", FLOWAD_MAX_FILE_BYTES="20000") as client:
        before = rejected(client, "too_large")
        response = client.post("/score_file", content=streamed(),
                               headers={"content-type": upload.headers["content-type"]})
        assert response.status_code == 413, response.text
        assert response.json() == {"error": "request body exceeds 20000 bytes",
                                   "reason": "too_large"}
        assert rejected(client, "too_large") == before + 1
