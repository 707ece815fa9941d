"""``import flowad``: pipelines' public API under the distribution's name, without torch."""

import subprocess
import sys

from conftest import REPO

import flowad
import pipelines


def test_flowad_exports_the_objects_of_pipelines() -> None:
    assert flowad.__all__ == pipelines.__all__
    for name in flowad.__all__:
        assert getattr(flowad, name) is getattr(pipelines, name), name


def test_importing_flowad_imports_neither_torch_nor_scikit_learn() -> None:
    code = "import sys, flowad; print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
