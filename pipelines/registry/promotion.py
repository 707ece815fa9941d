"""Promotion: a model proves itself, then the production pointer moves to it.

Before the pointer moves (``flowad promote``, the retrain gate), the model must load and pass
:func:`~pipelines.registry.verify.verify_detector` (finite weights, its reference scores
reproduced); a failure is a :class:`~pipelines.errors.ModelCheckError` naming the tag and what
failed, and the pointer stays where it was.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from typing import Any

from pipelines.errors import DamagedPointerError, InputError, ModelCheckError, ProductionChanged
from pipelines.registry.bentoml_store import get_model
from pipelines.registry.names import check_name
from pipelines.registry.pointer import locked, pointer_path, read_pointer, write_pointer
from pipelines.registry.verify import load_verified


def promote(tag: str, *, reason: str = "manual", replacing: str | None = None) -> dict[str, Any]:
    """Makes ``tag`` the production model of its name; returns the new pointer.

    Arguments:
        tag: ``name:version``.
        reason: recorded in the pointer's history.
        replacing: promote only if production is still this tag (checked under the lock):
            a retrain compared its candidate with it, and a rollback or another retrain that
            moved the pointer meanwhile must not be overwritten (:class:`ProductionChanged`).

    Raises:
        InputError: ``tag`` names no version (a bare name, or ``latest``).
        ModelNotFoundError: no such version (a typo must not take production down).
        ModelCheckError: the model fails its check ("refusing to promote TAG: ...").
        ProductionChanged: production is no longer ``replacing``.
    """
    name, _, version = tag.partition(":")
    check_name(name)
    if version in ("", "latest"):
        raise InputError(f"promote needs name:version, got {tag!r}: the newest version may be "
                         "a candidate the retrain gate rejected (`flowad models "
                         f"{name}` lists the versions)")
    model = get_model(tag)
    name, full_tag = model.tag.name, str(model.tag)
    try:
        load_verified(full_tag, device="cpu")
    except ModelCheckError as error:
        raise error.located(action="refusing to promote") from None
    with locked(name):
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
        write_pointer(name, pointer)
    return pointer
