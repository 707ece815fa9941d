"""Fitted :class:`~pipelines.detector.Detector` s in the BentoML model store: versions, listing,
and the check a model passes before it is promoted or served.

One detector is one model-store entry (the *one saved artifact* contract, docs/design.md): the
files :meth:`Detector.save <pipelines.detector.Detector.save>` writes (which also reads them
back), among them up to 64 calibration records and their scores, which :func:`verify_detector`
re-scores before a model is promoted or served. The entry's metadata is
:meth:`Detector.describe <pipelines.detector.Detector.describe>` plus library versions: what
``flowad models`` and the service show.

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

import bentoml
import numpy as np
import sklearn
import torch
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models.model import Model, ModelStore
from bentoml._internal.tag import Tag
from bentoml.exceptions import NotFound

from pipelines import registry
from pipelines.detector import Detector, json_safe, small_calibration_message
from pipelines.processes import owner_is_gone, owner_tag

MODULE = "flowad"
DEFAULT_NAME = "flowad-detector"
# Reference scores must reproduce within this: CPU vs GPU float32 differ by ~1e-5 nats, while a
# corrupted or perturbed model moves scores by far more.
SCORE_ATOL, SCORE_RTOL = 1e-3, 1e-5
CHECK_ROWS = 8  # rows of the zero batch that checks models saved without reference records


class ModelCheckError(ValueError):
    """A saved model that must not be served or promoted (non-finite weights, or scores of its
    reference records that differ from the saved ones).

    Arguments:
        tag: the model's tag.
        problem: what failed, in words.
    """

    def __init__(self, tag: str, problem: str, action: str = "model check failed for") -> None:
        super().__init__(f"{action} {tag}: {problem}")
        self.tag, self.problem = tag, problem


class BrokenEntryWarning(UserWarning):
    """A folder in the model store that is not a loadable model (e.g. left by a killed save)."""


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "bentoml": bentoml.__version__,
    }


# ------------------------------------------------------------------ store layout
def store_dir() -> Path:
    """The BentoML model store's folder (``$BENTOML_HOME/models``)."""
    return Path(BentoMLContainer.model_store_dir.get())


def staging_root() -> Path:
    """Where entries are built before they are renamed into the store: beside it, on the same
    filesystem (a rename is atomic only within one)."""
    return Path(BentoMLContainer.bentoml_home.get()) / "flowad" / "tmp"


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
    """
    if getattr(detector, "calibrator_", None) is None:
        raise ValueError("only a fitted, calibrated detector can be saved")
    metadata = {**detector.describe(), "versions": library_versions()}
    staging_root().mkdir(parents=True, exist_ok=True)
    _remove_stale_staging()
    scratch = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{owner_tag()}-", dir=staging_root()))
    try:
        with bentoml.models.create(
            name, module=MODULE, labels={"kind": detector.model},
            metadata=json_safe(metadata), _model_store=ModelStore(scratch / "models"),
        ) as ref:
            try:
                detector.save(ref.path)
            except RuntimeError as error:  # torch's writer on a full disk: "unexpected pos"
                raise OSError(f"could not write {name}'s files (is the disk full?): "
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
            (:class:`~pipelines.registry.NoProductionModel` otherwise): what a service needs.
    """
    full_tag = registry.resolve(tag, production_only=production_only)
    try:
        ref = bentoml.models.get(full_tag)
        detector = Detector.load(ref.path, device=device)
    except (NotFound, registry.DamagedPointerError):
        raise
    except Exception as error:  # a truncated or edited file of a saved version
        raise ModelCheckError(full_tag, f"its files cannot be read ({type(error).__name__}: "
                              f"{str(error)[:300]}); promote or use another version",
                              action="cannot load") from error
    detector.tag_ = str(ref.tag)
    return detector


# ------------------------------------------------------------------ checking
def _nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of floating parameters and buffers holding a NaN or an infinity."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in tensors
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _reference_problem(detector: Detector) -> str | None:
    """What is wrong with the scores of the reference records, or None."""
    try:
        scores = detector.decision_function(detector.reference_records_)
    except Exception as error:  # a broken encoder or flow: any failure means "do not serve"
        return f"scoring its reference records failed: {type(error).__name__}: {error}"
    expected = detector.reference_scores_
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
    """Raises :class:`ModelCheckError` unless the detector proves it scores as when saved.

    Checks: every flow parameter and buffer is finite; the reference records score finite and
    equal to their saved scores within ``SCORE_ATOL`` nats + ``SCORE_RTOL`` relative (models
    saved without reference records: log p of a zero batch is finite). Scoring them also warms
    the model up.
    """
    tag = getattr(detector, "tag_", "unsaved detector")
    bad = _nonfinite_tensors(detector.flow_)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelCheckError(tag, f"non-finite values in flow tensors {shown}")
    if getattr(detector, "reference_records_", None) is not None:
        problem = _reference_problem(detector)
    else:
        problem = _zero_batch_problem(detector)
    if problem:
        raise ModelCheckError(tag, problem)


def load_verified(tag: str, *, device: str = "cpu", production_only: bool = False) -> Detector:
    """:func:`load_detector` then :func:`verify_detector`; a model whose files do not load
    (corrupt weights, a missing file) is a :class:`ModelCheckError` too. An unknown tag stays
    ``bentoml.exceptions.NotFound``."""
    from bentoml.exceptions import NotFound

    full_tag = registry.resolve(tag, production_only=production_only)
    try:
        detector = load_detector(full_tag, device=device)
    except NotFound:
        raise
    except Exception as error:
        raise ModelCheckError(full_tag, f"could not load: {type(error).__name__}: {error}") \
            from error
    verify_detector(detector)
    return detector


# ------------------------------------------------------------------ listing
def _scan(name: str | None) -> tuple[list[Model], list[tuple[Path, str]]]:
    """The store's models (of ``name``, or all) and the folders that are not loadable models,
    with why; BentoML's own listing raises on the first broken one."""
    root = store_dir()
    if name is not None:
        folders = [root / name] if (root / registry.check_name(name)).is_dir() else []
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    models, broken = [], []
    for folder in folders:
        for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                models.append(Model.from_path(entry))
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
        meta = model.info.metadata
        metrics = meta.get("metrics", {})
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
