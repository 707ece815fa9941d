"""``flowad`` on the inputs a real table brings: Namibia's "NA", pandas' index and nested
columns in Parquet, decompression bombs, columns the model does not use, outputs behind
symlinks, formulas, model names that are paths, and ``--fdr`` on a file too large for its
calibration set. The real CLI (``typer``'s runner, as tests/cli/test_cli.py), real files."""

import json
import os
import stat
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import mixed_frame
from scipy.stats import false_discovery_control
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()
COUNTRIES = ["NA", "US", "DE", "FR"]  # Namibia first


def with_countries(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return frame.assign(country=rng.choice(COUNTRIES, len(frame), p=[0.3, 0.3, 0.2, 0.2]))


@pytest.fixture(scope="module")
def tag(tmp_path_factory):
    """A model of mixed_frame plus a country column, trained from a CSV in which a third of the
    countries are Namibia, "NA"."""
    path = tmp_path_factory.mktemp("train") / "train.csv"
    with_countries(mixed_frame(1500, seed=0), seed=0).to_csv(path, index=False)
    result = runner.invoke(app, ["train", str(path), "--name", "inputs-test", "--exclude", "id",
                                 "--max-epochs", "3", "--members", "1"])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def score(tag: str, data, output, *options: str):
    return runner.invoke(app, ["score", tag, str(data), "--output", str(output), *options])


# ------------------------------------------------------------------ "NA" is Namibia
def test_namibia_is_a_country_on_every_path(tag, tmp_path):
    from pipelines.registry.store import load_detector

    detector = load_detector(tag)
    assert "NA" in detector.schema["country"].categories  # trained on, not made missing
    assert detector.schema["country"].n_missing_train == 0
    frame = with_countries(mixed_frame(200, seed=7), seed=7)
    frame.to_csv(tmp_path / "in.csv", index=False)
    frame.to_parquet(tmp_path / "in.parquet")
    scored = {}
    for fmt in ("csv", "parquet"):
        result = score(tag, tmp_path / f"in.{fmt}", tmp_path / f"out-{fmt}.csv")
        assert result.exit_code == 0, result.output
        scored[fmt] = pd.read_csv(tmp_path / f"out-{fmt}.csv", keep_default_na=False)
    records = [{name: None if pd.isna(value) else value.item() if hasattr(value, "item")
                else value for name, value in row.items()}
               for row in frame.drop(columns=["id"]).to_dict(orient="records")]
    records = json.loads(json.dumps(records))  # as a client sends them
    verdicts, _ = detector.record_verdicts(records)  # what POST /score does with JSON
    for fmt in ("csv", "parquet"):
        np.testing.assert_array_equal(scored[fmt]["score"], verdicts["score"])
        np.testing.assert_array_equal(scored[fmt]["p_value"], verdicts["p_value"])
    # the output holds the cells as read: Namibia stays "NA", never an empty cell
    assert scored["csv"]["country"].tolist() == frame["country"].tolist()
    assert (scored["csv"]["country"] == "NA").sum() > 40


def test_evaluate_reads_namibia_as_a_country(tmp_path):
    from pipelines.model.detector import Detector
    from pipelines.registry.store import save_detector

    frame = with_countries(mixed_frame(800, seed=8), seed=8)  # "NA" a category, never missing
    detector = Detector(exclude=["id"], flow_options={"members": 1},
                        train_options={"max_epochs": 1}).fit(frame)
    tag = save_detector(detector, "inputs-evaluate")
    data = tmp_path / "labelled.csv"
    frame.head(300).assign(label=0).to_csv(data, index=False)
    result = runner.invoke(app, ["evaluate", tag, str(data), "--label", "label", "--report-dir",
                                 str(tmp_path / "report")])
    assert result.exit_code == 0, result.output  # before: "column 'country', row 0: missing"


# ------------------------------------------------------------------ Parquet as pandas writes it
def test_a_parquet_written_with_an_index_keeps_its_index_columns(tag, tmp_path):
    frame = with_countries(mixed_frame(300, seed=9), seed=9)
    frame.set_index("amount").to_parquet(tmp_path / "indexed.parquet")
    result = score(tag, tmp_path / "indexed.parquet", tmp_path / "out.parquet")
    assert result.exit_code == 0, result.output  # before: "missing column(s): 'amount'"
    scored = pd.read_parquet(tmp_path / "out.parquet")
    np.testing.assert_array_equal(scored["amount"], frame["amount"])
    result = runner.invoke(app, ["train", str(tmp_path / "indexed.parquet"), "--name",
                                 "inputs-indexed", "--exclude", "id", "--max-epochs", "1",
                                 "--members", "1"])
    assert result.exit_code == 0, result.output
    assert "trained realnvp" in result.stderr


@pytest.mark.parametrize("command", ["train", "score", "evaluate", "retrain"])
def test_a_list_column_is_named_on_every_path(tag, tmp_path, command):
    frame = with_countries(mixed_frame(200, seed=10), seed=10).assign(label=0)
    frame["tags"] = [["a", "b"]] * len(frame)
    data = tmp_path / "nested.parquet"
    frame.to_parquet(data)  # with pandas' metadata: pyarrow raised ArrowNotImplementedError
    arguments = {
        "train": ["train", str(data), "--exclude", "id", "--max-epochs", "1"],
        "score": ["score", tag, str(data), "--output", str(tmp_path / "o.csv")],
        "evaluate": ["evaluate", tag, str(data), "--label", "label", "--report-dir",
                     str(tmp_path / "r")],
        "retrain": ["retrain", str(data), "--name", "inputs-test", "--report",
                    str(tmp_path / "report.json")],
    }[command]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: {data}: column 'tags' holds list<element: "
                                     "string> values, not one number or text per row: flatten "
                                     "it into columns or drop it")


