"""Batch scoring on a real local Spark (``pipelines.batch.spark``, ``flowad score --engine spark``).

Skipped without pyspark or Java; ``.ci/run`` installs both, so CI runs them. One Spark session
(``local[2]``) serves the whole module: it takes 5-20 s to start.
"""

import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

pytest.importorskip("pyspark")
if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
    pytest.skip("no Java runtime (apt-get install openjdk-17-jre-headless)",
                allow_module_level=True)

from pipelines.batch import spark
from pipelines.cli import app
from pipelines.errors import SchemaError
from pipelines.io.tables import read_table
from pipelines.model.detector import Detector
from pipelines.registry.store import load_detector, save_detector

pytestmark = pytest.mark.slow  # Spark

N_ROWS = 1_000_000
DAYS, FILES_PER_DAY = 4, 2  # 8 files of 125k rows, hive-partitioned by day


def records(n: int, start: int = 0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame({"id": np.arange(start, start + n), "a": a,
                         "b": 0.5 * a + rng.normal(size=n), "c": np.exp(rng.normal(size=n))})


def write_dataset(root, frames) -> None:
    """Frames as a hive-partitioned Parquet dataset: root/day=D/part-K.parquet."""
    for (day, part), frame in frames:
        folder = root / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                       folder / f"part-{part}.parquet")


@pytest.fixture(scope="module")
def session():
    spark_session = spark.session("local[2]", "flowad-tests")
    spark_session.sparkContext.setLogLevel("FATAL")  # the bad-row test fails a job on purpose
    yield spark_session
    spark_session.stop()


@pytest.fixture(scope="module")
def tag():
    detector = Detector(exclude=["id", "day"], flow_options={"members": 1},
                        train_options={"max_steps": 50}).fit(records(4000, seed=1))
    return save_detector(detector, "spark-test")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "records"
    per_file = N_ROWS // (DAYS * FILES_PER_DAY)
    write_dataset(root, (
        ((day, part), records(per_file, (day * FILES_PER_DAY + part) * per_file, seed=10 + day))
        for day in range(DAYS) for part in range(FILES_PER_DAY)))
    (root / "_SUCCESS").touch()  # as Spark leaves it: not data
    return root


def test_spark_scores_a_partitioned_dataset_as_in_process(session, tag, dataset, tmp_path):
    output = tmp_path / "scored.parquet"
    spark.write_scored(spark.score(spark.read(session, str(dataset)), tag), str(output))

    scored = pq.read_table(output).to_pandas()
    assert len(scored) == N_ROWS and scored["id"].is_unique
    scored = scored.sort_values("id").reset_index(drop=True)
    frame = read_table(dataset).sort_values("id").reset_index(drop=True)
    expected = load_detector(tag).verdicts(frame)
    for column in ("score", "log_likelihood", "p_value"):
        np.testing.assert_allclose(scored[column], expected[column], rtol=0, atol=1e-6)
    assert (scored["is_anomaly"] == expected["is_anomaly"]).all()
    assert scored["is_anomaly"].any()


def test_a_bad_row_fails_the_job_naming_column_and_position_and_writes_nothing(
        session, tag, tmp_path):
    frame = records(1000)
    frame.loc[700, "b"] = np.nan  # training had no missing values
    source = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source)
    output = tmp_path / "out" / "scored.parquet"
    output.parent.mkdir()

    with pytest.raises(SchemaError, match=r"column 'b', row 700 of partition 0 \(read from "
                       r"file:\S*bad\.parquet\): .*missing"):
        spark.write_scored(spark.score(spark.read(session, str(source)), tag), str(output))
    assert list(output.parent.iterdir()) == []  # neither the output nor a temporary directory


def test_cli_engine_spark_writes_contributions_and_refuses_fdr(session, tag, tmp_path):
    source = tmp_path / "small"
    write_dataset(source, [((0, 0), records(300)), ((1, 0), records(200, start=300))])
    output = tmp_path / "scored.csv"
    runner = CliRunner()
    result = runner.invoke(app, ["score", tag, str(source), "--output", str(output),
                                 "--engine", "spark", "--explain", "--explain-top", "2"])
    assert result.exit_code == 0, result.output
    scored = pd.concat(pd.read_csv(part) for part in output.glob("part-*.csv"))
    assert len(scored) == 500 and set(scored["top1_column"]) <= {"a", "b", "c"}
    assert {"score", "p_value", "is_anomaly", "top2_contribution"} <= set(scored.columns)

    refused = runner.invoke(app, ["score", tag, str(source), "--output", str(output),
                                  "--engine", "spark", "--fdr", "0.1"])
    assert refused.exit_code == 2 and "--fdr" in refused.output


def test_spark_reads_a_csv_as_flowad_score_does_and_carries_what_the_model_does_not_use(
        session, tmp_path):
    """Namibia ("NA") is a country, "NA" in a numeric column is missing, a label and a note are
    carried to the output as read (the note's formula neutralised), on Spark as locally."""
    rng = np.random.default_rng(3)
    train = records(3000, seed=3).assign(country=rng.choice(["NA", "US", "DE"], 3000))
    train.loc[train.index % 10 == 0, "b"] = np.nan  # b may be missing
    tag = save_detector(Detector(exclude=["id"], flow_options={"members": 1},
                                 train_options={"max_steps": 50}).fit(train), "spark-namibia")
    frame = records(400, seed=4).assign(country=rng.choice(["NA", "US", "DE"], 400))
    frame["b"] = frame["b"].map(repr).where(frame.index % 7 != 0, "NA")
    frame["label"] = ["0", "1"] * 200
    frame["note"] = ["=HYPERLINK(\"x\")", "NA", "007", "-1.5"] * 100
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)

    output = tmp_path / "spark.csv"
    spark.write_scored(spark.score(spark.read(session, str(source)), tag), str(output))
    scored = pd.concat(pd.read_csv(part, dtype=str, keep_default_na=False)
                       for part in output.glob("part-*.csv"))
    scored = scored.astype({"id": int}).sort_values("id").reset_index(drop=True)
    local = CliRunner().invoke(app, ["score", tag, str(source), "--output",
                                     str(tmp_path / "local.csv")])
    assert local.exit_code == 0, local.output
    expected = pd.read_csv(tmp_path / "local.csv", dtype=str, keep_default_na=False)
    for column in ("country", "label", "note"):
        assert scored[column].tolist() == expected[column].tolist(), column
    assert scored["note"].tolist()[:4] == ["'=HYPERLINK(\"x\")", "NA", "007", "-1.5"]
    assert (scored["country"] == "NA").sum() > 100
    np.testing.assert_allclose(scored["score"].astype(float), expected["score"].astype(float),
                               rtol=0, atol=1e-6)

    with pytest.raises(SchemaError, match=r"unexpected column\(s\) not in the schema: 'label', "
                       "'note'"):
        spark.score(spark.read(session, str(source)), tag, strict=True)
