"""``flowad models`` as a cron job's log and a terminal see it: real processes, stdout a file or
a pseudo-terminal."""

import json
import os
import pty
import subprocess
import sys

import pytest

from pipelines.registry.store import save_detector

NAME = "nightly-transactions-fraud-detector-eu-west"  # a long name, as real ones are
HEADER = ["tag", "production", "created", "kind", "target FPR", "threshold", "val NLL",
          "train rows"]


@pytest.fixture(scope="module")
def listed(trained):
    """A saved model with a long name, and what ``flowad models --json`` says of it."""
    tag = save_detector(trained[0], NAME)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", NAME, "--json"],
                          capture_output=True, text=True, check=True)
    (row,) = json.loads(done.stdout)
    assert row["tag"] == tag
    return row


def test_models_into_a_file_prints_every_value_whole(listed, tmp_path):
    """Piped to a file, rich cut the table to 80 columns: the tag read 'nightly-tr…'."""
    out = tmp_path / "models.log"
    with open(out, "w") as log:
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", NAME],
                              stdout=log, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    header, row = [line.split("\t") for line in out.read_text().splitlines()]
    assert header == HEADER
    assert row == [listed["tag"], "", listed["created"], listed["model_kind"],
                   f"{listed['target_fpr']:.4f}", f"{listed['threshold']:.4f}",
                   f"{listed['val_nll']:.4f}", str(listed["n_train"])]


def test_models_on_a_narrow_terminal_wraps_values_rather_than_cutting_them(listed):
    controller, terminal = pty.openpty()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", NAME],
                          stdout=terminal, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "COLUMNS": "60", "TERM": "dumb"})
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal's other end is closed: all read
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert done.returncode == 0, done.stderr
    text = shown.decode()
    assert "…" not in text
    cells = [line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 2]
    assert "".join(cells) == listed["tag"]  # the tag column, folded over lines (header: ┃)