# ------------------------------------------------------------------ decompression amplification
def test_a_decompression_bomb_is_refused_in_milliseconds(tag, tmp_path):
    bomb = tmp_path / "bomb.parquet"  # the model's columns, and a note carried through
    frame = with_countries(mixed_frame(40, seed=17), seed=17).assign(note="x" * 20_000_000)
    frame.to_parquet(bomb, compression="zstd")
    assert bomb.stat().st_size < 40_000
    for arguments in (["score", tag, str(bomb), "--output", str(tmp_path / "o.csv")],
                      ["train", str(bomb), "--max-epochs", "1"]):
        started = time.monotonic()
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2, result.output
        assert "column 'note' holds 763 MiB of text" in result.stderr
        assert "FLOWAD_MAX_CHUNK_BYTES" in result.stderr
        assert time.monotonic() - started < 5


def test_a_csv_header_wider_than_the_limit_is_refused_before_its_rows(tag, tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(300_000)) + "\n"
                    + ",".join(["1"] * 300_000) + "\n")
    started = time.monotonic()
    result = score(tag, wide, tmp_path / "o.csv")
    assert result.exit_code == 2, result.output
    assert "the header is longer than 1048576 bytes (FLOWAD_MAX_HEADER_BYTES)" in result.stderr
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ columns the model does not use
def test_score_carries_columns_the_model_does_not_use(tag, tmp_path):
    frame = with_countries(mixed_frame(150, seed=11), seed=11)
    frame["label"] = ["0", "1"] * 75
    frame["ticket"] = [f"T-{i:05d}" for i in range(150)]  # an id the model never saw
    frame["note"] = ["NA", "null", "007", "1.50", "x"] * 30
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = score(tag, tmp_path / "in.csv", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output  # before: unexpected column(s) 'label', ...
    written = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    read = pd.read_csv(tmp_path / "in.csv", dtype=str, keep_default_na=False)
    for column in ("id", "label", "ticket", "note", "country", "channel"):
        assert written[column].tolist() == read[column].tolist(), column  # as read
    frame.drop(columns=["label", "ticket", "note"]).to_csv(tmp_path / "plain.csv", index=False)
    alone = score(tag, tmp_path / "plain.csv", tmp_path / "alone.csv")
    assert alone.exit_code == 0, alone.output
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "alone.csv")["score"],
                                  written["score"].astype(float))

    strict = score(tag, tmp_path / "in.csv", tmp_path / "strict.csv", "--strict")
    assert strict.exit_code == 2, strict.output
    assert strict.stderr.strip() == (f"error: {tmp_path / 'in.csv'}: unexpected column(s) not "
                                     "in the schema: 'label', 'ticket', 'note'")
    assert not (tmp_path / "strict.csv").exists()


def test_score_carries_the_partition_key_of_a_dataset(tag, tmp_path):
    root = tmp_path / "lake"
    for day in ("2024-06-01", "2024-06-02"):
        (root / f"day={day}").mkdir(parents=True)
        frame = with_countries(mixed_frame(100, seed=12), seed=12)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                       root / f"day={day}" / "part-0.parquet")
    result = score(tag, root, tmp_path / "out.parquet")
    assert result.exit_code == 0, result.output  # before: unexpected column(s) 'day'
    scored = pd.read_parquet(tmp_path / "out.parquet")
    assert scored["day"].tolist() == ["2024-06-01"] * 100 + ["2024-06-02"] * 100


