"""Keeps a service process on the production model: load, verify, then swap.

Each process (every front-end worker and the scorer) holds its own ``ModelFollower``. A request
reads ``follower.current`` once and uses that object to the end, so requests in flight finish
on the model they started with; the swap is a single reference assignment made only after the
new model has loaded and proved itself (:func:`pipelines.registry.verify.verify_detector`:
finite weights, and its saved reference records score as when it was saved; scoring them also
warms it up).

A bare model name follows its production pointer only: with no pointer the follower refuses to
start (:class:`~pipelines.registry.NoProductionModel`) rather than serve the newest version,
which may be a candidate the retrain gate rejected. ``name:version`` and ``name:latest`` pin.

A model that fails to load or verify is never swapped in. It is logged and reported to
``on_failure`` once per tag (not on every poll), and retried with exponential backoff (30 s,
doubling, at most 5 min between tries) in case the failure was transient; a saved version never
changes, so a model that failed its check keeps failing until the pointer names another tag,
which is tried at the next poll. An operator's reload (``refresh(now=True)``) tries at once, and
:meth:`ModelFollower.problem` says why the target is not being served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipelines import registry
from pipelines.errors import ModelCheckError
from pipelines.model.detector import Detector
from pipelines.registry.verify import load_verified

log = logging.getLogger("flowad.service")
FIRST_BACKOFF_S, MAX_BACKOFF_S = 30.0, 300.0


def show_info_logs() -> None:
    """Lets flowad's INFO records through under ``bentoml serve``: BentoML's server logging
    config sets the root logger to WARNING (only its own ``bentoml`` logger shows INFO), so
    without a level of its own every "now serving" line would be dropped. The records still go
    to BentoML's handler on the root logger, with its format."""
    flowad = logging.getLogger("flowad")
    if flowad.getEffectiveLevel() > logging.INFO:
        flowad.setLevel(logging.INFO)


@dataclass(frozen=True)
class LoadedModel:
    """A loaded detector, and what the service reports of it with every verdict.

    Arguments:
        target_fpr: the target FPR its threshold was calibrated at; None for a threshold
            fitted by ``contamination``.
        flag_rate: the share of normal records it is expected to flag: ``target_fpr``, or the
            contamination (``flowad_target_fpr``, which the flag-rate alert compares with).
    """

    detector: Detector
    tag: str
    load_seconds: float
    target_fpr: float | None
    flag_rate: float


def load_and_warm(tag: str, device: str) -> LoadedModel:
    """Loads ``tag`` and verifies it (which warms it up); raises ModelCheckError if it fails."""
    start = time.perf_counter()
    detector = load_verified(tag, device=device)
    about = detector.describe()
    rate = about["target_fpr"] if about["target_fpr"] is not None else about["contamination"]
    return LoadedModel(detector, detector.tag_, time.perf_counter() - start,
                       about["target_fpr"], float(rate))


@dataclass
class _Failure:
    """A tag that failed: how often, and when it may be tried again."""

    attempts: int
    retry_at: float
    error: str = ""


class ModelFollower:
    """Arguments:
    model: a model name (follow its production version) or ``name:version`` (pinned).
    device: where the detector runs.
    on_swap: called with (new, old) after each swap, e.g. to update metrics.
    on_failure: called with the tag that failed to load or verify, once per tag (or with the
        model name when its production tag cannot be read).
    clock: monotonic seconds, for the retry backoff.
    """

    def __init__(
        self,
        model: str,
        device: str,
        on_swap: Callable[[LoadedModel, LoadedModel | None], None] = lambda new, old: None,
        on_failure: Callable[[str], None] = lambda tag: None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        show_info_logs()
        self.model, self.device = model, device
        self.on_swap, self.on_failure = on_swap, on_failure
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, _Failure] = {}
        self._unresolved = False  # the production tag could not be read at the last poll
        self._unresolved_error = ""
        self._target = ""  # the tag the last refresh resolved
        try:  # nothing to fall back on at start: fail loudly
            self.current: LoadedModel = load_and_warm(self.target(), device)
        except Exception as error:
            log.error("cannot start serving %r: %s", model, error)
            raise
        log.info("serving %s (loaded and verified in %.2f s)", self.current.tag,
                 self.current.load_seconds)
        on_swap(self.current, None)

    def target(self) -> str:
        """The tag this process should serve now (a bare name: its production tag only)."""
        return registry.resolve(self.model, production_only=True)

    def refresh(self, *, now: bool = False) -> bool:
        """Loads and swaps in the target model if it changed; True if it swapped.

        Arguments:
            now: try a target that is backing off after a failure at once (an operator's
                reload), not when its backoff ends.
        """
        with self._lock:  # one load at a time, whether from the poller or /admin/reload
            try:
                tag = self.target()
            except Exception as error:
                self._unresolvable(error)
                return False
            self._unresolved = False  # the pointer reads again: a later failure is news
            self._target = tag
            if tag == self.current.tag or not (now or self._due(tag)):
                return False
            try:
                new = load_and_warm(tag, self.device)
            except Exception as error:
                self._failed(tag, error)
                return False
            self._failures.pop(tag, None)
            old, self.current = self.current, new
            log.info("now serving %s (was %s; loaded and verified in %.2f s)", new.tag, old.tag,
                     new.load_seconds)
            self.on_swap(new, old)
            return True

    def problem(self) -> str | None:
        """Why this process is not serving its target model after the last refresh (None: it
        is): the production tag cannot be read, or the target failed to load or verify."""
        if self._unresolved:
            return (f"cannot read the production tag of {self.model!r}: "
                    f"{self._unresolved_error}; still serving {self.current.tag}")
        failure = self._failures.get(self._target)
        if self._target == self.current.tag or failure is None:
            return None
        return (f"{self._target} failed to load or verify ({failure.attempts} "
                f"{'try' if failure.attempts == 1 else 'tries'}): {failure.error}; "
                f"still serving {self.current.tag}")

    def _due(self, tag: str) -> bool:
        """False while ``tag`` is backing off after a failure."""
        failure = self._failures.get(tag)
        return failure is None or self.clock() >= failure.retry_at

    def _unresolvable(self, error: Exception) -> None:
        """The production tag cannot be read (pointer removed, unreadable): logged and reported
        once until it reads again."""
        self._unresolved_error = str(error)
        if not self._unresolved:
            log.error("cannot read the production tag of %r; keeping %s: %s", self.model,
                      self.current.tag, error)
            self.on_failure(self.model)
        self._unresolved = True

    def _failed(self, tag: str, error: Exception) -> None:
        """Records a failure of ``tag``: logs it and calls ``on_failure`` the first time only,
        and sets when it may be tried again."""
        failure = self._failures.get(tag)
        if failure is None:
            failure = self._failures[tag] = _Failure(attempts=0, retry_at=0.0)
            log.error("could not load %s for %r; keeping %s (retried with backoff, reported "
                      "once): %s", tag, self.model, self.current.tag, error,
                      exc_info=not isinstance(error, ModelCheckError))
            self.on_failure(tag)
        else:
            log.debug("%s still fails (attempt %d): %s", tag, failure.attempts + 1, error)
        failure.attempts += 1
        failure.error = str(error)
        delay = min(FIRST_BACKOFF_S * 2 ** (failure.attempts - 1), MAX_BACKOFF_S)
        failure.retry_at = self.clock() + delay

    def poll_every(self, seconds: float) -> None:
        """Starts a daemon thread calling :meth:`refresh` every ``seconds`` (0 disables)."""
        if seconds <= 0:
            return

        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.refresh()

        threading.Thread(target=loop, name="flowad-model-follower", daemon=True).start()
