"""Which saved detector is in production: a JSON pointer file beside the model store.

BentoML 1.4's model store has no aliases and no safe way to update a saved model's labels
(``model.yaml`` is rewritten in place without a lock), so the production pointer lives outside
``models/``: ``$BENTOML_HOME/flowad/production/<name>.json`` holding the current tag and the
promotion history. Writers take an exclusive file lock and replace the file atomically (temp
file + ``os.replace``), so readers always see a complete pointer and never lock.

A model must prove itself before the pointer moves to it: :func:`promote` loads it and checks
that its weights are finite and that it reproduces the scores saved with it
(:func:`pipelines.store.verify_detector`).

A model name becomes a file name here and a folder name in the store, so every name that
arrives from outside (a CLI tag, ``FLOWAD_MODEL``, a library call) passes :func:`check_name`
before it is joined to a path: ``../../x`` never reads a file outside the store.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.tag import validate_tag_str
from bentoml.exceptions import NotFound

from pipelines.processes import owner_is_gone, owner_tag


class NoProductionModel(NotFound):
    """A bare model name was asked for its production model and none was promoted."""

    def __init__(self, name: str) -> None:
        message = (f"no production model for {name}; promote one with "
                   f"`flowad promote {name}:VERSION`")
        near = near_miss_names(name)
        if near:
            message += f" (names differing only in case: {', '.join(near)})"
        super().__init__(message)
        self.name = name


class ModelNameError(ValueError):
    """A model name that BentoML would not store: checked before it becomes part of a path."""


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a model name in BentoML's rule (letters, digits, ``_ - .``, starting
    and ending with a letter or digit, at most 63 characters; BentoML stores it in lower
    case): never a path, never ``..``."""
    try:
        validate_tag_str(name.lower())
    except ValueError:
        return False
    return True


def check_name(name: str) -> str:
    """``name``, if it is a model name (:func:`is_model_name`).

    Raises:
        ModelNameError: naming it (cut to 60 characters), and the rule.
    """
    if not is_model_name(name):
        from pipelines.schema import shown

        raise ModelNameError(f"{shown(name)} is not a model name: letters, digits, '_', '-' "
                               "and '.', starting and ending with a letter or digit, at most "
                               "63 characters")
    return name


def registry_dir() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get()) / "flowad" / "production"


def near_miss_names(name: str) -> list[str]:
    """Saved or promoted model names equal to ``name`` but for case (a common FLOWAD_MODEL typo)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    folders = [Path(BentoMLContainer.model_store_dir.get()), registry_dir()]
    names = {p.name.removesuffix(".json") for folder in folders if folder.is_dir()
             for p in folder.iterdir() if not p.name.startswith(".")}
    return sorted(n for n in names if n.lower() == name.lower() and n != name)


def pointer_path(name: str) -> Path:
    """The production pointer file of model ``name`` (checked: :func:`check_name`)."""
    return registry_dir() / f"{check_name(name)}.json"


class DamagedPointerError(ValueError):
    """A production pointer file that cannot be read: promoting a tag rewrites it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"the production pointer of {name} ({pointer_path(name)}) is damaged: "
                         f"{problem}; `flowad promote {name}:VERSION` rewrites it")
        self.name = name


