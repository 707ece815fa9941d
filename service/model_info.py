"""``GET /model``: what the service says about the model it serves."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import bentoml

from pipelines import registry
from service.bundle import bundled_tag, running_bento
from service.follower import LoadedModel
from service.settings import Settings

UNKNOWN_CATEGORY_POLICY = (
    "unseen categories are scored, not rejected: they map to the column's 'unknown' slot, "
    "which training never saw, so they raise the score"
)


def model_info(current: LoadedModel, settings: Settings) -> dict[str, Any]:
    """The detector's own description, the threshold ``null`` when it is +inf (JSON has no
    infinity; ``warnings`` then says why and what to do).

    It describes the model the process holds in memory, which keeps serving if its folder is
    deleted from the store or the pointer file is damaged: ``production`` and ``created`` are
    then ``null``, with a warning saying why.

    Arguments:
        current: the model served.
        settings: the service's settings (the request limits it reports).
    """
    about = current.detector.describe()
    threshold = about["threshold"]
    warnings = list(about["warnings"])
    production = _read_or_warn(
        lambda: is_production(current.tag), warnings,
        f"production is unknown: the production pointer of {current.tag.split(':')[0]!r} "
        "cannot be read")
    created = _read_or_warn(
        lambda: bentoml.models.get(current.tag).info.creation_time.isoformat(), warnings,
        f"created is unknown: {current.tag} cannot be read from the model store (deleted?)")
    return {
        "tag": current.tag,
        "production": production,
        "created": created,
        "model_kind": about["model_kind"],
        "target_fpr": about["target_fpr"],
        "threshold": threshold if math.isfinite(threshold) else None,
        "calibration": about["calibration"],
        "warnings": warnings,
        "schema": about["schema"],
        "training_metrics": about["metrics"],
        "unknown_category_policy": UNKNOWN_CATEGORY_POLICY,
        "limits": {"max_records": settings.max_records,
                   "max_body_bytes": settings.max_body_bytes},
    }


def is_production(tag: str) -> bool:
    """Whether ``tag`` is the production model: a built Bento's model is (it has no pointer
    file); otherwise the registry's pointer decides."""
    if running_bento() is not None:
        return bundled_tag() == tag
    return registry.production_tag(tag.split(":")[0]) == tag


def _read_or_warn(read: Callable[[], Any], warnings: list[str], what: str) -> Any:
    """``read()``, or None with a warning ``what`` and the error: any failure (a missing
    folder, a pointer file that is empty, garbage or a directory) costs one field only."""
    try:
        return read()
    except Exception as error:
        warnings.append(f"{what}: {type(error).__name__}: {str(error)[:200]}")
        return None
