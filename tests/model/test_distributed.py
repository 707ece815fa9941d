"""Data-parallel training: ``torchrun --nproc_per_node 2 -m pipelines.cli train --distributed``
with two gloo processes on the CPU, against a single-process fit of the same data."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.registry.pointer import production_tag
from pipelines.registry.promotion import promote
from pipelines.registry.store import list_detectors, load_detector

TRAIN = ["--exclude", "id", "--members", "2", "--max-epochs", "12", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 4000
    a = rng.normal(size=n)
    frame = pd.DataFrame({"id": np.arange(n), "a": 3 * a, "b": a**2 + 0.5 * rng.normal(size=n),
                          "c": np.exp(0.5 * rng.normal(size=n)), "d": rng.poisson(4, size=n)})
    path = tmp_path_factory.mktemp("data") / "train.parquet"
    frame.to_parquet(path)
    return path


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_and_save_one_version(data):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipelines.cli", "--threads", "1", "train", str(data), "--name", "ddp",
         *TRAIN, "--distributed"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [row["tag"] for row in list_detectors("ddp")] == [run.stdout.strip()]

    single = CliRunner().invoke(app, ["train", str(data), "--name", "single", *TRAIN])
    assert single.exit_code == 0, single.output
    distributed = load_detector(run.stdout.strip()).metrics_
    alone = load_detector(single.stdout.strip().splitlines()[-1]).metrics_
    # the same split of the same rows: both validation NLLs are on the same records
    assert distributed["n_validation"] == alone["n_validation"]
    assert abs(distributed["val_nll"] - alone["val_nll"]) <= 0.02 * abs(alone["val_nll"]), (
        distributed["val_nll"], alone["val_nll"])


@pytest.mark.slow
def test_a_distributed_retrain_saves_one_candidate_and_writes_one_report(data, tmp_path):
    """``retrain --distributed``: both ranks train the candidate, rank 0 alone saves, compares,
    promotes and reports; the exit status is the gate's (0 promoted, 3 rejected)."""

    first = CliRunner().invoke(app, ["train", str(data), "--name", "ddp-retrain", *TRAIN])
    assert first.exit_code == 0, first.output
    production = first.stdout.strip().splitlines()[-1]
    promote(production)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipelines.cli", "--threads", "1", "retrain", str(data), "--name", "ddp-retrain",
         "--report", str(report), "--distributed"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode in (0, 3), run.stderr[-3000:]
    decision = json.loads(report.read_text())
    tags = [row["tag"] for row in list_detectors("ddp-retrain")]
    assert sorted(tags) == sorted([production, decision["candidate_tag"]])  # one candidate
    assert run.stdout.count("PROMOTED") + run.stdout.count("REJECTED") == 1  # one decision
    assert production_tag("ddp-retrain") == (
        decision["candidate_tag"] if run.returncode == 0 else production)
