"""Fitted :class:`~pipelines.model.detector.Detector` s in the BentoML model store: saving,
loading and listing versions.

One detector is one model-store entry (the *one saved artifact* contract, docs/design.md): the
files ``Detector.save`` writes (:mod:`pipelines.model.artifact`), among them up to 64
calibration records and their scores, which :mod:`pipelines.registry.verify` re-scores before a
model is promoted or served. The entry's metadata is ``Detector.describe()`` plus library
versions: what ``flowad models`` and the service show.

Saving is all or nothing: BentoML creates the version folder and then copies into it, so a kill
in between left an empty ``models/NAME/VERSION/`` that made every listing fail. Here the entry
is built complete in a staging store on the same filesystem and renamed into place.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch

from pipelines.errors import DamagedPointerError, InputError, ModelCheckError
from pipelines.io.processes import owner_is_gone, owner_tag
from pipelines.model.artifact import json_safe
from pipelines.model.calibration import small_calibration_message
from pipelines.model.detector import Detector
from pipelines.registry.bentoml_store import (
    Model,
    Tag,
    bentoml_home,
    bentoml_version,
    create_model,
    get_model,
    model_from_path,
    store_dir,
)
from pipelines.registry.names import check_name
from pipelines.registry.pointer import production_tag, resolve

MODULE = "flowad"
DEFAULT_NAME = "flowad-detector"


class BrokenEntryWarning(UserWarning):
    """A folder in the model store that is not a loadable model (e.g. left by a killed save)."""


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "bentoml": bentoml_version(),
    }


# ------------------------------------------------------------------ store layout
def staging_root() -> Path:
    """Where entries are built before they are renamed into the store: beside it, on the same
    filesystem (a rename is atomic only within one)."""
    return bentoml_home() / "flowad" / "tmp"


STAGING_PREFIX = "save-"


def _remove_stale_staging() -> None:
    """Removes staging folders of this host's saves whose process is gone (killed mid-save)."""
    for folder in staging_root().glob(f"{STAGING_PREFIX}*"):
        if owner_is_gone(folder.name, STAGING_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flushes the entry's files to disk before it is published: a rename that outlives a
    power cut must not point at files that did not."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _set_latest(tag: Tag, scratch: Path) -> None:
    """Points ``models/NAME/latest`` at ``tag`` atomically (BentoML rewrites it in place, and
    readers racing that rewrite fail). The newest save is the newest model, as BentoML has it."""
    temp = scratch / "latest"
    temp.write_text(str(tag.version))
    os.replace(temp, store_dir() / tag.latest_path())


def _publish(entry: Path, tag: Tag, scratch: Path) -> None:
    """Renames a complete entry into the store, then updates ``latest``."""
    target = store_dir() / tag.path()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(entry, target)
    _set_latest(tag, scratch)


# ------------------------------------------------------------------ saving
def save_detector(detector: Detector, name: str = DEFAULT_NAME) -> str:
    """Saves a fitted detector as a new version of ``name``; returns its tag ``name:version``.

    All or nothing: the entry is built in a staging store and renamed into the model store
    when complete, so a save killed at any moment leaves no partial version behind (at most a
    staging folder, removed by a later save).

    Arguments:
        detector: a fitted, calibrated detector.
        name: the model name.

    Raises:
        InputError: an unfitted detector, or a store that cannot be written (a full disk, a
            folder without write permission), naming it.
    """
    if getattr(detector, "calibrator_", None) is None:
        raise InputError("only a fitted, calibrated detector can be saved")
    check_name(name)
    try:
        return _save(detector, name)
    except OSError as error:
        raise InputError(f"could not save {name} in the model store {store_dir()}: "
                         f"{error.strerror or error}") from error


def _save(detector: Detector, name: str) -> str:
    """:func:`save_detector` of a checked detector and name."""
    metadata = {**detector.describe(), "versions": library_versions()}
    staging_root().mkdir(parents=True, exist_ok=True)
    _remove_stale_staging()
    scratch = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{owner_tag()}-", dir=staging_root()))
    try:
        with create_model(name, labels={"kind": detector.model}, metadata=json_safe(metadata),
                          store=scratch / "models") as ref:
            try:
                detector.save(Path(ref.path))
            except (RuntimeError, OSError) as error:  # torch on a full disk: "unexpected pos"
                raise InputError(f"could not write {name}'s files (is the disk full?): "
                                 f"{error}") from error
        entry = scratch / "models" / ref.tag.path()
        _fsync_tree(entry)
        _publish(entry, ref.tag, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(ref.tag)


# ------------------------------------------------------------------ loading
def load_detector(tag: str, *, device: str = "auto", production_only: bool = False) -> Detector:
    """Loads a saved detector; it scores bit-identically to the one that was saved.

    Arguments:
        tag: ``name:version``, ``name:latest``, or a bare ``name`` (its production model if one
            was promoted, else the newest, unless ``production_only``).
        device: where the flow runs (``"auto"``, ``"cpu"``, ``"cuda"``).
        production_only: a bare name must have a production model
            (:class:`~pipelines.errors.NoProductionModel` otherwise): what a service needs.

    Raises:
        ModelNameError, ModelNotFoundError, DamagedPointerError: as
            :func:`~pipelines.registry.pointer.resolve`.
        ModelCheckError: the version's files cannot be read.
    """
    full_tag = resolve(tag, production_only=production_only)
    ref = get_model(full_tag)
    try:
        detector = Detector.load(ref.path, device=device)
    except Exception as error:  # a truncated or edited file of a saved version
        raise ModelCheckError(full_tag, f"its files cannot be read ({type(error).__name__}: "
                              f"{str(error)[:300]}); promote or use another version",
                              action="cannot load") from error
    detector.tag_ = str(ref.tag)
    return detector


# ------------------------------------------------------------------ listing
def _scan(name: str | None) -> tuple[list[Model], list[tuple[Path, str]]]:
    """The store's models (of ``name``, or all) and the folders that are not loadable models,
    with why; BentoML's own listing raises on the first broken one."""
    root = store_dir()
    if name is not None:
        folders = [root / name] if (root / check_name(name)).is_dir() else []
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    models, broken = [], []
    for folder in folders:
        for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                models.append(model_from_path(entry))
            except Exception as error:  # any unreadable entry is reported, never fatal
                broken.append((entry, f"{type(error).__name__}: {error}"))
    return models, broken


def list_detectors(name: str | None = None) -> list[dict[str, Any]]:
    """Saved detectors, newest first: tag, creation time, kind, threshold, key metrics, and a
    warning when the detector can never flag a record (its threshold is +inf).

    A broken entry (e.g. an empty version folder left by a save killed inside BentoML) is
    skipped with a :class:`BrokenEntryWarning` naming its path.
    """
    models, broken = _scan(name)
    for path, why in broken:
        warnings.warn(f"skipped broken model entry {path} ({why}); remove it if no save is "
                      "running", BrokenEntryWarning, stacklevel=2)
    rows = []
    for model in models:
        if model.info.module != MODULE:
            continue
        meta: dict[str, Any] = dict(model.info.metadata)  # what save_detector wrote
        metrics: dict[str, Any] = meta.get("metrics", {})
        row = {
            "tag": str(model.tag),
            "created": model.info.creation_time.isoformat(timespec="seconds"),
            "model_kind": meta.get("model_kind"),
            "target_fpr": meta.get("target_fpr"),
            "threshold": meta.get("threshold"),
            "val_nll": metrics.get("val_nll"),
            "n_train": metrics.get("n_train"),
        }
        # From the threshold, not the saved warnings: entries saved before those existed.
        if meta.get("threshold") == "inf" and metrics.get("n_calibration") is not None:
            row["warning"] = small_calibration_message(
                metrics["n_calibration"], meta["target_fpr"],
                cross=metrics.get("calibration") == "cross-conformal")
        rows.append(row)
    return sorted(rows, key=lambda row: row["created"], reverse=True)


def mark_production(rows: list[dict[str, Any]]) -> list[str]:
    """Sets each listed row's ``production`` (whether its tag is its name's production
    model); returns what a listing should warn about: a damaged pointer (listing is how one
    finds what to promote, so it goes on), a production version missing from the store.

    Arguments:
        rows: :func:`list_detectors`' rows.
    """
    problems, production = [], set()
    listed = {row["tag"] for row in rows}
    for name in sorted({tag.split(":")[0] for tag in listed}):
        try:
            tag = production_tag(name)
        except DamagedPointerError as damaged:
            problems.append(str(damaged))
            continue
        if tag is not None and tag not in listed:
            problems.append(f"the production model of {name} is {tag}, which is not in the "
                            f"store (deleted?); `flowad promote {name}:VERSION` names another")
        production.add(tag)
    for row in rows:
        row["production"] = row["tag"] in production
    return problems
