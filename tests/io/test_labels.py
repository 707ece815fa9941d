import pandas as pd
import pytest
from conftest import mixed_frame
from typer.testing import CliRunner

from pipelines import Detector
from pipelines.cli import app
from pipelines.io.labels import parse_labels
from pipelines.registry.promotion import promote
from pipelines.registry.retrain import holdout_split, retrain
from pipelines.registry.store import save_detector

# Each encoding of the same labels: normal, anomaly, normal, anomaly, anomaly.
ENCODINGS = {
    "yes/no": ["no", "Yes", "NO", "yes", " YES "],
    "true/false": ["false", "True", "FALSE", "true", "TRUE"],
    "0/1 text": ["0", "1", "0", "1", "1"],
    "0/1 numbers": [0, 1, 0, 1, 1],
    "booleans": [False, True, False, True, True],
    "anomaly/normal": ["normal", "anomaly", "Normal", "ANOMALY", "anomaly"],
}
EXPECTED = [0, 1, 0, 1, 1]


@pytest.mark.parametrize("values", ENCODINGS.values(), ids=ENCODINGS.keys())
def test_parse_labels_reads_every_encoding(values):
    assert parse_labels(pd.DataFrame({"y": values}), "y").tolist() == EXPECTED


def test_parse_labels_non_zero_numbers_are_anomalies():
    assert parse_labels(pd.DataFrame({"y": [0, 2, -1, 0.5]}), "y").tolist() == [0, 1, 1, 1]
    assert parse_labels(pd.DataFrame({"y": ["0", "2", "0.0"]}), "y").tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"x": [1, 2]}), "'y' not in the data"),
        (pd.DataFrame({"y": [0, None]}), "'y' has 1 missing"),
        (pd.DataFrame({"y": ["yes", None]}), "'y' has 1 missing"),
        (pd.DataFrame({"y": ["yes", "maybe"]}), "'y' has values"),
    ],
    ids=["absent", "missing number", "missing text", "unknown word"],
)
def test_parse_labels_errors_name_the_column(frame, message):
    with pytest.raises(ValueError, match=message):
        parse_labels(frame, "y")


def _labelled(encoding: str, n: int = 600, n_anomalies: int = 60) -> pd.DataFrame:
    """Normal rows then obvious anomalies, labelled with ``encoding``'s normal/anomaly value."""
    normal_value, anomaly_value = ENCODINGS[encoding][0], ENCODINGS[encoding][1]
    odd = mixed_frame(n_anomalies, seed=1).assign(label=anomaly_value)
    odd["amount"] *= 40
    return pd.concat([mixed_frame(n, seed=0).assign(label=normal_value), odd],
                     ignore_index=True)


@pytest.mark.parametrize("encoding", ["yes/no", "true/false", "0/1 numbers", "anomaly/normal"])
def test_train_leaves_the_labelled_anomalies_out(encoding, tmp_path):
    path = tmp_path / "train.csv"
    _labelled(encoding).to_csv(path, index=False)
    result = CliRunner().invoke(app, ["train", str(path), "--name", "labels-train", "--exclude",
                                      "id", "--label", "label", "--max-epochs", "1",
                                      "--members", "1"])
    assert result.exit_code == 0, result.output
    # 600 normal rows: 20% calibration, 15% of the rest validation, so 408 trained on.
    assert "on 408 rows" in result.output


@pytest.fixture(scope="module")
def tiny_production():
    detector = Detector(exclude=["id"], target_fpr=0.05, flow_options={"members": 1},
                        train_options={"max_epochs": 2})
    tag = save_detector(detector.fit(mixed_frame(600, seed=0)), "labels-retrain")
    promote(tag, reason="test setup")
    return "labels-retrain", tag


@pytest.mark.parametrize("encoding", ["yes/no", "true/false", "0/1 numbers", "anomaly/normal"])
def test_retrain_leaves_the_labelled_anomalies_out(encoding, tiny_production):
    name, tag = tiny_production
    data = _labelled(encoding)
    decision = retrain(data, name, baseline=tag, label="label")
    # The old parser read every word as an anomaly and trained on nothing.
    train_rows, _ = holdout_split(len(data), 0.2, 0)
    expected = int((train_rows < 600).sum())  # the first 600 rows are the normal ones
    assert decision.checks["rows"]["train"] == expected
    assert decision.checks["roc_auc"]["candidate"] > 0.9


def test_cli_retrain_rejects_unknown_label_words(tiny_production, tmp_path):
    name, _ = tiny_production
    path = tmp_path / "new.csv"
    _labelled("yes/no").assign(label="maybe").to_csv(path, index=False)
    result = CliRunner().invoke(app, ["retrain", str(path), "--name", name, "--label", "label",
                                      "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "label column 'label'" in result.output