def read_pointer(name: str) -> dict[str, Any] | None:
    """The pointer of model ``name``: ``{"name", "tag", "history": [...]}``, or None.

    Raises:
        DamagedPointerError: the file is empty, not JSON, not a pointer, or not a file.
    """
    try:
        pointer = json.loads(pointer_path(name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # a directory, garbage, a cut-off write
        raise DamagedPointerError(name, f"{type(error).__name__}: {error}") from None
    if not (isinstance(pointer, dict) and isinstance(pointer.get("tag"), str)
            and isinstance(pointer.get("history", []), list)):
        raise DamagedPointerError(name, "not a pointer (no tag)")
    return pointer


def production_tag(name: str) -> str | None:
    """The production tag of model ``name``, or None if none was ever promoted."""
    pointer = read_pointer(name)
    return pointer["tag"] if pointer else None


@contextmanager
def _locked(name: str) -> Iterator[None]:
    registry_dir().mkdir(parents=True, exist_ok=True)
    with open(registry_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ProductionChanged(RuntimeError):  # noqa: N818 (a state, like NotFound)
    """The production model changed since the caller compared against it."""


def promote(tag: str, *, reason: str = "manual", replacing: str | None = None) -> dict[str, Any]:
    """Makes ``tag`` the production model of its name; returns the new pointer.

    The tag must exist in the store (a typo must not take production down), and the model must
    load and pass :func:`pipelines.store.verify_detector`; otherwise
    :class:`~pipelines.store.ModelCheckError` names the tag and what failed, and the pointer
    stays where it was.

    Arguments:
        tag: ``name:version``.
        reason: recorded in the pointer's history.
        replacing: promote only if production is still this tag (checked under the lock):
            a retrain compared its candidate with it, and a rollback or another retrain that
            moved the pointer meanwhile must not be overwritten (:class:`ProductionChanged`).
    """
    name, _, version = tag.partition(":")
    check_name(name)
    if version in ("", "latest"):
        raise ValueError(f"promote needs name:version, got {tag!r}: the newest version may be "
                         "a candidate the retrain gate rejected (`flowad models "
                         f"{name}` lists the versions)")
    model = bentoml.models.get(tag)  # raises NotFound for an unknown tag
    name, full_tag = model.tag.name, str(model.tag)
    _check(full_tag)
    with _locked(name):
        try:
            pointer = read_pointer(name) or {"name": name, "tag": None, "history": []}
        except DamagedPointerError as damaged:  # promoting is how it is repaired
            pointer = {"name": name, "tag": None, "history": [], "repaired": str(damaged)}
            if pointer_path(name).is_dir():  # in flowad's own folder: nothing else lives there
                shutil.rmtree(pointer_path(name))
        if replacing is not None and pointer["tag"] != replacing:
            raise ProductionChanged(f"production of {name} is now {pointer['tag']}, not "
                                    f"{replacing}, which {full_tag} was compared with")
        pointer["history"].append({
            "tag": full_tag,
            "previous": pointer["tag"],
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": reason,
        })
        pointer["tag"] = full_tag
        prefix = f".{name}."
        for stale in registry_dir().glob(f"{prefix}*.json"):  # of a promote killed mid-write
            if owner_is_gone(stale.name, prefix):
                stale.unlink(missing_ok=True)
        fd, temp = tempfile.mkstemp(dir=registry_dir(), prefix=f"{prefix}{owner_tag()}-",
                                    suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(pointer, f, indent=2)
            os.replace(temp, pointer_path(name))
        except BaseException:  # a full disk: the pointer stays as it was, and no temp file
            Path(temp).unlink(missing_ok=True)
            raise
    return pointer


def _check(tag: str) -> None:
    """Loads ``tag`` on the CPU and verifies it; raises ModelCheckError saying why not."""
    from pipelines.store import ModelCheckError, load_verified  # store imports this module

    try:
        load_verified(tag, device="cpu")
    except ModelCheckError as error:
        raise ModelCheckError(tag, error.problem, action="refusing to promote") from error


def resolve(name_or_tag: str, *, production_only: bool = False) -> str:
    """The full tag that ``name_or_tag`` stands for.

    Arguments:
        name_or_tag: ``name:version`` or ``name:latest`` (pinned), or a bare ``name`` (or
            ``name:production``): its production model.
        production_only: a bare name with no production model raises
            :class:`NoProductionModel` instead of falling back to the newest version, which may
            be a candidate the retrain gate rejected. Services must pass True.
    """
    name, _, version = name_or_tag.partition(":")
    check_name(name)
    if not version or version == "production":
        tag = production_tag(name)
        if tag is not None:
            return tag
        # BentoML stores names in lower case: "Det" would find det's newest version, while
        # the pointer it missed names det's production one
        if production_only or version == "production" or name != name.lower():
            raise NoProductionModel(name)
        version = "latest"  # library use: the newest version
    return str(bentoml.models.get(f"{name}:{version}").tag)
