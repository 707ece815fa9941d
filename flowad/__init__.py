"""flowad's public API under the distribution's own name: ``from flowad import Detector``.

The same objects as :mod:`pipelines` (their home; ``docs/design.md``, "Layers"), imported on
first use as there, so that ``import flowad`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pipelines

if TYPE_CHECKING:
    from pipelines import (
        Calibrator,
        Detector,
        FlowadError,
        InputError,
        SchemaError,
        TabularEncoder,
        load_detector,
        save_detector,
    )

__all__ = ["Calibrator", "Detector", "FlowadError", "InputError", "SchemaError",
           "TabularEncoder", "load_detector", "save_detector"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(pipelines, name)
    raise AttributeError(f"module 'flowad' has no attribute {name!r}")
