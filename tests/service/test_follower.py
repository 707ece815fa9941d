"""``ModelFollower`` against a real model store: verify before swapping, report a broken model
once, back off, never fall back to an unpromoted version, and log swaps where BentoML shows them."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
from conftest import REPO, corrupt_weights, mixed_frame

from pipelines import Detector, registry
from pipelines.errors import NoProductionModel
from pipelines.registry.store import save_detector
from service.follower import FIRST_BACKOFF_S, ModelFollower


def tiny(seed: int) -> Detector:
    return Detector(exclude=["id"], train_options={"max_epochs": 3}, flow_options={"members": 1},
                    random_state=seed).fit(mixed_frame(600, seed=seed))


@pytest.fixture(scope="module")
def detectors() -> list[Detector]:
    return [tiny(0), tiny(1)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_broken_model_is_not_swapped_in_and_reported_once(detectors, caplog):
    good = save_detector(detectors[0], "follow-broken")
    registry.promote(good)
    failures: list[str] = []
    clock = Clock()
    follower = ModelFollower("follow-broken", "cpu", on_failure=failures.append, clock=clock)
    bad = save_detector(detectors[1], "follow-broken")
    registry.promote(bad)  # passes its check, then its weights are corrupted on disk
    original = corrupt_weights(bad)
    caplog.set_level(logging.INFO, logger="flowad")
    for _ in range(5):
        clock.now += FIRST_BACKOFF_S * 20  # past any backoff: every poll retries
        assert follower.refresh() is False
    assert follower.current.tag == good
    assert failures == [bad]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and bad in errors[0].getMessage()
    assert "non-finite" in errors[0].getMessage()

    assert re.fullmatch(rf"{bad} failed to load or verify \(5 tries\): .*non-finite values "
                        rf"in flow tensors .*; still serving {good}", follower.problem())

    # Repaired (a transient fault): retried after the backoff, then swapped in and logged.
    Path(bentoml.models.get(bad).path_of("flow.pt")).write_bytes(original)
    assert follower.refresh() is False  # still backing off
    assert follower.problem().startswith(f"{bad} failed to load or verify (5 tries)")
    clock.now += 600
    assert follower.refresh() is True and follower.current.tag == bad
    assert follower.problem() is None
    assert any(f"now serving {bad}" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)


def test_an_operators_reload_tries_a_failed_model_at_once(detectors):
    good = save_detector(detectors[0], "follow-now")
    registry.promote(good)
    clock = Clock()
    follower = ModelFollower("follow-now", "cpu", clock=clock)
    assert follower.problem() is None
    bad = save_detector(detectors[1], "follow-now")
    registry.promote(bad)
    original = corrupt_weights(bad)
    assert follower.refresh() is False
    assert follower.problem().startswith(f"{bad} failed to load or verify (1 try): ")
    assert follower.refresh(now=True) is False  # tried again although backing off
    assert follower.problem().startswith(f"{bad} failed to load or verify (2 tries): ")
    Path(bentoml.models.get(bad).path_of("flow.pt")).write_bytes(original)
    assert follower.refresh() is False  # the poller waits out the backoff
    assert follower.refresh(now=True) is True and follower.current.tag == bad
    assert follower.problem() is None


def test_no_production_model_refuses_to_start_instead_of_serving_the_newest(detectors):
    tag = save_detector(detectors[0], "follow-unpromoted")
    with pytest.raises(NoProductionModel) as caught:
        ModelFollower("follow-unpromoted", "cpu")
    assert "no production model for follow-unpromoted" in str(caught.value)
    assert "flowad promote follow-unpromoted:VERSION" in str(caught.value)
    with pytest.raises(NoProductionModel, match="follow-unpromoted"):
        ModelFollower("Follow-Unpromoted", "cpu")  # wrong case: names the near miss
    # Pinning still works without a pointer.
    assert ModelFollower(tag, "cpu").current.tag == tag
    assert ModelFollower("follow-unpromoted:latest", "cpu").current.tag == tag


def test_a_failing_model_does_not_start_the_service(detectors):
    tag = save_detector(detectors[0], "follow-nan-start")
    corrupt_weights(tag)
    with pytest.raises(ValueError, match="non-finite"):
        ModelFollower(tag, "cpu")


SWAP_UNDER_BENTOML_LOGGING = """
import sys
from bentoml._internal.log import configure_server_logging
configure_server_logging()  # what a `bentoml serve` worker does before importing the service
from pipelines import registry
from service.follower import ModelFollower
follower = ModelFollower("follow-logs", "cpu")
registry.promote(sys.argv[1])
assert follower.refresh()
"""


def test_swaps_are_logged_under_bentoml_server_logging(detectors, tmp_path):
    first = save_detector(detectors[0], "follow-logs")
    registry.promote(first)
    second = save_detector(detectors[1], "follow-logs")
    script = tmp_path / "swap.py"
    script.write_text(SWAP_UNDER_BENTOML_LOGGING)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), second], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[INFO]" in result.stdout and f"now serving {second} (was {first}" in result.stdout
