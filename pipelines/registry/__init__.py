"""The model store and its production pointers: saving and loading detectors, model names,
the check a model passes before it is promoted or served, promotion, and the retrain gate.
The only pipelines package that imports BentoML (:mod:`pipelines.registry.bentoml_store`).

Its public functions are importable from here (``from pipelines import registry``), on first
use (PEP 562): importing one module of the package loads no other.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.registry.names import check_name, is_model_name
    from pipelines.registry.pointer import pointer_path, production_tag, read_pointer, resolve
    from pipelines.registry.promotion import promote
    from pipelines.registry.store import list_detectors, load_detector, save_detector
    from pipelines.registry.verify import load_verified, verify_detector

_HOMES = {"check_name": "names", "is_model_name": "names", "pointer_path": "pointer",
          "production_tag": "pointer", "read_pointer": "pointer", "resolve": "pointer",
          "promote": "promotion", "list_detectors": "store", "load_detector": "store",
          "save_detector": "store", "load_verified": "verify", "verify_detector": "verify"}

__all__ = ["check_name", "is_model_name", "list_detectors", "load_detector", "load_verified",
           "pointer_path", "production_tag", "promote", "read_pointer", "resolve",
           "save_detector", "verify_detector"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"pipelines.registry.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'pipelines.registry' has no attribute {name!r}")
