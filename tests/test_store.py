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


def test_a_mixture_detector_round_trips():
    detector = Detector(exclude=["id"], flow_options={"members": 3, "n_layers": 2, "hidden": 16},
                        train_options={"max_epochs": 3}, progress=False)
    detector.fit(mixed_frame(1000, seed=2))
    assert detector.metrics_["members"] == 3
    assert {h["member"] for h in detector.history_} == {0, 1, 2}
    tag = save_detector(detector, "store-mixture")
    torch.manual_seed(123)
    loaded = load_detector(tag)
    frame = mixed_frame(300, seed=3)
    np.testing.assert_array_equal(loaded.score_samples(frame), detector.score_samples(frame))
    # The mixture's score is the log of the mean member density (independently computed here).
    x, log_jacobian = detector.encoder_.transform(frame)
    with torch.inference_mode():
        members = np.stack([m.log_prob(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
                            for m in detector.flow_.components])
    expected = -(np.log(np.exp(members).mean(axis=0)) + log_jacobian)
    np.testing.assert_allclose(detector.score_samples(frame), expected, rtol=1e-5, atol=1e-4)
