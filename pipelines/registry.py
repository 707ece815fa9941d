"""Which saved detector is in production: a JSON pointer file beside the model store.

BentoML 1.4's model store has no aliases and no safe way to update a saved model's labels
(``model.yaml`` is rewritten in place without a lock), so the production pointer lives outside
``models/``: ``$BENTOML_HOME/flowad/production/<name>.json`` holding the current tag and the
promotion history. Writers take an exclusive file lock and replace the file atomically (temp
file + ``os.replace``), so readers always see a complete pointer and never lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml


def registry_dir() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get()) / "flowad" / "production"


def pointer_path(name: str) -> Path:
    return registry_dir() / f"{name}.json"


def read_pointer(name: str) -> dict[str, Any] | None:
    """The pointer of model ``name``: ``{"name", "tag", "history": [...]}``, or None."""
    try:
        return json.loads(pointer_path(name).read_text())
    except FileNotFoundError:
        return None


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


def promote(tag: str, *, reason: str = "manual") -> dict[str, Any]:
    """Makes ``tag`` the production model of its name; returns the new pointer.

    The tag must exist in the store (a typo must not take production down).
    """
    model = bentoml.models.get(tag)  # raises NotFound for an unknown tag
    name, full_tag = model.tag.name, str(model.tag)
    with _locked(name):
        pointer = read_pointer(name) or {"name": name, "tag": None, "history": []}
        pointer["history"].append({
            "tag": full_tag,
            "previous": pointer["tag"],
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": reason,
        })
        pointer["tag"] = full_tag
        fd, temp = tempfile.mkstemp(dir=registry_dir(), prefix=f".{name}.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(pointer, f, indent=2)
        os.replace(temp, pointer_path(name))
    return pointer


def resolve(name_or_tag: str) -> str:
    """A full tag for ``name`` (production, else newest), ``name:latest`` or ``name:version``."""
    name, _, version = name_or_tag.partition(":")
    if not version or version == "production":
        tag = production_tag(name)
        if tag is not None:
            return tag
        version = "latest"
    return str(bentoml.models.get(f"{name}:{version}").tag)
