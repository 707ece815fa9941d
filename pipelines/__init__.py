"""Data in, fitted detector out: tabular encoding, the detector (training, calibration,
scoring), tables in and out, the model store, batch scoring, evaluation and the ``flowad`` CLI.

Layers, each importing only those before it: ``errors`` < ``tabular`` < ``model`` <
``io`` | ``evaluation`` < ``registry`` < ``batch`` < ``cli`` (docs/design.md, "Layers").

The names below are imported on first use (PEP 562), so that importing a submodule, such as
the command line's, does not import torch and scikit-learn with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.errors import FlowadError, InputError, SchemaError
    from pipelines.model.calibration import Calibrator
    from pipelines.model.detector import Detector
    from pipelines.registry.store import load_detector, save_detector
    from pipelines.tabular.encoder import TabularEncoder

_HOMES = {"Calibrator": "pipelines.model.calibration", "Detector": "pipelines.model.detector",
          "TabularEncoder": "pipelines.tabular.encoder", "SchemaError": "pipelines.errors",
          "FlowadError": "pipelines.errors", "InputError": "pipelines.errors",
          "load_detector": "pipelines.registry.store", "save_detector": "pipelines.registry.store"}

__all__ = ["Calibrator", "Detector", "FlowadError", "InputError", "SchemaError",
           "TabularEncoder", "load_detector", "save_detector"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
