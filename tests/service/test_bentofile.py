"""``bentoml build`` of bentofile.yaml works offline (uv installed, lock_packages: false)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_bentoml_build_offline(tmp_path):
    bentoml_bin = Path(sys.executable).with_name("bentoml")
    if shutil.which("uv", path=f"{bentoml_bin.parent}:{os.environ.get('PATH', '')}") is None:
        pytest.skip("bentoml build needs uv")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true",
           "PATH": f"{bentoml_bin.parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run([str(bentoml_bin), "build", "--output", "tag"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    built = list((tmp_path / "home" / "bentos" / "flowad").glob("*/src/service/service.py"))
    assert built, "the bento does not contain the service source"
