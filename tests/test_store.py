import numpy as np
import pytest
import torch
from conftest import mixed_frame

from pipelines import Detector
from pipelines.store import list_detectors, load_detector, save_detector


@pytest.fixture(scope="module")
def saved() -> tuple[Detector, str]:
    detector = Detector(exclude=["id"], train_options={"max_epochs": 5}, progress=False)
    detector.fit(mixed_frame(1500, seed=0))
    return detector, save_detector(detector, "store-test")


def test_loading_gives_bit_identical_scores(saved):
    detector, tag = saved
    torch.manual_seed(999)  # a fresh flow is built with other random masks and weights
    loaded = load_detector(tag)
    frame = mixed_frame(700, seed=1)
    np.testing.assert_array_equal(loaded.score_samples(frame), detector.score_samples(frame))
    np.testing.assert_array_equal(loaded.p_values(frame), detector.p_values(frame))
    assert loaded.threshold_ == detector.threshold_
    assert loaded.history_ == detector.history_


def test_the_store_entry_holds_metadata_and_no_pickles(saved):
    import bentoml

    _, tag = saved
    model = bentoml.models.get(tag)
    meta = model.info.metadata
    assert meta["model_kind"] == "realnvp"
    assert meta["target_fpr"] == 0.01
    assert {c["name"] for c in meta["schema"]["columns"]} >= {"amount", "channel", "age"}
    assert {"torch", "scikit-learn", "bentoml"} <= set(meta["versions"])
    files = {p.name for p in __import__("pathlib").Path(model.path).iterdir()}
    assert {"flow.pt", "encoder.skops", "calibration.json", "detector.json"} <= files
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)


def test_list_detectors_shows_the_saved_model(saved):
    _, tag = saved
    rows = list_detectors("store-test")
    assert rows[0]["tag"] == tag and rows[0]["model_kind"] == "realnvp"
