"""Datasets (directories, partitioned layouts) as ``flowad`` inputs, and training on a uniform
sample of a table streamed in chunks (``pipelines.io.sampling``)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.io.sampling import last_rows, sample_rows
from pipelines.io.tables import count_rows, iter_chunks, read_table
from pipelines.model.detector import Detector
from pipelines.registry.store import load_detector, save_detector

runner = CliRunner()


def records(n: int, start: int = 0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame({"id": np.arange(start, start + n), "a": a,
                         "b": 0.5 * a + rng.normal(size=n)})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """900 rows in three files of a hive-partitioned Parquet dataset, Spark's _SUCCESS beside."""
    root = tmp_path_factory.mktemp("data") / "records"
    for day in range(3):
        (root / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(records(300, 300 * day, seed=day),
                                            preserve_index=False),
                       root / f"day={day}" / "part-0.snappy.parquet")
    (root / "_SUCCESS").touch()
    return root


@pytest.fixture(scope="module")
def tag():
    detector = Detector(exclude=["id", "day"], flow_options={"members": 1},
                        train_options={"max_steps": 50}).fit(records(2000, seed=5))
    return save_detector(detector, "dataset-test")


def test_a_directory_is_read_as_one_table_with_partition_columns(dataset):
    assert count_rows(dataset) == 900
    frame = read_table(dataset)
    assert len(frame) == 900 and sorted(frame["day"].unique()) == [0, 1, 2]
    chunks = list(iter_chunks(dataset, 128))
    assert [c.start for c in chunks if c.file.endswith("day=1/part-0.snappy.parquet")] == [
        0, 128, 256]
    assert np.array_equal(np.concatenate([c.frame.index for c in chunks]), np.arange(900))


def test_score_reads_a_dataset_and_names_the_file_and_row_of_a_bad_record(tag, dataset,
                                                                          tmp_path):
    output = tmp_path / "scored.parquet"
    result = runner.invoke(app, ["score", tag, str(dataset), "--output", str(output)])
    assert result.exit_code == 0, result.output
    scored = pq.read_table(output).to_pandas()
    assert len(scored) == 900 and scored["id"].is_unique
    np.testing.assert_array_equal(scored["score"],
                                  load_detector(tag).decision_function(read_table(dataset)))

    bad = tmp_path / "bad"
    (bad / "day=0").mkdir(parents=True)
    frame = records(300)
    frame.loc[250, "b"] = np.inf
    frame.to_csv(bad / "day=0" / "part-0.csv", index=False)
    result = runner.invoke(app, ["score", tag, str(bad), "--output", str(tmp_path / "b.csv"),
                                 "--chunk-rows", "100"])
    assert result.exit_code == 2
    assert "day=0/part-0.csv: column 'b', row 250" in result.output
    assert "line 252 of the CSV" in result.output
    assert not (tmp_path / "b.csv").exists()


def test_an_empty_directory_is_a_one_line_error(tag, tmp_path):
    result = runner.invoke(app, ["score", tag, str(tmp_path), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "no .csv or .parquet files" in result.output


def test_the_sample_is_uniform_bounded_and_whole_for_small_tables():
    n, k = 100_000, 2_000
    chunks = (pd.DataFrame({"position": np.arange(s, min(s + 7_000, n))})
              for s in range(0, n, 7_000))
    sample, seen = sample_rows(chunks, k, seed=3)
    assert seen == n and len(sample) == k and sample["position"].is_unique
    # every tenth of the table holds about a tenth of the sample (binomial sd ~13)
    counts = np.bincount(sample["position"] // (n // 10), minlength=10)
    assert np.all(np.abs(counts - k / 10) < 70), counts

    small = records(500)
    whole, _ = sample_rows((small.iloc[s : s + 64] for s in range(0, 500, 64)), 500)
    pd.testing.assert_frame_equal(whole, small)
    again, _ = sample_rows(iter([small]), 100, seed=1)
    assert again.equals(sample_rows(iter([small]), 100, seed=1)[0])
    # a column that turns out to have missing values later on is widened, not truncated
    mixed = [pd.DataFrame({"n": [1, 2, 3]}), pd.DataFrame({"n": [4.5, np.nan]})]
    widened, _ = sample_rows(iter(mixed), 10)
    np.testing.assert_array_equal(widened["n"], [1, 2, 3, 4.5, np.nan])


def test_last_rows_keeps_the_end_of_the_table():
    frame = records(1000)
    tail = pd.concat(last_rows((frame.iloc[s : s + 300] for s in range(0, 1000, 300)), 450))
    pd.testing.assert_frame_equal(tail, frame.tail(450))


def test_train_fits_a_directory_on_a_sample_of_max_rows(dataset):
    result = runner.invoke(app, ["train", str(dataset), "--name", "sampled", "--exclude", "id",
                                 "--exclude", "day", "--max-rows", "600", "--max-epochs", "2",
                                 "--members", "1"])
    assert result.exit_code == 0, result.output
    assert "sampled 600 of 900 rows" in result.output
    metrics = load_detector(result.stdout.strip().splitlines()[-1]).metrics_
    assert metrics["n_train"] + metrics["n_validation"] + metrics["n_calibration"] == 600
