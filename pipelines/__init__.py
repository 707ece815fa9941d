"""Data in, fitted detector out: encoding, training, calibration, evaluation, model store, CLI."""

from pipelines.calibration import Calibrator
from pipelines.detector import Detector
from pipelines.encoder import TabularEncoder
from pipelines.schema import SchemaError

__all__ = ["Calibrator", "Detector", "SchemaError", "TabularEncoder"]
