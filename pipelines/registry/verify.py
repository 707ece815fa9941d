"""A saved model proves it scores as when it was saved (the *models prove themselves*
contract, docs/design.md): before it is promoted (:mod:`pipelines.registry.promotion`), served,
or shipped to Spark executors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipelines.errors import ModelCheckError
from pipelines.model.detector import Detector
from pipelines.registry.store import load_detector

# Reference scores must reproduce within this: CPU vs GPU float32 differ by ~1e-5 nats, while a
# corrupted or perturbed model moves scores by far more.
SCORE_ATOL, SCORE_RTOL = 1e-3, 1e-5
CHECK_ROWS = 8  # rows of the zero batch that checks models saved without reference records


def _nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of floating parameters and buffers holding a NaN or an infinity."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in tensors
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _reference_problem(detector: Detector, records: pd.DataFrame, expected: np.ndarray
                       ) -> str | None:
    """What is wrong with the scores of the reference records, or None.

    Arguments:
        detector: the loaded detector.
        records: its reference records.
        expected: their saved scores.
    """
    try:
        scores = detector.decision_function(records)
    except Exception as error:  # a broken encoder or flow: any failure means "do not serve"
        return f"scoring its reference records failed: {type(error).__name__}: {error}"
    nonfinite = int((~np.isfinite(scores)).sum())
    if nonfinite:
        return f"{nonfinite} of {len(scores)} reference records score non-finite"
    close = np.isclose(scores, expected, atol=SCORE_ATOL, rtol=SCORE_RTOL)
    if close.all():
        return None
    worst = int(np.argmax(np.abs(scores - expected)))
    return (f"{int((~close).sum())} of {len(scores)} reference scores differ from the saved "
            f"ones (record {worst}: {scores[worst]:.6f} vs saved {expected[worst]:.6f}; "
            f"tolerance {SCORE_ATOL} nats + {SCORE_RTOL} relative)")


def _zero_batch_problem(detector: Detector) -> str | None:
    """For models saved without reference records: log p of a zero batch must be finite."""
    zeros = torch.zeros(CHECK_ROWS, detector.n_encoded_features_, device=detector.device_)
    with torch.inference_mode():
        log_prob = detector.flow_.log_prob(zeros)
    if bool(torch.isfinite(log_prob).all()):
        return None
    return "log p of a zero batch is not finite"


def verify_detector(detector: Detector) -> None:
    """Raises :class:`~pipelines.errors.ModelCheckError` unless the detector proves it scores
    as when saved.

    Checks: every flow parameter and buffer is finite; the reference records score finite and
    equal to their saved scores within ``SCORE_ATOL`` nats + ``SCORE_RTOL`` relative (models
    saved without reference records: log p of a zero batch is finite). Scoring them also warms
    the model up.

    Arguments:
        detector: a loaded detector.
    """
    tag = getattr(detector, "tag_", "unsaved detector")
    bad = _nonfinite_tensors(detector.flow_)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelCheckError(tag, f"non-finite values in flow tensors {shown}")
    records = getattr(detector, "reference_records_", None)
    expected = getattr(detector, "reference_scores_", None)
    if records is not None and expected is not None:
        problem = _reference_problem(detector, records, expected)
    else:
        problem = _zero_batch_problem(detector)
    if problem:
        raise ModelCheckError(tag, problem)


def load_verified(tag: str, *, device: str = "cpu", production_only: bool = False) -> Detector:
    """:func:`~pipelines.registry.store.load_detector` then :func:`verify_detector`: a model
    whose files do not load, or that fails its check, is a
    :class:`~pipelines.errors.ModelCheckError` (reported once, by whichever failed).

    Arguments:
        tag: as ``load_detector`` takes it.
        device: where the flow runs.
        production_only: as ``load_detector`` takes it.
    """
    detector = load_detector(tag, device=device, production_only=production_only)
    verify_detector(detector)
    return detector
