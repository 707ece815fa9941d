"""The dependency direction docs/design.md ("Layers") states, read off every import statement
of the source (at module level, in functions, under TYPE_CHECKING alike)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

# A package of pipelines may import its own modules and those of packages of lower rank only.
RANKS = {"errors": 0, "tabular": 1, "model": 2, "io": 3, "evaluation": 3, "registry": 4,
         "batch": 5, "cli": 6}
STDLIB = sys.stdlib_module_names
FLOWMODELS_MAY_IMPORT = {"torch", "torchdiffeq", "flowmodels"}


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement of a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from pipelines.model import fitting` imports the module pipelines.model.fitting
            found += [(node.lineno, f"{base}.{alias.name}")
                      if _is_module(f"{base}.{alias.name}") else (node.lineno, base)
                      for alias in node.names]
    return found


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def layer(module: str) -> str | None:
    """The pipelines package (``RANKS``' key) of a module of pipelines, or None (the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pipelines" else None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_package_of_pipelines_has_a_rank():
    packages = {path.parent.name if path.parent != REPO / "pipelines" else path.stem
                for path in sources("pipelines")} - {"pipelines", "__init__", "__main__"}
    assert packages == set(RANKS)


@pytest.mark.parametrize("path", sources("pipelines"), ids=lambda p: str(p.relative_to(REPO)))
def test_pipelines_imports_point_down_the_layers(path):
    own = layer(module_name(path))
    for line, module in imports(path):
        target = layer(module)
        assert not module.startswith("service"), f"{path}:{line} imports {module}"
        if own is None or target is None or not module.startswith("pipelines"):
            continue  # the root package's lazy re-exports sit above every layer
        assert target == own or RANKS[target] < RANKS[own], (
            f"{path}:{line}: {own} (rank {RANKS[own]}) imports {module} "
            f"({target}, rank {RANKS[target]})")


@pytest.mark.parametrize("path", sources("pipelines"), ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_registry_imports_bentoml_and_only_its_adapter_the_private_parts(path):
    for line, module in imports(path):
        if module.split(".")[0] != "bentoml":
            continue
        assert layer(module_name(path)) == "registry", f"{path}:{line} imports {module}"
        private = any(part.startswith("_") for part in module.split("."))
        assert not private or path.name == "bentoml_store.py", f"{path}:{line} imports {module}"


@pytest.mark.parametrize("path", sources("pipelines/tabular"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_tabular_never_imports_torch(path):
    assert not [m for _, m in imports(path) if m.split(".")[0] in ("torch", "flowmodels")]


@pytest.mark.parametrize("path", sources("flowmodels"), ids=lambda p: str(p.relative_to(REPO)))
def test_flowmodels_imports_only_torch_torchdiffeq_and_the_standard_library(path):
    for line, module in imports(path):
        top = module.split(".")[0]
        assert top in FLOWMODELS_MAY_IMPORT or top in STDLIB, f"{path}:{line} imports {module}"


@pytest.mark.parametrize("path", sources("flowad"), ids=lambda p: str(p.relative_to(REPO)))
def test_flowad_imports_only_pipelines_and_the_standard_library(path):
    """``flowad`` is the public API's second name: nothing of its own below it."""
    for line, module in imports(path):
        top = module.split(".")[0]
        assert top == "pipelines" or top in STDLIB, f"{path}:{line} imports {module}"


def test_no_import_circle_between_modules():
    """Every import statement counts, a function's too: none may close a circle."""
    graph = {module_name(path): {m for _, m in imports(path) if m.startswith("pipelines.")}
             for path in sources("pipelines")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            assert state.get(target) != 1, " -> ".join([*trail, module, target])
            if target not in state:
                visit(target, [*trail, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_importing_the_tabular_package_loads_no_torch():
    code = ("import sys, pkgutil, importlib, pipelines.tabular as t\n"
            "for m in pkgutil.iter_modules(t.__path__):\n"
            "    importlib.import_module(f'pipelines.tabular.{m.name}')\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert done.stdout.strip() == "False"
