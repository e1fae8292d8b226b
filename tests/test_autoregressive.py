"""flowcourse.autoregressive: MADE's degrees and masks, and the affine MAF / IAF layer.

MADE's outputs must depend on exactly the earlier inputs (read from autograd in float64);
the layer passes the bijection contract in both of its fast directions, with and without a
context; its gated IAF form is the step of ``flowcourse.vae.IAFPosterior`` (notebook 07's
numbers, re-checked by nbval, did not move when the posterior moved onto it); off-by-one
masks, planted in tests/planted.py, fail the checks with a message that names them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flowcourse.autoregressive import (
    MADE,
    AffineAutoregressive,
    hidden_degrees,
    input_degrees,
    made_masks,
    maf,
)
from flowcourse.bijections import Compose, Reverse
from flowcourse.checks import check_autoregressive, check_bijection, check_normalised
from flowcourse.flows import Flow, standard_normal

try:
    import planted
    from test_bijections import assert_contract, assert_state_dict_round_trip, normal, randomize
except ImportError:
    from tests import planted
    from tests.test_bijections import (
        assert_contract,
        assert_state_dict_round_trip,
        normal,
        randomize,
    )

EXAMPLES = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def random_order(seed: int, dim: int) -> torch.Tensor:
    return torch.randperm(dim, generator=torch.Generator().manual_seed(seed))


class AtContext(nn.Module):
    def __init__(self, layer, context):
        super().__init__()
        self.layer, self.context = layer, context

    def forward(self, x):
        return self.layer(x, context=self.context.expand(len(x), -1))

    def inverse(self, y):
        return self.layer.inverse(y, context=self.context.expand(len(y), -1))


# --- MADE -----------------------------------------------------------------------------------


def test_degrees_and_masks_follow_the_rules():
    order = torch.tensor([2, 0, 1])  # x_2 first, then x_0, then x_1
    assert input_degrees(order).tolist() == [2, 3, 1]
    assert hidden_degrees(5, 3, context=False).tolist() == [1, 2, 1, 2, 1]
    assert hidden_degrees(5, 3, context=True).tolist() == [0, 1, 2, 0, 1]
    assert hidden_degrees(3, 1, context=False).tolist() == [0, 0, 0]
    first, last = made_masks(input_degrees(order), [torch.tensor([1, 2])])
    assert first.tolist() == [[False, False, True], [True, False, True]]  # hidden >= input
    assert last.tolist() == [[True, False], [True, True], [False, False]]  # output > hidden


@EXAMPLES
@given(
    dim=st.integers(1, 6),
    depth=st.integers(0, 3),
    outputs=st.integers(1, 3),
    context=st.integers(0, 3),
    seed=seeds,
)
def test_made_outputs_depend_on_exactly_the_earlier_entries(dim, depth, outputs, context, seed):
    order = random_order(seed, dim)
    torch.manual_seed(seed)
    # tanh: every connection shows in the Jacobian (a ReLU unit can be off at every point)
    made = MADE(dim, outputs, max(dim, 8), depth, context, order, activation=nn.Tanh)
    randomize(made, seed, 1.0)
    x = normal(seed, 12, dim).float()
    c = normal(seed + 1, 12, context).float() if context else None
    result = check_autoregressive(made, x, c)
    assert result.passed, result.message
    assert made(x, c).shape == (12, outputs, dim)
    # the same, independently: the Jacobian is exactly zero on and above the diagonal
    made64 = copy.deepcopy(made).double()
    rank = torch.empty(dim, dtype=torch.long)
    rank[order] = torch.arange(dim)
    for i in range(3):
        cc = None if c is None else c[i].double()
        jac = torch.autograd.functional.jacobian(lambda v, cc=cc: made64(v, cc), x[i].double())
        later_or_same = rank[None, :] >= rank[:, None]  # (output entry, input entry)
        assert (jac[:, later_or_same] == 0).all()


def test_made_context_reaches_the_first_entry_and_leading_dims_broadcast():
    torch.manual_seed(0)
    made = MADE(3, 2, hidden=8, depth=2, context_dim=2)
    randomize(made, 0, 1.0)
    x, c = torch.randn(4, 3), torch.randn(4, 2)
    first = lambda cc: made(x, cc)[:, :, 0]  # noqa: E731  (entry 0 depends on the context only)
    assert torch.autograd.functional.jacobian(first, c).abs().sum() > 0
    samples = torch.randn(5, 4, 3)
    torch.testing.assert_close(made(samples, c)[2], made(samples[2], c))
    with pytest.raises(ValueError, match="needs a context"):
        made(x)


def test_made_validates_its_arguments():
    with pytest.raises(ValueError, match="permutation of 0..2"):
        MADE(3, order=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="dim"):
        MADE(0)
    with pytest.raises(ValueError, match="activation"):
        MADE(2, activation=torch.tanh)


# --- the layer ------------------------------------------------------------------------------


@EXAMPLES
@given(
    dim=st.integers(1, 5),
    n=st.integers(1, 12),
    seed=seeds,
    fast=st.sampled_from(["density", "sampling"]),
    scale=st.sampled_from(["tanh", "gate"]),
    context=st.integers(0, 3),
    depth=st.integers(0, 2),
    std=st.floats(0.05, 1.0),
)
def test_affine_autoregressive_contract(dim, n, seed, fast, scale, context, depth, std):
    order = random_order(seed, dim)

    def make():
        return AffineAutoregressive(
            dim, 8, depth, context, order, fast=fast, scale=scale, scale_bound=3.0
        ).double()

    layer = make()
    # Gates near 0 make the D-pass direction divide by tiny numbers: keep them moderate.
    randomize(layer, seed, std if scale == "tanh" else min(std, 0.3))
    x = normal(seed + 1, n, dim, scale=2.0)
    c = normal(seed + 2, 1, context)
    wrapped = AtContext(layer, c) if context else layer
    assert_contract(wrapped, x)
    if not context:
        assert_state_dict_round_trip(layer, make(), x)
    _, log_det = wrapped(x)
    if scale == "gate":  # every gate in (0, 1): the one-pass direction contracts
        assert (log_det < 0).all() if fast == "sampling" else (log_det > 0).all()
    else:
        assert (log_det.abs() <= 3.0 * dim + 1e-9).all()  # the soft bound


def test_one_pass_direction_and_identity_start():
    x = torch.randn(6, 4)
    for fast in ("density", "sampling"):
        layer = AffineAutoregressive(4, hidden=8, fast=fast)
        y, log_det = layer(x)
        assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(6))
    maf_layer = AffineAutoregressive(3, 8, fast="density", zero_init=False)
    iaf_layer = AffineAutoregressive(3, 8, fast="sampling", zero_init=False)
    iaf_layer.load_state_dict(maf_layer.state_dict())
    v = torch.randn(5, 3)
    # the same network, one map: MAF's density pass is IAF's sampling pass
    for a, b in zip(maf_layer.inverse(v), iaf_layer(v), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(maf_layer(v), iaf_layer.inverse(v), strict=True):
        assert torch.equal(a, b)


def test_layer_passes_check_bijection_with_and_without_context():
    torch.manual_seed(0)
    layer = AffineAutoregressive(3, 16, 2, context_dim=2, fast="density")
    randomize(layer, 1, 0.3)
    report = check_bijection(layer, torch.randn(32, 3), context=torch.randn(32, 2))
    assert report.passed, str(report)
    report = check_bijection(
        AffineAutoregressive(3, 16, 1, fast="sampling", scale="gate", zero_init=False),
        torch.randn(32, 3),
    )
    assert report.passed, str(report)


def test_layer_validates_arguments_and_context():
    with pytest.raises(ValueError, match="fast='density' \\(MAF\\) or 'sampling' \\(IAF\\)"):
        AffineAutoregressive(2, fast="both")
    with pytest.raises(ValueError, match="scale='tanh' or 'gate'"):
        AffineAutoregressive(2, scale="exp")
    layer = AffineAutoregressive(2, 8, context_dim=3)
    with pytest.raises(ValueError, match=r"needs a context of shape \(4, 3\), got None"):
        layer(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="float64 context for torch.float32"):
        layer(torch.zeros(4, 2), context=torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 2\), got \(4, 3\)"):
        layer(torch.zeros(4, 3), context=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="takes no context"):
        AffineAutoregressive(2, 8)(torch.zeros(4, 2), context=torch.zeros(4, 3))


def test_samples_per_context_row():
    torch.manual_seed(0)
    layer = AffineAutoregressive(3, 8, 1, context_dim=2, fast="sampling", scale="gate")
    randomize(layer, 0, 0.5)
    z, c = torch.randn(7, 4, 3), torch.randn(4, 2)
    y, log_det = layer(z, context=c)
    assert y.shape == (7, 4, 3) and log_det.shape == (7, 4)
    y2, log_det2 = layer(z[3], context=c)
    torch.testing.assert_close(y[3], y2)
    torch.testing.assert_close(log_det[3], log_det2)
    back, _ = layer.inverse(y, context=c)
    torch.testing.assert_close(back, z, atol=1e-5, rtol=1e-5)


# --- flows ----------------------------------------------------------------------------------


def test_maf_is_normalised_and_samples_by_inverting():
    torch.manual_seed(0)
    flow = maf(2, layers=3, hidden=16)
    randomize(flow, 0, 0.3)
    result = check_normalised(flow, bounds=((-8, 8), (-8, 8)), resolution=300, tol=5e-3)
    assert result.passed, result.message
    x = flow.sample(20)
    z, _ = flow.transform.inverse(x)
    x_again, _ = flow.transform(z)
    torch.testing.assert_close(x_again, x, atol=1e-5, rtol=1e-5)
    orders = [layer.made.order.tolist() for layer in flow.bijections]
    assert orders == [[0, 1], [1, 0], [0, 1]]


def test_compose_passes_the_context_to_the_layers_that_take_one():
    torch.manual_seed(0)
    cond = AffineAutoregressive(2, 8, context_dim=3)
    randomize(cond, 0, 0.5)
    chain = Compose(cond, Reverse(2))
    x, c = torch.randn(5, 2), torch.randn(5, 3)
    y, log_det = chain(x, context=c)
    step, ld = cond(x, context=c)
    torch.testing.assert_close(y, step.flip(1))
    torch.testing.assert_close(log_det, ld)
    back, _ = chain.inverse(y, context=c)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one context_dim"):
        Compose(cond, AffineAutoregressive(2, 8, context_dim=2))
    flow = Flow(standard_normal(2), [cond, Reverse(2)])
    assert flow.context_dim == 3 and flow.sample(4, context=c[0]).shape == (4, 2)
    with pytest.raises(ValueError, match="takes no context"):
        Flow(standard_normal(2), [Reverse(2)]).log_prob(x, context=c)


# --- planted: off-by-one degrees ------------------------------------------------------------


def test_mask_that_lets_an_entry_see_itself_is_caught():
    torch.manual_seed(0)
    made = planted.SelfSeeingMADE(3, 2, 8, 2)
    result = check_autoregressive(made, torch.randn(16, 3))
    assert not result.passed
    assert "depend on x_0 itself" in result.message and "off-by-one" in result.message
    layer = planted.self_seeing_maf_layer(3)
    failed = {r.name: r.message for r in check_bijection(layer, torch.randn(32, 3)).failures}
    assert "log_det does not match log|det J|" in failed["log-det"]
    assert "round trip" in failed


def test_mask_that_is_too_strict_is_caught():
    torch.manual_seed(0)
    result = check_autoregressive(planted.TooStrictMADE(2, 2, 8, 1), torch.randn(16, 2))
    assert not result.passed and "never depend on x_0" in result.message
    assert "too strict" in result.message


def test_check_autoregressive_reads_the_order_and_reports_a_later_entry():
    torch.manual_seed(0)
    made = MADE(3, 1, 8, 1, order=torch.tensor([2, 1, 0]))
    randomize(made, 0, 1.0)
    assert check_autoregressive(made, torch.randn(8, 3)).passed
    wrong = check_autoregressive(made, torch.randn(8, 3), order=torch.arange(3))
    assert not wrong.passed and "comes after it" in wrong.message
