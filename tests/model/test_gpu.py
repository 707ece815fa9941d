"""CUDA checks; they skip cleanly on machines without a GPU (CI has none).

Run on a GPU machine with ``bash benchmarks/gpu_check.sh``.
"""

import numpy as np
import pytest
import torch
from conftest import mixed_frame

from flowmodels import build_flow
from pipelines import Detector
from pipelines.registry.store import load_detector, save_detector

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize(("kind", "dim"), [("realnvp", 8), ("ffjord", 4)])
def test_exact_log_prob_on_cuda_matches_cpu(kind, dim):
    torch.manual_seed(0)
    model = build_flow(kind, dim).eval()
    x = torch.randn(1024, dim)
    with torch.inference_mode():
        cpu = model.log_prob(x)
        gpu = model.to("cuda").log_prob(x.to("cuda")).cpu()
    assert (cpu - gpu).abs().max() < 1e-3


def test_detector_trains_on_cuda_and_scores_like_its_cpu_copy():
    detector = Detector(exclude=["id"], device="cuda", train_options={"max_epochs": 5})
    detector.fit(mixed_frame(2000, seed=0))
    assert detector.device_.type == "cuda"
    frame = mixed_frame(500, seed=1)
    on_gpu = detector.score_samples(frame)
    on_cpu = load_detector(save_detector(detector, "gpu-test"), device="cpu").score_samples(frame)
    assert np.abs(on_gpu - on_cpu).max() < 1e-3
    assert np.isfinite(on_gpu).all()