# ------------------------------------------------------------------ outputs
def test_an_output_symlink_stays_a_link_and_a_fifo_is_refused(tag, tmp_path):
    data = tmp_path / "in.csv"
    with_countries(mixed_frame(50, seed=13), seed=13).to_csv(data, index=False)
    (tmp_path / "runs").mkdir()
    link = tmp_path / "current.csv"
    link.symlink_to("runs/today.csv")  # dangling until the first run
    for _ in range(2):
        result = score(tag, data, link)
        assert result.exit_code == 0, result.output
        assert link.is_symlink() and len(pd.read_csv(tmp_path / "runs" / "today.csv")) == 50
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    result = score(tag, data, fifo)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: {fifo} is a FIFO, not a regular file: refusing "
                                     "to write the output there")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_csv_output_neutralises_formulas_unless_asked_not_to(tag, tmp_path):
    frame = with_countries(mixed_frame(60, seed=14), seed=14)
    frame["note"] = ['=HYPERLINK("http://evil","click")', "@SUM(A1)", "-12.5", "ok"] * 15
    frame.loc[0, "country"] = "=1+1"  # an unseen category: scored, and written back
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = score(tag, tmp_path / "in.csv", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert written["note"].tolist()[:4] == ["'=HYPERLINK(\"http://evil\",\"click\")",
                                            "'@SUM(A1)", "-12.5", "ok"]
    assert written["country"].iloc[0] == "'=1+1"
    assert (written["ratio"] < 0).any()  # numbers are never prefixed
    np.testing.assert_allclose(written["ratio"], frame["ratio"])
    result = score(tag, tmp_path / "in.csv", tmp_path / "raw.csv", "--no-escape-formulas")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "raw.csv")["note"].iloc[0].startswith("=HYPERLINK")
    result = score(tag, tmp_path / "in.csv", tmp_path / "out.parquet")
    assert pd.read_parquet(tmp_path / "out.parquet")["note"].iloc[0].startswith("=HYPERLINK")


# ------------------------------------------------------------------ model names
@pytest.mark.parametrize("command", ["score", "evaluate", "recalibrate", "promote"])
def test_a_model_name_never_reads_a_file_outside_the_store(tmp_path, command):
    secret = tmp_path / "evil.json"
    secret.write_text(json.dumps({"name": "x", "tag": "secret-content-4711", "history": []}))
    name = "../" * 12 + str(tmp_path).lstrip("/") + "/evil"
    data = tmp_path / "in.csv"
    mixed_frame(10).to_csv(data, index=False)
    arguments = {
        "score": ["score", name, str(data), "--output", str(tmp_path / "o.csv")],
        "evaluate": ["evaluate", name, str(data), "--label", "flag", "--report-dir",
                     str(tmp_path / "r")],
        "recalibrate": ["recalibrate", name, "--target-fpr", "0.05"],
        "promote": ["promote", f"{name}:v1"],
    }[command]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert "secret-content-4711" not in result.output
    assert "is not a model name: letters, digits" in result.stderr


# ------------------------------------------------------------------ --fdr
@pytest.mark.parametrize(("rows", "anomalies", "fdr"), [
    (5000, 500, 0.05), (5000, 50, 0.05), (5000, 1, 0.1), (1000, 10, 0.01), (333, 7, 0.2),
    (10_000, 100, 0.05), (64, 64, 0.5)])
def test_the_calibration_rows_an_fdr_needs_agree_with_scipy(rows, anomalies, fdr):
    """k records more anomalous than all n calibration rows (p = 1/(n+1)) among uniform
    normals: BH (scipy) flags them with rows_needed(...) calibration rows, and nothing with one
    row fewer."""
    from pipelines.batch.fdr import rows_needed

    rng = np.random.default_rng(rows + anomalies)

    def smallest_q(n: int) -> float:
        normal = np.maximum(rng.uniform(size=rows - anomalies), 0.5)  # none below the floor's
        p_values = np.concatenate([np.full(anomalies, 1 / (n + 1)), normal])
        return false_discovery_control(p_values, method="bh").min()

    n = rows_needed(rows, anomalies, fdr)
    assert smallest_q(n) <= fdr
    assert n == 0 or smallest_q(n - 1) > fdr


def test_score_fdr_says_when_nothing_can_be_flagged_and_what_it_would_take(tag, tmp_path):
    from pipelines.batch.fdr import rows_needed
    from pipelines.registry.store import load_detector

    data = tmp_path / "big.csv"
    with_countries(mixed_frame(5000, seed=15), seed=15).to_csv(data, index=False)
    out = tmp_path / "out.csv"
    result = score(tag, data, out, "--fdr", "0.01")
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    assert not scored["is_anomaly"].any()
    n = load_detector(tag).calibrator_.n_
    smallest = scored["q_value"].min()
    assert smallest > 0.01
    assert result.stderr.strip() == (
        f"warning: nothing can be flagged at FDR 0.01: the smallest q-value of these 5000 rows "
        f"is {smallest:.3g}. With n calibration rows no p-value is below 1/(n+1), and BH flags "
        "k of 5000 rows only if their p-values are at most 0.01*k/5000: even rows more "
        "anomalous than every calibration row need n >= 5000/(0.01*k) - 1, i.e. "
        f"{rows_needed(5000, 50, 0.01)} if 50 (1%) are and {rows_needed(5000, 500, 0.01)} if "
        f"500 (10%) are; this model has {n}")
    assert (rows_needed(5000, 50, 0.01), rows_needed(5000, 500, 0.01)) == (9999, 999)
    few = with_countries(mixed_frame(20, seed=16), seed=16)
    few.loc[:2, "amount"] *= 40  # beyond every calibration record: p = 1/(n+1)
    few.to_csv(data, index=False)
    quiet = score(tag, data, out, "--fdr", "0.1")
    assert quiet.exit_code == 0 and quiet.stderr == ""  # something is flagged: no warning
    assert pd.read_csv(out)["is_anomaly"].sum() >= 3
