"""Which saved detector is in production: a JSON pointer file beside the model store, and what
a model name stands for (:func:`resolve`).

BentoML 1.4's model store has no aliases and no safe way to update a saved model's labels
(``model.yaml`` is rewritten in place without a lock), so the production pointer lives outside
``models/``: ``$BENTOML_HOME/flowad/production/<name>.json`` holding the current tag and the
promotion history. Writers take an exclusive file lock (:func:`locked`) and replace the file
atomically (:func:`write_pointer`: temp file + ``os.replace``), so readers always see a
complete pointer and never lock. When it may move is :mod:`pipelines.registry.promotion`'s.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.errors import DamagedPointerError, NoProductionModel
from pipelines.io.processes import owner_is_gone, owner_tag
from pipelines.registry.bentoml_store import bentoml_home, get_model, store_dir
from pipelines.registry.names import check_name


def registry_dir() -> Path:
    """The folder of the production pointers."""
    return bentoml_home() / "flowad" / "production"


def pointer_path(name: str) -> Path:
    """The production pointer file of model ``name`` (checked: :func:`check_name`)."""
    return registry_dir() / f"{check_name(name)}.json"


def read_pointer(name: str) -> dict[str, Any] | None:
    """The pointer of model ``name``: ``{"name", "tag", "history": [...]}``, or None.

    Raises:
        DamagedPointerError: the file is empty, not JSON, not a pointer, or not a file.
    """
    path = pointer_path(name)
    try:
        pointer = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # a directory, garbage, a cut-off write
        raise DamagedPointerError(name, str(path), f"{type(error).__name__}: {error}") from None
    if not (isinstance(pointer, dict) and isinstance(pointer.get("tag"), str)
            and isinstance(pointer.get("history", []), list)):
        raise DamagedPointerError(name, str(path), "not a pointer (no tag)")
    return pointer


def production_tag(name: str) -> str | None:
    """The production tag of model ``name``, or None if none was ever promoted."""
    pointer = read_pointer(name)
    return pointer["tag"] if pointer else None


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Holds the exclusive lock of model ``name``'s pointer (writers only)."""
    registry_dir().mkdir(parents=True, exist_ok=True)
    with open(registry_dir() / f".{check_name(name)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_pointer(name: str, pointer: dict[str, Any]) -> None:
    """Replaces model ``name``'s pointer file atomically (call it under :func:`locked`).

    A temporary file of a writer killed mid-write is removed by the next one; on an error (a
    full disk) the pointer stays as it was, and no temporary file.

    Arguments:
        name: the model name.
        pointer: the new pointer.
    """
    prefix = f".{name}."
    for stale in registry_dir().glob(f"{prefix}*.json"):
        if owner_is_gone(stale.name, prefix):
            stale.unlink(missing_ok=True)
    fd, temp = tempfile.mkstemp(dir=registry_dir(), prefix=f"{prefix}{owner_tag()}-",
                                suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(pointer, f, indent=2)
        os.replace(temp, pointer_path(name))
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def near_miss_names(name: str) -> list[str]:
    """Saved or promoted model names equal to ``name`` but for case (a common FLOWAD_MODEL typo)."""
    folders = [store_dir(), registry_dir()]
    names = {p.name.removesuffix(".json") for folder in folders if folder.is_dir()
             for p in folder.iterdir() if not p.name.startswith(".")}
    return sorted(n for n in names if n.lower() == name.lower() and n != name)


def resolve(name_or_tag: str, *, production_only: bool = False) -> str:
    """The full tag that ``name_or_tag`` stands for.

    Arguments:
        name_or_tag: ``name:version`` or ``name:latest`` (pinned), or a bare ``name`` (or
            ``name:production``): its production model.
        production_only: a bare name with no production model raises
            :class:`~pipelines.errors.NoProductionModel` instead of falling back to the newest
            version, which may be a candidate the retrain gate rejected. Services must pass
            True.

    Raises:
        ModelNameError: not a model name.
        NoProductionModel: as said above.
        ModelNotFoundError: no such version.
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
            raise NoProductionModel(name, near_miss_names(name))
        version = "latest"  # library use: the newest version
    return str(get_model(f"{name}:{version}").tag)
