"""Tests for flowcourse.flows: log_prob against torch.distributions, sampling, traces."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import AffineTransform, Normal, TransformedDistribution

from flowcourse.bijections import ActNorm, Affine, AffineCoupling, Planar, Radial, Reverse
from flowcourse.checks import check_bijection, check_normalised, perturbed
from flowcourse.flows import Flow, realnvp, standard_normal

EXAMPLES = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def normal(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def test_standard_normal():
    base = standard_normal(3)
    assert base.event_shape == (3,) and base.batch_shape == ()
    z = torch.randn(5, 3)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(base.log_prob(z), expected)
    assert standard_normal(2, torch.float64).sample((4,)).dtype == torch.float64
    with pytest.raises(ValueError, match="dim"):
        standard_normal(0)


@EXAMPLES
@given(dim=st.integers(1, 5), layers=st.integers(0, 4), n=st.integers(1, 16), seed=seeds)
def test_affine_flow_matches_transformed_distribution(dim, layers, n, seed):
    steps, transforms = [], []
    for k in range(layers):
        log_scale, shift = normal(seed + k, dim, scale=2.0), normal(seed + 100 + k, dim)
        step = Affine(dim).double()
        with torch.no_grad():
            step.log_scale.copy_(log_scale)
            step.shift.copy_(shift)
        steps.append(step)
        transforms.append(AffineTransform(shift, log_scale.exp(), event_dim=1))
    base = standard_normal(dim, torch.float64)
    flow = Flow(base, steps)
    reference = TransformedDistribution(base, transforms)
    x = normal(seed, n, dim, scale=3.0)
    torch.testing.assert_close(flow.log_prob(x), reference.log_prob(x), atol=1e-10, rtol=1e-10)


def flows_to_test(dim: int) -> list[Flow]:
    torch.manual_seed(dim)
    base = standard_normal(dim)
    flows = [
        Flow(base, [Planar(dim) for _ in range(4)]),
        Flow(base, [Radial(dim), Affine(dim, scale=2.0), Radial(dim)]),
    ]
    if dim >= 2:
        nvp = perturbed(realnvp(dim, layers=4, hidden=8, actnorm=True), 0.3)
        nvp.log_prob(torch.randn(64, dim) * 2 + 1)  # ActNorm's data-dependent initialisation
        flows.append(nvp)
    return [flow.double() for flow in flows]


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_sample_and_log_prob_agree_with_log_prob(dim):
    for flow in flows_to_test(dim):
        x, log_q = flow.sample_and_log_prob(32)
        assert x.shape == (32, dim) and log_q.shape == (32,)
        assert x.dtype == log_q.dtype == torch.float64
        torch.testing.assert_close(log_q, flow.log_prob(x), atol=1e-8, rtol=1e-8)
        samples = flow.sample(7)
        assert samples.shape == (7, dim) and not samples.requires_grad


def test_sample_and_log_prob_is_differentiable():
    flow = Flow(standard_normal(2), [Planar(2), Planar(2)])
    x, log_q = flow.sample_and_log_prob(16)
    (log_q.mean() + x.pow(2).mean()).backward()
    assert all(p.grad is not None for p in flow.parameters())


def test_trace_and_trace_inverse():
    flow = flows_to_test(3)[-1]
    z = normal(0, 10, 3)
    states = flow.trace(z)
    assert len(states) == len(flow.bijections) + 1
    assert torch.equal(states[0], z) and all(s.shape == (10, 3) for s in states)
    torch.testing.assert_close(states[-1], flow.transform(z)[0])
    back = flow.trace_inverse(states[-1])
    assert len(back) == len(states)
    for forward_state, inverse_state in zip(states, reversed(back), strict=True):
        torch.testing.assert_close(forward_state, inverse_state)


def test_realnvp_structure():
    flow = realnvp(5, layers=3, hidden=8)
    masks = [layer.mask.int().tolist() for layer in flow.bijections]
    assert masks == [[1, 0, 1, 0, 1], [0, 1, 0, 1, 0], [1, 0, 1, 0, 1]]
    assert [layer.mask.tolist() for layer in realnvp(2, layers=2).bijections] == [[1, 0], [0, 1]]
    with_actnorm = realnvp(2, layers=2, actnorm=True)
    assert [type(layer) for layer in with_actnorm.bijections] == [AffineCoupling, ActNorm] * 2
    x = torch.randn(4, 5)
    torch.testing.assert_close(flow.log_prob(x), standard_normal(5).log_prob(x))  # identity start
    with pytest.raises(ValueError, match="dim >= 2"):
        realnvp(1)


def test_realnvp_activation():
    def activations(flow):
        return {type(m) for m in flow.modules() if isinstance(m, nn.SiLU | nn.ReLU | nn.Tanh)}

    assert activations(realnvp(2, layers=2, hidden=4)) == {nn.ReLU}  # the default
    silu = realnvp(3, layers=2, hidden=4, activation=nn.SiLU).double()
    assert activations(silu) == {nn.SiLU}
    report = check_bijection(perturbed(silu.transform, 0.3), normal(0, 6, 3))
    assert report.passed, str(report)
    with pytest.raises(ValueError, match="module class such as nn.ReLU"):
        AffineCoupling(torch.tensor([1, 0]), activation=torch.relu)


def test_flow_validation():
    with pytest.raises(ValueError, match="Independent"):
        Flow(Normal(torch.zeros(2), torch.ones(2)), [Affine(2)])
    with pytest.raises(ValueError, match="dim 2 but bijections of dim 3"):
        Flow(standard_normal(2), [Affine(3)])
    with pytest.raises(TypeError, match="Distribution"):
        Flow("normal", [Affine(2)])
    flow = Flow(standard_normal(2), Affine(2))  # a single layer is fine too
    with pytest.raises(
        ValueError, match=r"log_prob expects a tensor of shape \(batch, 2\), got \(4, 3\)"
    ):
        flow.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"trace expects .*got \(3,\)"):
        flow.trace(torch.zeros(3))
    with pytest.raises(ValueError, match="n >= 1"):
        flow.sample(0)


def test_double_converts_the_base_too():
    flow = realnvp(2, layers=2, hidden=4).double()
    assert flow.sample(3).dtype == torch.float64
    assert flow.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64
    reverse_only = Flow(standard_normal(2), [Reverse(2)]).double()
    assert reverse_only.base.base_dist.loc.dtype == torch.float64


def test_state_dict_round_trip_keeps_actnorm_initialised():
    flow = perturbed(realnvp(2, layers=2, hidden=8, actnorm=True), 0.3)
    data = torch.randn(64, 2) * 3 + 1
    flow.log_prob(data)  # initialises the ActNorm layers
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    fresh = realnvp(2, layers=2, hidden=8, actnorm=True)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(10, 2)
    assert torch.equal(fresh.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_check_normalised_on_a_random_realnvp(seed):
    torch.manual_seed(seed)
    flow = perturbed(realnvp(2, layers=4, hidden=16), 0.1)
    box = ((-7, 7), (-7, 7))
    result = check_normalised(flow, box, resolution=250)
    assert result, result
    unnormalised = check_normalised(lambda x: flow.log_prob(x) + 0.1, box, 250)
    assert not unnormalised and "too much mass" in unnormalised.message
    reported = float(re.search(r"= ([0-9.]+)", unnormalised.message).group(1))
    assert math.isclose(reported, math.exp(0.1), abs_tol=0.01)  # the integral is reported

    def without_log_det(x):  # a classic bug: forgetting the change of volume
        return flow.base.log_prob(flow.transform.inverse(x)[0])

    assert not check_normalised(without_log_det, box, 250)
