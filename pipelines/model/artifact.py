"""The files of a saved detector (no pickle), and how older ones are read.

``Detector.save`` writes into one folder:

- ``flow.pt``: the flow's state_dict (``torch.save``; read with ``weights_only``),
- ``encoder.skops``: the encoder (:mod:`pipelines.tabular.artifact`),
- ``calibration.json``: the calibrator's threshold and calibration scores,
- ``detector.json``: the format version, constructor parameters, input columns, flow options,
  training configuration, history and metrics,
- ``reference.parquet`` + ``reference.json``: up to 64 calibration records and their anomaly
  scores, which :func:`pipelines.registry.verify.verify_detector` re-scores.

Format versions of ``detector.json`` (:func:`upgrade` reads each as the current one):
1, entries saved before the version was recorded (scores were already ``-log p``); 2 adds
``feature_names_in``; 3, the encoder's support of discrete columns and folded category text,
which an older flowad would ignore, scoring otherwise: it refuses the format by name instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.errors import InputError
from pipelines.model.calibration import Calibrator, ContaminationCalibrator
from pipelines.model.crossconformal import CrossConformalCalibrator
from pipelines.tabular.artifact import load_encoder, save_encoder
from pipelines.tabular.encoder import TabularEncoder

FORMAT_VERSION = 3
AnyCalibrator = Calibrator | ContaminationCalibrator | CrossConformalCalibrator


def json_safe(value: Any) -> Any:
    """Non-finite floats become strings and None entries of dicts are dropped: BentoML metadata
    takes neither, and strict JSON has no infinity.

    Arguments:
        value: nested dicts, lists, tuples, numpy scalars and plain values.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def calibrator_from_dict(state: Mapping[str, Any]) -> AnyCalibrator:
    """The calibrator a saved state describes, by its ``method``: "conformal" (split),
    "cross-conformal" (:mod:`pipelines.model.crossconformal`) or "contamination".

    Arguments:
        state: what a calibrator's ``to_dict`` wrote.
    """
    kinds: dict[str, type[AnyCalibrator]] = {
        "conformal": Calibrator, "contamination": ContaminationCalibrator,
        "cross-conformal": CrossConformalCalibrator}
    method = state.get("method", "conformal")
    if method not in kinds:
        raise InputError(f"unknown calibration method {method!r}: upgrade flowad to load it")
    return kinds[method].from_dict(state)


@dataclass
class SavedDetector:
    """What a detector's folder holds, read back.

    Arguments:
        state: ``detector.json`` in the current format (:func:`upgrade`).
        encoder: the encoder.
        weights: the flow's state_dict (on the CPU).
        calibrator: the calibrator.
        reference_records: the reference records, or None (models saved before them).
        reference_scores: their anomaly scores, or None.
    """

    state: dict[str, Any]
    encoder: TabularEncoder
    weights: dict[str, Any]
    calibrator: AnyCalibrator
    reference_records: pd.DataFrame | None
    reference_scores: np.ndarray | None


def write_files(folder: Path, saved: SavedDetector) -> None:
    """Writes a detector's files into an existing folder.

    Arguments:
        folder: the folder.
        saved: the parts, ``state`` without its format version (added here).
    """
    torch.save(saved.weights, folder / "flow.pt")
    save_encoder(saved.encoder, folder / "encoder.skops")
    (folder / "calibration.json").write_text(json.dumps(saved.calibrator.to_dict()))
    state = {"format_version": FORMAT_VERSION, **saved.state}
    (folder / "detector.json").write_text(json.dumps(json_safe(state)))
    if saved.reference_records is not None and saved.reference_scores is not None:
        table = pa.Table.from_pandas(saved.reference_records, preserve_index=False)
        pq.write_table(table, folder / "reference.parquet")
        scores = [float(s) for s in saved.reference_scores]
        (folder / "reference.json").write_text(json.dumps({"scores": scores}))


def upgrade(state: dict[str, Any], version: int) -> dict[str, Any]:
    """``detector.json`` of format ``version`` as the current format has it.

    ``progress`` is a display choice, not part of the model (format 1 saved it as True);
    ``atom_share`` is None for models saved before atoms existed (``contamination`` and
    ``calibration`` take their defaults when saved before them); ``feature_names_in``, absent
    before format 2, is None here and the schema's columns when loaded.

    Arguments:
        state: the file's contents.
        version: its ``format_version`` (1 when absent).

    Raises:
        InputError: a format newer than this flowad reads.
    """
    if version not in range(1, FORMAT_VERSION + 1):
        raise InputError(f"saved in detector format {version!r}; this flowad reads formats 1 "
                         f"to {FORMAT_VERSION}: upgrade flowad to load it")
    return {**state, "params": {"atom_share": None, **state["params"], "progress": False},
            "feature_names_in": state.get("feature_names_in")}


def read_files(folder: Path) -> SavedDetector:
    """Reads the files :func:`write_files` wrote (or an older flowad did).

    Arguments:
        folder: the folder.

    Raises:
        InputError: files of a newer format than this flowad reads.
    """
    state = json.loads((folder / "detector.json").read_text())
    state = upgrade(state, state.pop("format_version", 1))
    calibrator = calibrator_from_dict(json.loads((folder / "calibration.json").read_text()))
    records = scores = None
    if (folder / "reference.parquet").is_file():  # absent in the first saved models
        records = pq.read_table(folder / "reference.parquet").to_pandas()
        scores = np.asarray(json.loads((folder / "reference.json").read_text())["scores"],
                            dtype=np.float64)
    weights = torch.load(folder / "flow.pt", map_location="cpu", weights_only=True)
    return SavedDetector(state, load_encoder(folder / "encoder.skops"), weights, calibrator,
                         records, scores)
