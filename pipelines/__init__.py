"""Data in, fitted detector out: encoding, training, calibration, evaluation, model store, CLI.

The names below are imported on first use (PEP 562), so that importing a submodule, such as
the command line's, does not import torch and scikit-learn with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.calibration import Calibrator
    from pipelines.detector import Detector
    from pipelines.encoder import TabularEncoder
    from pipelines.schema import SchemaError

_HOMES = {"Calibrator": "pipelines.calibration", "Detector": "pipelines.detector",
          "TabularEncoder": "pipelines.encoder", "SchemaError": "pipelines.schema"}

__all__ = ["Calibrator", "Detector", "SchemaError", "TabularEncoder"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
