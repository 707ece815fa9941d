"""What docs/design.md says about the service's code, read from that code: the detector's
surface the service uses, and where BentoML's private modules are imported."""

import ast
import re
from pathlib import Path

from conftest import REPO

SERVICE = REPO / "service"
PRIVATE_BENTOML = ("bentoml._internal", "_bentoml_impl", "_bentoml_sdk")
FITTED_PARTS = {"encoder_", "flow_", "calibrator_"}


def modules() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted(SERVICE.glob("*.py"))}


def documented_surface() -> set[str]:
    """The names docs/design.md lists as the detector's surface the service reaches."""
    text = " ".join((REPO / "docs" / "design.md").read_text().split())
    listed = re.search(r"through its public surface only \((.*?)\), never its fitted parts", text)
    assert listed, "docs/design.md no longer lists the detector's surface the service uses"
    return set(re.findall(r"`([A-Za-z_]+)`", listed.group(1)))


def test_the_service_uses_the_detector_surface_the_design_lists():
    used: set[str] = set()
    for tree in modules().values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "detector") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "detector"):
                used.add(node.attr)
            assert node.attr not in FITTED_PARTS, ast.unparse(node)
    assert used == documented_surface()


def test_private_bentoml_modules_are_imported_in_one_adapter_only():
    importers = set()
    for path, tree in modules().items():
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.startswith(PRIVATE_BENTOML) for name in names):
                importers.add(path.name)
    assert importers == {"bentoml_compat.py"}
