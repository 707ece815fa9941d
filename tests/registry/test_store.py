import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, mixed_frame

from pipelines import Detector
from pipelines.errors import DamagedPointerError, ModelCheckError, ModelNameError, NoProductionModel
from pipelines.registry.bentoml_store import store_dir
from pipelines.registry.names import is_model_name
from pipelines.registry.pointer import (
    pointer_path,
    production_tag,
    read_pointer,
    registry_dir,
    resolve,
)
from pipelines.registry.promotion import promote
from pipelines.registry.store import (
    BrokenEntryWarning,
    list_detectors,
    load_detector,
    save_detector,
    staging_root,
)
from pipelines.registry.verify import load_verified, verify_detector


@pytest.fixture(scope="module")
def saved(trained: tuple[Detector, pd.DataFrame]) -> tuple[Detector, str]:
    return trained[0], save_detector(trained[0], "store-test")


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
    assert meta["target_fpr"] == 0.05  # the shared detector's
    assert {c["name"] for c in meta["schema"]["columns"]} >= {"amount", "channel", "age"}
    assert {"torch", "scikit-learn", "bentoml"} <= set(meta["versions"])
    files = {p.name for p in Path(model.path).iterdir()}
    assert {"flow.pt", "encoder.skops", "calibration.json", "detector.json"} <= files
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)


def test_list_detectors_shows_the_saved_model(saved):
    _, tag = saved
    rows = list_detectors("store-test")
    assert rows[0]["tag"] == tag and rows[0]["model_kind"] == "realnvp"


