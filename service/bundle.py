"""The model a built Bento carries, so that its container image needs no model store beside it.

``bentoml build`` imports the service module; the service then declares the production model
of ``FLOWAD_MODEL`` (resolved through the registry's pointer file at that moment) as a
``bentoml.models.BentoModel``, and BentoML lists it in the Bento's ``bento.yaml`` and ships its
files with the Bento (``bentoml export`` writes them to the archive's ``models/``,
``bentoml containerize`` copies them into the image).

When the service runs from a built Bento (its sources are ``<bento>/src``, beside the
``bento.yaml``), it serves the model that ``bento.yaml`` lists, pinned by version: there is no
pointer file to follow, and BentoML points the model store at the Bento's own ``models/``
(or, after ``bentoml import``, the store holds the model). From the repository
(``bentoml serve .``) nothing is pinned: the service follows the pointer file and hot-swaps
newly promoted models (:mod:`service.follower`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from pipelines import registry
from pipelines.registry.store import MODULE

log = logging.getLogger("flowad.service")
# service/bundle.py -> service/ -> src/ -> the Bento's root, which holds bento.yaml
BENTO_ROOT = Path(__file__).resolve().parents[2]


def running_bento() -> Path | None:
    """The root of the built Bento these sources run from, or None (e.g. the repository)."""
    inside = Path(__file__).resolve().parents[1] == BENTO_ROOT / "src"
    return BENTO_ROOT if inside and (BENTO_ROOT / "bento.yaml").is_file() else None


def bundled_tag(root: Path | None = None) -> str | None:
    """The tag of the flowad model a built Bento carries, from its ``bento.yaml``.

    Arguments:
        root: the Bento's folder (the one holding ``bento.yaml``); default the Bento these
            sources run from, and None is returned outside one.

    Raises:
        ValueError: a Bento that carries no flowad model, or several (one built without a
            production model: serving it could only fail later, with a vaguer message).
    """
    root = root or running_bento()
    if root is None:
        return None
    path = root / "bento.yaml"
    info = yaml.safe_load(path.read_text())
    # BentoML 1.4 lists a service's models under its entry in ``services``; bentofile
    # ``models:`` entries go to the top-level ``models``.
    entries = [*info.get("models", []),
               *(m for service in info.get("services", []) for m in service.get("models", []))]
    tags = sorted({str(m["tag"]) for m in entries if m.get("module") == MODULE})
    if len(tags) != 1:
        raise ValueError(f"{path} lists {len(tags)} flowad models ({', '.join(tags) or 'none'}); "
                         "a Bento must carry exactly one: promote a model, then `bentoml build`")
    return tags[0]


def model_to_bundle(model: str) -> str | None:
    """The full tag a Bento built now would carry for ``FLOWAD_MODEL=model``: the production
    tag of a bare name, the tag itself if pinned; None (with a warning) if there is none.

    Arguments:
        model: a model name or ``name:version``.
    """
    try:
        return registry.resolve(model, production_only=True)
    except Exception as error:  # e.g. a fresh store: the service then fails when it starts
        log.warning("no model to bundle for %r: a Bento built now carries none (%s)", model,
                    error)
        return None
