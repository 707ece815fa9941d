"""Hostile records through a fitted Detector: errors name the column and row, NaN never escapes."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, mixed_frame

from pipelines import Detector
from pipelines.errors import SchemaError, UnscorableRecordError
from pipelines.tabular.encoder import RECORD_PATH_ROWS
from pipelines.tabular.ranges import MAX_ENCODED


@pytest.fixture(scope="module")
def fitted(trained: tuple[Detector, pd.DataFrame]
           ) -> tuple[Detector, list[str], list[dict[str, object]]]:
    """The shared detector, its column names and three good records as parsed JSON."""
    detector, train = trained
    records = json.loads(mixed_frame(3, seed=1).to_json(orient="records"))
    return detector, list(train.columns), records


def frame(records: list[dict[str, object]], names: list[str]) -> pd.DataFrame:
    """Records as the service builds them."""
    return pd.DataFrame.from_records(records, columns=names)


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("amount", 1e300, "is out of range: the model scores values in ["),
        ("count", -1e300, "is out of range: the model scores values in ["),
        ("ratio", json.loads("9" * 401), "number out of range"),
        ("amount", True, "got the boolean True"),
        ("weekend", 2, "expected true or false (or 1 or 0), got 2"),
        ("channel", {"a": 1}, "got a dict {'a': 1}"),
        ("amount", "x" * 1_000_000, "… (1000000 characters)"),
    ],
)
def test_hostile_values_are_schema_errors_naming_column_and_row(
    fitted: tuple[Detector, list[str], list[dict[str, object]]],
    column: str,
    value: object,
    says: str,
) -> None:
    detector, names, records = fitted
    bad = [records[0], {**records[1], column: value}, records[2]]
    with pytest.raises(SchemaError) as info:
        detector.verdict_columns(frame(bad, names))
    assert (info.value.column, info.value.row) == (column, 1)
    assert says in str(info.value) and len(str(info.value)) < 300, str(info.value)


def test_nan_from_the_flow_is_an_unscorable_record(
    fitted: tuple[Detector, list[str], list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    detector, names, records = fitted
    log_prob = detector.flow_.log_prob

    def nan_in_row_2(x: torch.Tensor) -> torch.Tensor:
        out = log_prob(x)
        out[2] = float("nan")
        return out

    monkeypatch.setattr(detector.flow_, "log_prob", nan_in_row_2)
    with pytest.raises(UnscorableRecordError, match=r"^row 2: .*NaN") as info:
        detector.verdict_columns(frame(records, names))
    assert isinstance(info.value, SchemaError) and info.value.row == 2


def test_zero_density_stays_a_verdict(
    fitted: tuple[Detector, list[str], list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    detector, names, records = fitted
    log_prob = detector.flow_.log_prob

    def zero_density_in_row_0(x: torch.Tensor) -> torch.Tensor:
        out = log_prob(x)
        out[0] = -float("inf")
        return out

    monkeypatch.setattr(detector.flow_, "log_prob", zero_density_in_row_0)
    verdicts = detector.verdict_columns(frame(records, names))
    assert verdicts["score"][0] == np.inf and verdicts["is_anomaly"][0]
    assert np.isfinite(verdicts["score"][1:]).all()


@pytest.mark.parametrize("model", ["realnvp", "ffjord"])
def test_flows_score_the_bound_finitely_in_float32(model: str) -> None:
    """The margin behind MAX_ENCODED: every encoded coordinate at +-1e6 (and all at once) still
    gets a finite float32 log-likelihood (measured: finite up to 3e13)."""
    train = mixed_frame(600, seed=0)
    options = FAST if model == "realnvp" else {**FAST, "objective": "flow_matching"}
    detector = Detector(model, exclude=["id"], train_options=options,
                        calibration_fraction=0.0).fit(train)
    x, _ = detector.encoder_.transform(train.iloc[:8])
    base = torch.as_tensor(x, dtype=torch.float32)
    cases = [torch.full_like(base, sign * MAX_ENCODED) for sign in (1, -1)]
    for j in range(base.shape[1]):
        for sign in (1, -1):
            case = base.clone()
            case[:, j] = sign * MAX_ENCODED
            cases.append(case)
    with torch.inference_mode():
        for case in cases:
            assert torch.isfinite(detector.flow_.log_prob(case)).all()


def outcome(call: Callable[[], object]) -> tuple[object, ...]:
    """A call's result, or its exception's type, message, column and row."""
    try:
        return ("returned", call())
    except SchemaError as error:
        return ("raised", type(error), str(error), error.column, error.row)


@pytest.mark.parametrize(
    ("column", "value"),
    [(None, None), ("amount", 1e300), ("amount", 1e9), ("amount", 500.0), ("amount", "12.5"),
     ("amount", True), ("count", 2**53), ("count", 7.5), ("ratio", -0.0),
     ("ratio", json.loads("9" * 401)), ("age", None), ("age", float("nan")), ("flag", True),
     ("weekend", 1), ("weekend", 2), ("channel", "carrier-pigeon"), ("channel", "<unknown>"),
     ("channel", None), ("channel", 3), ("channel", {"a": 1}), ("channel", "\ud800")],
)
def test_record_verdicts_are_the_frame_paths_bit_for_bit(
    fitted: tuple[Detector, list[str], list[dict[str, object]]], column: str | None,
    value: object,
) -> None:
    """Scores, p-values and unseen-category counts, or the error: the same as through a frame,
    for batches on both sides of the flow's NumPy path (16 rows) and of the records path's."""
    detector, _, _ = fitted
    schema = detector.encoder_.schema_
    good = json.loads(mixed_frame(RECORD_PATH_ROWS + 1, seed=2).to_json(orient="records"))
    for n in (1, 3, 16, 17, RECORD_PATH_ROWS, RECORD_PATH_ROWS + 1):
        batch = [dict(record) for record in good[:n]]
        if column is not None:
            batch[n // 2][column] = value

        def frame_path(batch: list[dict[str, object]] = batch) -> object:
            frame = schema.records_frame(batch)
            return detector.verdict_columns(frame), detector.encoder_.unknown_counts(frame)

        def records_path(batch: list[dict[str, object]] = batch) -> object:
            return detector.record_verdicts(batch)

        try:
            expected = outcome(frame_path)
        except UnicodeEncodeError:  # a lone surrogate: pandas cannot build the frame
            with pytest.raises(UnicodeEncodeError):
                records_path()
            continue
        got = outcome(records_path)
        if expected[0] == "raised":
            assert got == expected
            continue
        (want, want_unknown), (have, have_unknown) = expected[1], got[1]
        assert have_unknown == want_unknown
        assert list(have) == list(want)
        for name, x in want.items():
            assert have[name].dtype == x.dtype and have[name].tobytes() == x.tobytes(), (n, name)