def test_a_mixture_detector_round_trips():
    detector = Detector(exclude=["id"], flow_options={"members": 3, "n_layers": 2, "hidden": 16},
                        train_options={"max_epochs": 3})
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
    np.testing.assert_allclose(detector.decision_function(frame), expected, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ reference records and checks
def tiny(seed: int = 0) -> Detector:
    return Detector(exclude=["id"], train_options={"max_epochs": 3}, flow_options={"members": 1},
                    random_state=seed).fit(mixed_frame(600, seed=seed))


def test_reference_records_are_saved_and_reproduced(saved):
    detector, tag = saved
    assert "id" not in detector.reference_records_.columns
    assert len(detector.reference_records_) == len(detector.reference_scores_) == 64
    loaded = load_detector(tag)
    pd.testing.assert_frame_equal(loaded.reference_records_, detector.reference_records_,
                                  check_dtype=False)
    np.testing.assert_array_equal(loaded.reference_scores_, detector.reference_scores_)
    files = {p.name for p in Path(bentoml.models.get(tag).path).iterdir()}
    assert {"reference.parquet", "reference.json"} <= files
    verify_detector(loaded)  # passes


def test_float32_noise_passes_but_a_perturbed_model_fails(saved):
    _, tag = saved
    loaded = load_detector(tag)
    # CPU vs GPU float32: differences of ~1e-5 nats must pass.
    rng = np.random.default_rng(0)
    loaded.reference_scores_ = loaded.reference_scores_ + rng.uniform(-2e-4, 2e-4, 64)
    verify_detector(loaded)
    perturbed = load_detector(tag)
    with torch.no_grad():
        next(perturbed.flow_.parameters()).add_(0.05)
    with pytest.raises(ModelCheckError, match="reference scores differ"):
        verify_detector(perturbed)


def _nan_copy(detector: Detector) -> Detector:
    broken = copy.deepcopy(detector)
    with torch.no_grad():
        for parameter in broken.flow_.parameters():
            parameter.fill_(float("nan"))
    return broken


def test_promote_refuses_a_nan_model_and_keeps_the_pointer():
    good = tiny()
    good_tag = save_detector(good, "store-check")
    promote(good_tag)
    bad_tag = save_detector(_nan_copy(good), "store-check")
    with pytest.raises(ModelCheckError) as caught:
        promote(bad_tag)
    assert bad_tag in str(caught.value) and "non-finite" in str(caught.value)
    assert production_tag("store-check") == good_tag


def test_models_saved_without_reference_records_load_and_are_checked(tmp_path):
    detector = tiny(1)
    old = copy.deepcopy(detector)
    old.reference_records_ = old.reference_scores_ = None  # as saved before reference records
    tag = save_detector(old, "store-old")
    loaded = load_detector(tag)
    assert loaded.reference_records_ is None
    verify_detector(loaded)
    promote(tag)
    broken = load_detector(save_detector(_nan_copy(old), "store-old"))
    with pytest.raises(ModelCheckError, match="non-finite"):
        verify_detector(broken)
    # Finite weights whose log p is not: the zero-batch check catches it.
    with torch.no_grad():
        for parameter in loaded.flow_.parameters():
            parameter.fill_(1e30)
    with pytest.raises(ModelCheckError):
        verify_detector(loaded)


def _edit_detector_json(tag: str, edit) -> None:
    path = Path(bentoml.models.get(tag).path) / "detector.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def test_entries_saved_before_the_format_version_load_and_verify():
    """Format 1 (before ``format_version`` and ``feature_names_in``): the same files, scores
    already -log p, so they load unchanged; the input columns come from the schema."""
    detector = tiny(4)
    tag = save_detector(detector, "store-format1")

    def as_format_1(state):
        del state["format_version"], state["feature_names_in"]
        return {**state, "params": {**state["params"], "progress": True}}

    _edit_detector_json(tag, as_format_1)
    loaded = load_verified(tag)
    frame = mixed_frame(50, seed=9)
    np.testing.assert_array_equal(loaded.decision_function(frame),
                                  detector.decision_function(frame))
    assert set(loaded.feature_names_in_) == set(detector.feature_names_in_)
    assert loaded.progress is False  # a display choice, not part of the model


def test_an_entry_of_a_newer_format_fails_its_check_saying_so():
    tag = save_detector(tiny(5), "store-format99")
    _edit_detector_json(tag, lambda state: {**state, "format_version": 99})
    with pytest.raises(ModelCheckError, match=r"detector format 99.*upgrade flowad"):
        load_verified(tag)


def test_resolve_follows_the_pointer_only_when_asked():
    tag = save_detector(tiny(2), "store-unpromoted")
    assert resolve("store-unpromoted") == tag  # library use: the newest
    assert resolve(f"{tag.split(':')[0]}:latest") == tag
    with pytest.raises(NoProductionModel, match="flowad promote store-unpromoted:"):
        resolve("store-unpromoted", production_only=True)
    with pytest.raises(NoProductionModel, match="Store-Check"):
        resolve("Store-Check", production_only=True)  # near miss: store-check exists


def test_a_bare_name_without_production_is_not_loaded_for_a_service():
    save_detector(tiny(3), "store-noprod")
    with pytest.raises(NoProductionModel):
        load_detector("store-noprod", production_only=True)


# ------------------------------------------------------------------ all-or-nothing saves
def test_the_entry_is_complete_and_latest_points_at_it():
    tag = save_detector(tiny(4), "store-atomic")
    name, version = tag.split(":")
    assert str(bentoml.models.get(f"{name}:latest").tag) == tag
    assert (store_dir() / name / "latest").read_text() == version
    assert not list(staging_root().glob("save-*"))  # the staging folder is gone
    model = bentoml.models.get(tag)
    assert model.info.module == "flowad" and model.info.labels == {"kind": "realnvp"}
    assert {str(m.tag) for m in bentoml.models.list(name)} == {tag}


def test_listing_survives_a_broken_entry_and_names_it():
    tag = save_detector(tiny(5), "store-broken")
    empty = store_dir() / "store-broken" / "zzzzkilledsave"  # what a killed BentoML save left
    empty.mkdir()
    try:
        with pytest.warns(BrokenEntryWarning, match=str(empty)):
            rows = list_detectors("store-broken")
        assert [row["tag"] for row in rows] == [tag]
        with pytest.warns(BrokenEntryWarning):
            assert tag in {row["tag"] for row in list_detectors()}
    finally:
        empty.rmdir()


SAVE_LOOP = """
import sys
from pipelines.registry.store import load_detector, save_detector
detector = load_detector(sys.argv[1], device="cpu")
while True:
    save_detector(detector, "store-killed")
    print("saved", flush=True)
"""


@pytest.mark.slow
def test_saves_killed_at_random_moments_leave_a_consistent_store(tmp_path):
    source = save_detector(tiny(6), "store-killed")
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    for _ in range(3):
        process = subprocess.Popen([sys.executable, str(script), source], env=env, cwd=REPO,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "saved"  # imports done, saving in a loop
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BrokenEntryWarning)
        rows = list_detectors("store-killed")
    assert len(rows) >= 4
    assert len(bentoml.models.list("store-killed")) == len(rows)  # BentoML's listing works too
    assert str(bentoml.models.get("store-killed:latest").tag) in {row["tag"] for row in rows}
    load_detector(rows[0]["tag"])
    save_detector(tiny(6), "store-killed")  # removes the staging folders of the killed saves
    assert not list(staging_root().glob("save-*"))


def test_promote_needs_a_version():
    tag = save_detector(tiny(5), "store-promote-bare")
    for bare in ("store-promote-bare", "store-promote-bare:latest"):
        with pytest.raises(ValueError, match="promote needs name:version"):
            promote(bare)
    assert production_tag("store-promote-bare") is None
    promote(tag)
    assert production_tag("store-promote-bare") == tag


@pytest.mark.parametrize("damage", ["", "{not json", '{"name": "x"}', "directory"])
def test_a_damaged_pointer_is_named_and_promoting_repairs_it(damage):
    name = "store-damaged"
    tag = save_detector(tiny(6), name)
    promote(tag)
    path = pointer_path(name)
    path.unlink()
    if damage == "directory":
        path.mkdir()
    else:
        path.write_text(damage)
    with pytest.raises(DamagedPointerError, match=f"{path}.* is damaged: .*; `flowad "
                                                          f"promote {name}:VERSION` rewrites it"):
        resolve(name)
    promote(tag)  # the documented repair, and rollback
    assert production_tag(name) == tag
    assert "is damaged" in read_pointer(name)["repaired"]


def test_a_damaged_model_file_is_named_not_a_traceback():
    tag = save_detector(tiny(7), "store-truncated")
    flow = Path(bentoml.models.get(tag).path_of("flow.pt"))
    flow.write_bytes(flow.read_bytes()[:10])
    with pytest.raises(ModelCheckError, match=f"cannot load {tag}: its files cannot be read"):
        load_detector(tag)
    with pytest.raises(ModelCheckError) as refused:
        promote(tag)
    message = str(refused.value)
    assert message.startswith(f"refusing to promote {tag}: its files cannot be read (")
    # said once: not "could not load: ModelCheckError: cannot load ...: its files ..."
    assert message.count(tag) == 1 and "ModelCheckError" not in message
    assert "could not load" not in message and "cannot load" not in message


def test_promote_removes_what_a_killed_promote_left_and_its_own_on_failure(monkeypatch):
    from pipelines.io.processes import owner_tag

    name = "store-promote-temp"
    tag = save_detector(tiny(8), name)
    registry_dir().mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = registry_dir() / f".{name}.{owner_tag(gone.pid)}-abc.json"
    left.write_text("{")
    promote(tag)
    assert not left.exists() and production_tag(name) == tag

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        promote(tag)
    assert not list(registry_dir().glob(f".{name}.*.json"))
    assert production_tag(name) == tag


@pytest.mark.parametrize("resolve_by", ["FLOWAD_MODEL", "pointer", "load", "list", "promote"])
def test_a_model_name_that_is_a_path_never_reads_a_file_outside_the_store(tmp_path, resolve_by):
    """A JSON file outside the store is never read by way of a model name, nor echoed."""
    from service.follower import ModelFollower

    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps({"name": "evil", "tag": "secret-content-4711", "history": []}))
    name = os.path.relpath(tmp_path / "evil", registry_dir())
    assert os.path.realpath(registry_dir() / f"{name}.json") == str(evil.resolve())
    calls = {
        "FLOWAD_MODEL": lambda: ModelFollower(name, "cpu", on_swap=lambda *a: None),
        "pointer": lambda: production_tag(name),
        "load": lambda: load_detector(name),
        "list": lambda: list_detectors(name),
        "promote": lambda: promote(f"{name}:v1"),
    }
    with pytest.raises(ModelNameError, match=r"is not a model name") as caught:
        calls[resolve_by]()
    assert "secret-content-4711" not in str(caught.value)
    assert is_model_name("Flowad-Detector.v2") and not is_model_name("a/b")


def test_a_column_of_mixed_ints_and_text_fits_saves_and_scores_the_same():
    """An object column of ints and strings is a text column (its ints compared as "3"); its
    reference records were written raw, and pyarrow refused the mix: the model was lost at
    save. They are written as the schema reads them (text, floats), and score the same."""
    frame = mixed_frame(600, seed=3)
    codes = np.random.default_rng(3).choice([3, 17, "A7", "B", None], len(frame))
    frame = frame.assign(code=pd.Series(codes, dtype=object))
    detector = Detector(exclude=["id"], target_fpr=0.05, train_options={"max_epochs": 3})
    detector.fit(frame)
    assert detector.schema["code"].kind == "categorical"
    assert set(detector.schema["code"].categories) == {"3", "17", "A7", "B"}
    tag = save_detector(detector, "mixed-text")
    loaded = load_verified(tag)
    new = mixed_frame(300, seed=4).assign(code=pd.Series(codes[:300], dtype=object))
    np.testing.assert_array_equal(loaded.decision_function(new), detector.decision_function(new))
    as_text = new.assign(code=new["code"].map(lambda v: None if v is None else str(v)))
    np.testing.assert_array_equal(loaded.decision_function(as_text),
                                  detector.decision_function(new))
