"""The frozen RealNVP scores what the training module scores (within float32 rounding, against
a float64 evaluation of the module), and a row's score does not depend on its batch."""

import copy
import itertools

import pytest
import torch

from flowmodels import FFJORD, FlowMixture, RealNVP
from flowmodels.frozen import MIN_ROWS, FrozenRealNVP


def trained_like(dim: int, members: int = 1, seed: int = 0, **options) -> RealNVP | FlowMixture:
    """Flows whose every weight is non-trivial (a fresh coupling's output layer is zero)."""
    generator = torch.Generator().manual_seed(seed)
    flows = [RealNVP(dim, generator=generator, **options) for _ in range(members)]
    with torch.no_grad():
        for flow in flows:
            for parameter in flow.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    flow = flows[0] if members == 1 else FlowMixture(flows)
    return flow.eval()


def float64_log_prob(flow, x):
    """The module's own evaluation, in float64: rounding far below float32's."""
    with torch.no_grad():
        return copy.deepcopy(flow).double().log_prob(x.double())


CONFIGS = [
    dict(dim=1),
    dict(dim=2, n_layers=2, depth=1, activation="relu"),
    dict(dim=7, n_layers=6, hidden=32, depth=1, activation="relu", members=2),
    dict(dim=7, n_layers=4, hidden=16, depth=2, activation="gelu", actnorm=False),
    dict(dim=9, n_layers=3, hidden=16, depth=2, activation="tanh", base="student"),
    dict(dim=21, n_layers=6, hidden=128, depth=1, activation="relu", members=2),
    dict(dim=5, n_layers=4, hidden=16, depth=1, activation="silu", members=3, base="student"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_the_frozen_flow_scores_what_the_module_scores(config):
    config = dict(config)
    members = config.pop("members", 1)
    flow = trained_like(members=members, **config)
    x = torch.randn(500, config["dim"], generator=torch.Generator().manual_seed(1)) * 2
    frozen = FrozenRealNVP.of(flow)
    expected = float64_log_prob(flow, x)
    got = frozen.log_prob(x)
    assert got.dtype == torch.float32 and got.shape == (500,)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)
    if members > 1:
        per_member = torch.stack([float64_log_prob(member, x) for member in flow.components])
        torch.testing.assert_close(frozen.component_log_probs(x).double(), per_member,
                                   atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dim", [1, 7, 21])
def test_a_rows_score_does_not_depend_on_its_batch(dim):
    """Bit for bit: each row alone, and in batches of every size around the padding and the
    chunk sizes scoring uses, scores as in one batch of all rows."""
    flow = trained_like(dim, members=2, n_layers=6, hidden=64, depth=1, activation="relu")
    frozen = FrozenRealNVP.of(flow)
    x = torch.randn(5000, dim, generator=torch.Generator().manual_seed(2))
    everything = frozen.log_prob(x)
    for size in itertools.chain(range(1, 2 * MIN_ROWS + 2), (31, 64, 100, 1000, 4096)):
        for start in range(0, len(x) - size, 997):
            assert torch.equal(frozen.log_prob(x[start : start + size]),
                               everything[start : start + size]), (size, start)


def test_scoring_leaves_the_input_alone_and_works_in_every_inference_context():
    flow = trained_like(6, members=2, n_layers=4, hidden=16, depth=1, activation="relu")
    frozen = FrozenRealNVP.of(flow)
    x = torch.randn(20, 6)
    before = x.clone()
    plain = frozen.log_prob(x)
    with torch.no_grad():
        assert torch.equal(frozen.log_prob(x), plain)
    with torch.inference_mode():
        assert torch.equal(frozen.log_prob(x), plain)
    assert torch.equal(x, before)


def test_only_plain_realnvps_have_a_frozen_form():
    class Tweaked(RealNVP):
        def log_prob(self, x):
            return super().log_prob(x) + 1.0

    with pytest.raises(TypeError, match="FFJORD"):
        FrozenRealNVP.of(FFJORD(3))
    with pytest.raises(TypeError, match="Tweaked"):
        FrozenRealNVP.of(Tweaked(3))
    with pytest.raises(TypeError, match="Tweaked"):
        FrozenRealNVP.of(FlowMixture([RealNVP(3), Tweaked(3)]))
