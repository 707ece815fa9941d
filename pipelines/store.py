"""Saving and loading a fitted :class:`~pipelines.detector.Detector` in the BentoML model store.

One detector is one model-store entry (design contract 7) holding:
- ``flow.pt``: the flow's state_dict (``torch.save``; loaded with ``weights_only=True``),
- ``encoder.skops``: the fitted encoder (skops, which loads only allow-listed types),
- ``calibration.json``: threshold and reference scores,
- ``detector.json``: constructor parameters, flow options, training config and history.
Metadata repeats what ``flowad models`` and the service show: schema, threshold, metrics, versions.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import sklearn
import torch

from flowmodels import build_flow
from pipelines import registry
from pipelines.calibration import Calibrator
from pipelines.detector import Detector, resolve_device
from pipelines.encoder import TabularEncoder

MODULE = "flowad"
DEFAULT_NAME = "flowad-detector"


def _json_safe(value: Any) -> Any:
    """Non-finite floats become strings and None entries are dropped: BentoML metadata takes
    neither, and JSON keeps the result as it is."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "bentoml": bentoml.__version__,
    }


def save_detector(detector: Detector, name: str = DEFAULT_NAME) -> str:
    """Saves a fitted detector as a new version of ``name``; returns its tag ``name:version``."""
    if getattr(detector, "calibrator_", None) is None:
        raise ValueError("only a fitted, calibrated detector can be saved")
    metadata = {
        "model_kind": detector.model,
        "target_fpr": detector.target_fpr,
        "threshold": detector.threshold_,
        "n_features": detector.n_features_in_,
        "schema": detector.encoder_.schema_.to_dict(),
        "flow_options": detector.flow_options_,
        "metrics": detector.metrics_,
        "versions": library_versions(),
    }
    state = {
        "params": detector.get_params(),
        "flow_options": detector.flow_options_,
        "train_config": detector.train_config_,
        "history": detector.history_,
        "metrics": detector.metrics_,
    }
    with bentoml.models.create(
        name, module=MODULE, labels={"kind": detector.model}, metadata=_json_safe(metadata)
    ) as ref:
        # Extra state (e.g. FFJORD's solver options) is a plain dict, not a tensor.
        cpu_state = {
            k: v.detach().cpu() if torch.is_tensor(v) else v
            for k, v in detector.flow_.state_dict().items()
        }
        torch.save(cpu_state, ref.path_of("flow.pt"))
        detector.encoder_.save(ref.path_of("encoder.skops"))
        Path(ref.path_of("calibration.json")).write_text(
            json.dumps(detector.calibrator_.to_dict())
        )
        Path(ref.path_of("detector.json")).write_text(json.dumps(_json_safe(state)))
    return str(ref.tag)


def load_detector(tag: str, *, device: str = "auto") -> Detector:
    """Loads a saved detector; it scores bit-identically to the one that was saved.

    ``tag`` is ``name:version``, ``name:latest``, or a bare ``name`` (its production model if one
    was promoted, else the newest).
    """
    ref = bentoml.models.get(registry.resolve(tag))
    state = json.loads(Path(ref.path_of("detector.json")).read_text())
    params = {"atom_share": None, **state["params"], "device": device}  # None: saved before atoms
    detector = Detector(**params)
    detector.device_ = resolve_device(device)
    detector.encoder_ = TabularEncoder.load(ref.path_of("encoder.skops"))
    detector.n_features_in_ = detector.encoder_.n_features_out_
    detector.flow_options_ = state["flow_options"]
    detector.flow_ = build_flow(detector.model, detector.n_features_in_, **state["flow_options"])
    weights = torch.load(ref.path_of("flow.pt"), map_location="cpu", weights_only=True)
    detector.flow_.load_state_dict(weights)
    detector.flow_.to(detector.device_).eval()
    calibration = json.loads(Path(ref.path_of("calibration.json")).read_text())
    detector.calibrator_ = Calibrator.from_dict(calibration)
    detector.threshold_ = detector.calibrator_.threshold_
    detector.train_config_ = state["train_config"]
    detector.history_ = state["history"]
    detector.metrics_ = state["metrics"]
    detector.tag_ = str(ref.tag)
    return detector


def list_detectors(name: str | None = None) -> list[dict[str, Any]]:
    """Saved detectors, newest first: tag, creation time, kind, threshold and key metrics."""
    rows = []
    for model in bentoml.models.list(name):
        if model.info.module != MODULE:
            continue
        meta = model.info.metadata
        rows.append(
            {
                "tag": str(model.tag),
                "created": model.info.creation_time.isoformat(timespec="seconds"),
                "model_kind": meta.get("model_kind"),
                "target_fpr": meta.get("target_fpr"),
                "threshold": meta.get("threshold"),
                "val_nll": meta.get("metrics", {}).get("val_nll"),
                "n_train": meta.get("metrics", {}).get("n_train"),
            }
        )
    return sorted(rows, key=lambda row: row["created"], reverse=True)
