"""Keeps a service process on the production model: load, warm up, then swap.

Each process (every front-end worker and the scorer) holds its own ``ModelFollower``. A request
reads ``follower.current`` once and uses that object to the end, so requests in flight finish
on the model they started with; the swap is a single reference assignment made only after the
new model has loaded and scored a warm-up batch. A model that fails to load is logged, counted
and never swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipelines import registry
from pipelines.detector import Detector
from pipelines.store import load_detector

log = logging.getLogger("flowad.service")


@dataclass(frozen=True)
class LoadedModel:
    detector: Detector
    tag: str
    load_seconds: float


def load_and_warm(tag: str, device: str) -> LoadedModel:
    start = time.perf_counter()
    detector = load_detector(tag, device=device)
    with torch.inference_mode():  # first calls allocate and dispatch: pay that before traffic
        detector.flow_.log_prob(torch.zeros(64, detector.n_features_in_, device=detector.device_))
    return LoadedModel(detector, detector.tag_, time.perf_counter() - start)


class ModelFollower:
    """Arguments:
    model: a model name (follow its production version) or ``name:version`` (pinned).
    device: where the detector runs.
    on_swap: called with (new, old) after each swap, e.g. to update metrics.
    on_failure: called with the tag that failed to load.
    """

    def __init__(
        self,
        model: str,
        device: str,
        on_swap: Callable[[LoadedModel, LoadedModel | None], None] = lambda new, old: None,
        on_failure: Callable[[str], None] = lambda tag: None,
    ) -> None:
        self.model, self.device = model, device
        self.on_swap, self.on_failure = on_swap, on_failure
        self._lock = threading.Lock()
        self.current: LoadedModel = load_and_warm(self.target(), device)
        on_swap(self.current, None)

    def target(self) -> str:
        """The tag this process should serve now."""
        return registry.resolve(self.model)

    def refresh(self) -> bool:
        """Loads and swaps in the target model if it changed; True if it swapped."""
        with self._lock:  # one load at a time, whether from the poller or /admin/reload
            try:
                tag = self.target()
                if tag == self.current.tag:
                    return False
                new = load_and_warm(tag, self.device)
            except Exception:
                log.exception("could not load model for %r; keeping %s", self.model,
                              self.current.tag)
                self.on_failure(self.model)
                return False
            old, self.current = self.current, new
            log.info("now serving %s (was %s)", new.tag, old.tag)
            self.on_swap(new, old)
            return True

    def poll_every(self, seconds: float) -> None:
        """Starts a daemon thread calling :meth:`refresh` every ``seconds`` (0 disables)."""
        if seconds <= 0:
            return

        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.refresh()

        threading.Thread(target=loop, name="flowad-model-follower", daemon=True).start()
