"""FlowMixture: an equal-weight mixture of flows is still an exact, normalised density."""

import math

import pytest
import torch
from conftest import mass_on_grid

from flowmodels import FlowMixture, RealNVP, build_flow


def make_mixture(dim: int, members: int = 3) -> FlowMixture:
    torch.manual_seed(0)
    flows = []
    for _ in range(members):
        flow = RealNVP(dim, n_layers=4, hidden=16).double()
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.1 * torch.randn_like(p))
        flow.log_prob(torch.randn(256, dim, dtype=torch.float64))  # data-initialises ActNorm
        flows.append(flow.eval())
    return FlowMixture(flows).eval()


def test_log_prob_is_the_log_of_the_mean_component_density():
    mixture = make_mixture(3)
    x = torch.randn(50, 3, dtype=torch.float64)
    # Independently: average the densities themselves, in float64 (they are not tiny here).
    densities = torch.stack([flow.log_prob(x).exp() for flow in mixture.components])
    expected = densities.mean(dim=0).log()
    torch.testing.assert_close(mixture.log_prob(x), expected, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_density_integrates_to_one_on_a_grid():
    assert mass_on_grid(make_mixture(2).log_prob) == pytest.approx(1.0, abs=0.01)


def test_samples_come_from_every_component_and_have_the_right_shape():
    mixture = make_mixture(2)
    torch.manual_seed(1)
    samples = mixture.sample(3000)
    assert samples.shape == (3000, 2) and torch.isfinite(samples).all()
    # Each sample is an exact draw of some component: its component log-densities are finite.
    assert torch.isfinite(mixture.log_prob(samples)).all()


def test_sampling_from_a_generator_repeats_and_leaves_the_global_rng_alone():
    mixture = make_mixture(2)
    state = torch.get_rng_state()
    first = mixture.sample(500, torch.Generator().manual_seed(3))
    second = mixture.sample(500, torch.Generator().manual_seed(3))
    assert torch.equal(first, second) and torch.equal(torch.get_rng_state(), state)


def test_build_flow_members_and_state_dict_roundtrip():
    torch.manual_seed(0)
    mixture = build_flow("realnvp", 4, members=3, n_layers=2, hidden=8)
    assert isinstance(mixture, FlowMixture) and len(mixture.components) == 3
    x = torch.randn(20, 4)
    mixture.log_prob(x)  # initialise ActNorm
    torch.manual_seed(99)
    rebuilt = build_flow("realnvp", 4, members=3, n_layers=2, hidden=8)
    rebuilt.load_state_dict(mixture.state_dict())
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval().log_prob(x), mixture.eval().log_prob(x))
    assert isinstance(build_flow("realnvp", 4), RealNVP)


def test_components_must_share_a_dimension():
    with pytest.raises(ValueError, match="dimensions"):
        FlowMixture([RealNVP(2), RealNVP(3)])
    with pytest.raises(ValueError, match="at least one"):
        FlowMixture([])
    single = make_mixture(2, members=1)
    origin = torch.zeros(1, 2, dtype=torch.float64)
    assert math.isclose(single.log_prob(origin).item(),
                        single.components[0].log_prob(origin).item(), abs_tol=1e-12)
