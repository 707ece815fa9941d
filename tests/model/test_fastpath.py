"""pipelines.model.fastpath: the NumPy RealNVP evaluator matches torch, and is built only for
the flows it mirrors (how the detector uses it: tests/model/test_evaluators.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from flowmodels import FFJORD, FlowMixture, RealNVP
from pipelines.model.fastpath import SMALL_BATCH_ROWS, FastRealNVP

# float64 NumPy against torch's float32: torch's own rounding (its output alone is quantised
# to 7.6e-6 at |log p| ~ 100; a record's torch score moves that much between batch sizes).
ATOL, RTOL = 1e-5, 1e-6


def random_flow(dim: int, members: int, seed: int, **options: object) -> RealNVP | FlowMixture:
    """A flow with random weights everywhere (the output layers start at zero), ActNorm
    initialised on data, in eval mode."""
    torch.manual_seed(seed)
    flows = [RealNVP(dim, **options) for _ in range(members)]  # type: ignore[arg-type]
    flow = FlowMixture(flows) if members > 1 else flows[0]
    with torch.no_grad():
        flow.train()
        for member in flows:
            member.inverse(torch.randn(256, dim) * 2 + 1)  # ActNorm's data initialisation
            for parameter in member.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return flow.eval()


def torch_log_prob(flow: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return flow.log_prob(torch.as_tensor(x)).double().numpy()


@pytest.mark.parametrize(
    ("dim", "members", "options"),
    [
        (11, 1, {}),
        (11, 3, {}),
        (1, 1, {"n_layers": 3, "activation": "relu"}),
        (2, 2, {"n_layers": 2, "hidden": 16, "activation": "tanh", "actnorm": False}),
        (7, 3, {"n_layers": 4, "depth": 1, "activation": "silu", "base": "student"}),
        (30, 2, {"n_layers": 6, "hidden": 64, "depth": 3, "log_scale_bound": 2.0}),
        (5, 1, {"n_layers": 5, "activation": "relu", "base": "student", "actnorm": False}),
    ],
)
def test_numpy_log_prob_matches_torch(dim: int, members: int, options: dict[str, object]) -> None:
    flow = random_flow(dim, members, seed=dim + members, **options)
    fast = FastRealNVP.build(flow)
    assert fast is not None
    rng = np.random.default_rng(dim)
    near = rng.normal(0, 1.5, (SMALL_BATCH_ROWS, dim)).astype(np.float32)
    far = (rng.normal(0, 1, (4, dim)) * [[30], [1e3], [1e5], [1e6]]).astype(np.float32)
    exact = copy.deepcopy(flow).double()  # the same function in float64
    for x in (near, far, near[:1], far[3:]):
        got = fast.log_prob(x)
        np.testing.assert_allclose(got, torch_log_prob(exact, x.astype(np.float64)), rtol=1e-9)
        # Against torch's own float32 evaluation: ATOL + RTOL near the data; far out (log p
        # of -1e6 to -1e22) float32 rounding of torch alone moves it by up to ~1e-5 relative.
        rtol = RTOL if x is near or x.base is near else 1e-4
        np.testing.assert_allclose(got, torch_log_prob(flow, x), rtol=rtol, atol=ATOL)


def test_unsupported_flows_are_left_to_torch() -> None:
    assert FastRealNVP.build(FFJORD(3)) is None
    mixed = FlowMixture([RealNVP(3, hidden=8), RealNVP(3, hidden=16)])
    assert FastRealNVP.build(mixed) is None
    wrapped = RealNVP(3)
    wrapped.log_prob = lambda x: torch.zeros(len(x))  # type: ignore[method-assign]
    assert FastRealNVP.build(wrapped) is None

    class Subclass(RealNVP):
        pass

    assert FastRealNVP.build(Subclass(3)) is None
