"""pipelines.model.scoring: a large call is scored in pieces, with the results of one piece and
its rejections named by their rows in the whole call."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import mixed_frame

from pipelines import Detector, SchemaError
from pipelines.model import scoring


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(exclude=["id"], flow_options={"hidden": 16}, calibration="split",
                    train_options={"max_epochs": 2}).fit(mixed_frame(600))


def test_a_call_in_pieces_scores_as_one(detector: Detector, monkeypatch) -> None:
    frame = mixed_frame(700, seed=4)
    whole = detector.verdict_columns(frame)
    log_likelihood = detector.log_likelihood(frame)
    monkeypatch.setattr(scoring, "LARGE_CALL_ROWS", 64)
    pieces = detector.verdict_columns(frame)
    for column in whole:
        np.testing.assert_array_equal(pieces[column], whole[column])
    np.testing.assert_array_equal(detector.log_likelihood(frame), log_likelihood)


def test_a_rejected_record_in_a_later_piece_is_named_by_its_row_in_the_call(
        detector: Detector, monkeypatch) -> None:
    frame = mixed_frame(700, seed=4)
    frame.index = frame.index + 1000  # labels other than positions
    frame["amount"] = frame["amount"].astype(object)
    frame.loc[frame.index[650], "amount"] = "abc"
    monkeypatch.setattr(scoring, "LARGE_CALL_ROWS", 64)
    for method in (detector.verdict_columns, detector.log_likelihood):
        with pytest.raises(SchemaError) as caught:
            method(frame)
        assert (caught.value.column, caught.value.row, caught.value.label) == ("amount", 650, 1650)
        assert "row 650 (index label 1650)" in str(caught.value)
