"""Which failures are the user's: an InputError exits 2 with one line; anything else is a bug,
exit 1 with its traceback (pipelines/cli/errors.py). And importing the CLI changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, mixed_frame
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()


def test_a_bug_inside_a_command_is_exit_1_with_its_traceback_not_bad_input(tmp_path,
                                                                              monkeypatch):
    """A ValueError that is no InputError (a bug in numpy, say) used to print as bad input and
    exit 2, which a scheduler reads as "fix your data"."""
    import pipelines.registry.store

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(pipelines.registry.store, "load_detector", broken)
    data = tmp_path / "in.csv"
    mixed_frame(20).to_csv(data, index=False)
    result = runner.invoke(app, ["score", "some-model:v1", str(data), "--output",
                                 str(tmp_path / "out.csv")])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError) and "error: " not in result.stderr


def test_a_bug_in_a_real_process_prints_its_traceback(tmp_path):
    code = ("import sys, pipelines.registry.store as store\n"
            "def broken(*a, **k):\n    raise ValueError('operands could not be broadcast')\n"
            "store.load_detector = broken\n"
            "from pipelines.cli import app\n"
            f"sys.argv = ['flowad', 'score', 'm:v1', {str(tmp_path / 'in.csv')!r}, '--output', "
            f"{str(tmp_path / 'out.csv')!r}]\napp()")
    mixed_frame(20).to_csv(tmp_path / "in.csv", index=False)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: operands could not" in done.stderr


def test_a_missing_input_file_is_bad_input_naming_it(tmp_path):
    missing = tmp_path / "no-such-table.csv"
    result = runner.invoke(app, ["train", str(missing), "--max-epochs", "1"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {missing}: cannot be read: No such file or directory"


def test_an_output_that_cannot_be_written_is_bad_input_naming_it(tmp_path):
    """/proc takes no new files, even from root (who may write where permissions say no)."""
    from pipelines.errors import InputError
    from pipelines.io.writer import TableWriter

    output = "/proc/flowad-test-output.csv"
    try:
        with TableWriter(output) as writer:
            writer.write(mixed_frame(3))
    except InputError as error:
        assert str(error).startswith(f"{output}: cannot write the output: ")
    else:
        raise AssertionError("the write did not fail")


def test_importing_the_cli_leaves_the_environment_as_it_was():
    code = ("import os\nbefore = dict(os.environ)\nimport pipelines.cli\n"
            "print(dict(os.environ) == before)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("BENTOML_DO_NOT_TRACK", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, check=True)
    assert done.stdout.strip() == "True"


def test_a_command_runs_with_tracking_off_and_sleeping_openmp_threads(tmp_path):
    """The app's callback sets what importing the CLI no longer does, before a command runs."""
    code = ("import os, sys\nimport pipelines.registry.store as store\n"
            "def listing(*a, **k):\n"
            "    print(os.environ.get('BENTOML_DO_NOT_TRACK'), os.environ.get('OMP_WAIT_POLICY'))\n"
            "    return []\n"
            "store.list_detectors = listing\n"
            "from pipelines.cli import app\n"
            "sys.argv = ['flowad', 'models']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("BENTOML_DO_NOT_TRACK", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**env, "PYTHONPATH": str(REPO),
                                         "BENTOML_HOME": str(tmp_path)}, timeout=120)
    assert done.stdout.splitlines()[0] == "true PASSIVE", done.stderr
