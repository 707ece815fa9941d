"""A lever for issue 19: the default two-flow mixture with its second flow trained on
Gaussian-smoothed rows, an exact equal mixture of a sharp and a smoothed density.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/sigma_mixture.py SIGMA OUTPUT_DIR``
(the one-class protocol on ``../shared/data/adbench``, one thread; ~4 min on one core).

The second flow of each fit gets ``noise_std = SIGMA`` (encoded units) through a wrapper of the
``dataclasses.replace`` that ``Detector.fit`` gives each member's training config: an experiment,
not an option of the product. Results: ``results/levers/smoothing/``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

import pipelines.model.detector as detector_module
from pipelines.evaluation.benchmark import run_benchmark

DATA = Path(__file__).resolve().parents[2] / "shared/data/adbench"


def with_second_member_sigma(sigma: float) -> None:
    """Makes ``Detector.fit`` train its second mixture member on rows smoothed by ``sigma``
    (it trains member 0, then member 1, each with a ``replace``d config).

    Arguments:
        sigma: the Gaussian noise's standard deviation, in encoded units.
    """
    calls = 0

    def member_config(config: Any, **changes: Any) -> Any:
        nonlocal calls
        calls += 1
        noise = sigma if calls % 2 == 0 else 0.0
        return dataclasses.replace(config, noise_std=noise, **changes)

    detector_module.replace = member_config


def main() -> None:
    sigma, output = float(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    with_second_member_sigma(sigma)
    run_benchmark(DATA, output)


if __name__ == "__main__":
    main()
