"""Model names: a name becomes a file name beside the store and a folder name in it, so every
name that arrives from outside (a CLI tag, ``FLOWAD_MODEL``, a library call) is checked before
it is joined to a path: ``../../x`` never reads a file outside the store.
"""

from __future__ import annotations

from pipelines.errors import ModelNameError, shown
from pipelines.registry.bentoml_store import is_valid_name


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a model name in BentoML's rule (letters, digits, ``_ - .``, starting
    and ending with a letter or digit, at most 63 characters; BentoML stores it in lower
    case): never a path, never ``..``.

    Arguments:
        name: the name.
    """
    return is_valid_name(name)


def check_name(name: str) -> str:
    """``name``, if it is a model name (:func:`is_model_name`).

    Arguments:
        name: the name.

    Raises:
        ModelNameError: naming it (cut to 60 characters), and the rule.
    """
    if not is_model_name(name):
        raise ModelNameError(f"{shown(name)} is not a model name: letters, digits, '_', '-' "
                             "and '.', starting and ending with a letter or digit, at most 63 "
                             "characters")
    return name
