"""Test environment: BentoML and Prometheus state in temp dirs, set before anything imports them."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

_TMP = Path(tempfile.mkdtemp(prefix="flowad-tests-"))
os.environ["BENTOML_HOME"] = str(_TMP / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_TMP / "prometheus"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

# One thread per process: with two, any other busy process makes OpenMP spin-waiting collapse
# throughput 10-45x on these 2-core machines (docs/design.md, "Measuring").
torch.set_num_threads(1)

from pipelines import Detector  # noqa: E402 - after BENTOML_HOME is set

REPO = Path(__file__).resolve().parents[1]
ADBENCH = REPO.parent / "shared" / "data" / "adbench"


def mixed_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Normal records with every column kind: continuous, counts, binary, categorical, bool,
    a column with missing values and an id."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    frame = pd.DataFrame({
        "id": np.arange(n),
        "amount": np.exp(1 + 0.5 * x + 0.3 * rng.normal(size=n)),
        "ratio": np.tanh(x) + 0.2 * rng.normal(size=n),
        "count": rng.poisson(3 + 2 * (x > 0)),
        "flag": (rng.random(n) < 0.3).astype(int),
        "weekend": rng.random(n) < 0.25,
        "channel": rng.choice(["web", "app", "store"], size=n, p=[0.5, 0.3, 0.2]),
        "age": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 10.0, n)),
    })
    return frame


# Training options of the small detectors the tests fit: a few seconds each on these machines.
FAST = {"max_epochs": 15, "patience": 5}


@pytest.fixture(scope="session")
def trained() -> tuple[Detector, pd.DataFrame]:
    """The one small default detector (two RealNVPs, target FPR 5%, ``FAST``) fitted on 3000
    mixed records, and those records: for every test that needs some fitted detector. Tests
    that change it work on a copy (``copy.deepcopy``); tests that need another configuration
    fit their own."""
    train = mixed_frame(3000, seed=0)
    return Detector(target_fpr=0.05, exclude=["id"], train_options=FAST).fit(train), train


def corrupt_weights(tag: str) -> bytes:
    """Overwrites a saved model's weights with NaN (as a bad disk or a bad training run would);
    returns the original bytes."""
    import bentoml

    path = Path(bentoml.models.get(tag).path_of("flow.pt"))
    original = path.read_bytes()
    state = torch.load(path, weights_only=True)
    torch.save({k: v.fill_(float("nan")) if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in state.items()}, path)
    return original


@pytest.fixture
def adbench_dir() -> Path:
    if not ADBENCH.is_dir():
        pytest.skip(f"benchmark data not found at {ADBENCH}")
    return ADBENCH


def mass_on_grid(log_prob, half_width: float = 12.0, points: int = 1201) -> float:
    """Riemann sum of ``exp(log_prob)`` over the square ``[-half_width, half_width]^2``."""
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        density = log_prob(torch.stack([xx.ravel(), yy.ravel()], dim=1)).exp()
    return float(density.sum() * (grid[1] - grid[0]) ** 2)
