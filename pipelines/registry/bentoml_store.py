"""Every use of BentoML's model store, behind one adapter: the public ``bentoml.models`` API,
and the private parts flowad needs that it does not offer (checked with BentoML 1.4.40).

Private imports, and why: ``BentoMLContainer`` gives the store's folder and ``BENTOML_HOME``
(the production pointers and staging folders live beside the store); ``ModelStore`` builds an
entry in a staging store, renamed into the real one when complete (BentoML's own save leaves
an empty version folder when killed half-way); ``Model.from_path`` reads one entry, where
BentoML's listing raises on the first broken one; ``validate_tag_str`` is BentoML's rule for a
model name. BentoML errors leave this module as flowad's (:mod:`pipelines.errors`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models.model import Model, ModelStore
from bentoml._internal.tag import Tag, validate_tag_str
from bentoml.exceptions import BentoMLException, NotFound

from pipelines.errors import InputError, ModelNotFoundError, shown

__all__ = ["Model", "Tag", "bentoml_home", "bentoml_version", "create_model", "get_model",
           "is_valid_name", "model_from_path", "store_dir"]


def bentoml_home() -> Path:
    """``$BENTOML_HOME``."""
    return Path(BentoMLContainer.bentoml_home.get())


def store_dir() -> Path:
    """The model store's folder (``$BENTOML_HOME/models``)."""
    return Path(BentoMLContainer.model_store_dir.get())


def bentoml_version() -> str:
    return str(bentoml.__version__)


def is_valid_name(name: str) -> bool:
    """Whether BentoML stores ``name`` as a model name (its rule, on the lower-cased name)."""
    try:
        validate_tag_str(name.lower())
    except ValueError:
        return False
    return True


def get_model(tag: str) -> Model:
    """The store's entry of ``tag`` (``name:version`` or ``name:latest``).

    Raises:
        ModelNotFoundError: no such entry.
        InputError: ``tag`` is not a tag.
    """
    try:
        parsed = Tag.from_taglike(tag)
    except (ValueError, BentoMLException) as error:
        raise InputError(f"{shown(tag)} is not a model tag (name:version): {error}") from None
    try:
        return bentoml.models.get(parsed)
    except NotFound as error:
        raise ModelNotFoundError(str(error)) from None


def model_from_path(path: Path) -> Model:
    """One entry of the store, read from its folder (raises whatever is wrong with it)."""
    return Model.from_path(path)


@contextmanager
def create_model(name: str, *, labels: dict[str, str], metadata: dict[str, Any],
                 store: Path) -> Iterator[Any]:
    """A new version of ``name`` in the staging store ``store`` (BentoML's model context:
    write its files under ``.path``, read ``.tag`` after).

    Arguments:
        name: the model name.
        labels: BentoML labels.
        metadata: JSON-safe metadata.
        store: the staging store's ``models`` folder.
    """
    with bentoml.models.create(name, module="flowad", labels=labels, metadata=metadata,
                               _model_store=ModelStore(store)) as ref:
        yield ref
