"""flowcourse.splines: the rational-quadratic spline, its coupling layer, and its pitfalls.

The spline is checked against autograd and its own inverse in float64 for random parameters;
the layer passes the bijection contract; each pitfall of writing a spline, planted in
tests/planted.py, fails ``check_spline`` with a message that names it.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowcourse.checks import check_bijection, check_normalised, check_spline
from flowcourse.splines import (
    SplineCoupling,
    rq_knots,
    rq_spline,
    rq_spline_inverse,
    spline_flow,
)

try:  # tests/ on the path (pytest's rootdir conftest) or the repository root
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


def raw_parameters(seed: int, n: int, bins: int, std: float) -> tuple[torch.Tensor, ...]:
    return (
        normal(seed, n, bins, scale=std),
        normal(seed + 1, n, bins, scale=std),
        normal(seed + 2, n, bins - 1, scale=std),
    )


class AtContext(torch.nn.Module):
    """A conditional layer at a fixed context, as a plain bijection (for assert_contract)."""

    def __init__(self, layer, context):
        super().__init__()
        self.layer, self.context = layer, context

    def forward(self, x):
        return self.layer(x, context=self.context.expand(len(x), -1))

    def inverse(self, y):
        return self.layer.inverse(y, context=self.context.expand(len(y), -1))


# --- the spline as a function ---------------------------------------------------------------


@EXAMPLES
@given(seed=seeds, bins=st.integers(1, 10), bound=st.floats(0.5, 6.0), std=st.floats(0.0, 3.0))
def test_spline_round_trip_log_det_and_monotone(seed, bins, bound, std):
    params = raw_parameters(seed, 200, bins, std)
    x = normal(seed + 3, 200, scale=bound)  # about a third of the points in the tails
    x = x.requires_grad_(True)
    y, log_det = rq_spline(x, *params, bound)
    (slope,) = torch.autograd.grad(y.sum(), x)
    assert (slope > 0).all()
    torch.testing.assert_close(log_det, slope.log(), atol=1e-9, rtol=1e-9)
    back, log_det_back = rq_spline_inverse(y.detach(), *params, bound)
    torch.testing.assert_close(back, x.detach(), atol=1e-9 * bound, rtol=0)
    torch.testing.assert_close(log_det_back, -log_det.detach(), atol=1e-9, rtol=1e-9)
    tails = x.detach().abs() > bound
    assert torch.equal(y[tails], x[tails]) and (log_det[tails] == 0).all()


@settings(max_examples=8, deadline=None)
@given(seed=seeds, bins=st.integers(2, 9), bound=st.floats(1.0, 5.0))
def test_check_spline_passes_the_package_spline(seed, bins, bound):
    report = check_spline(rq_spline, rq_spline_inverse, bound=bound, bins=bins, seed=seed % 1000)
    assert report.passed, str(report)


def test_knots_span_the_interval_and_zero_parameters_are_the_identity():
    widths, heights, derivatives = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 5)
    xk, yk, dk = rq_knots(widths, heights, derivatives, 2.5)
    assert (xk[:, 0] == -2.5).all() and (xk[:, -1] == 2.5).all() and (yk[:, -1] == 2.5).all()
    assert (xk.diff(dim=-1) > 0).all() and (yk.diff(dim=-1) > 0).all()
    assert (dk[:, 0] == 1).all() and (dk[:, -1] == 1).all() and (dk > 0).all()
    zeros = torch.zeros(6, dtype=torch.float64)
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    y, log_det = rq_spline(x, zeros, zeros, zeros[:5], 2.5)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros_like(x), atol=1e-12, rtol=0)
    # a = 0 in every bin here: the stable root has no division by a
    back, _ = rq_spline_inverse(x, zeros, zeros, zeros[:5], 2.5)
    assert back.isfinite().all()
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)


def test_spline_gradients_are_finite_far_in_the_tails():
    params = [p.requires_grad_(True) for p in raw_parameters(0, 8, 8, 2.0)]
    x = torch.tensor([-1e300, -1e6, -5.0, -4.01, 4.01, 5.0, 1e6, 1e300], dtype=torch.float64)
    for fn in (rq_spline, rq_spline_inverse):
        v = x.clone().requires_grad_(True)
        y, log_det = fn(v, *params, 4.0)
        grads = torch.autograd.grad((y + log_det).sum(), [v, *params])
        assert all(g.isfinite().all() for g in grads)
        assert (grads[0] == 1).all()  # the identity tails


def test_spline_broadcasts_one_parameter_set_and_rejects_bad_shapes():
    widths, heights, derivatives = torch.randn(5), torch.randn(5), torch.randn(4)
    x = torch.linspace(-3, 3, 7)
    y, _ = rq_spline(x, widths, heights, derivatives, 3.0)
    for i in range(7):
        torch.testing.assert_close(
            y[i], rq_spline(x[i : i + 1], widths, heights, derivatives, 3.0)[0][0]
        )
    with pytest.raises(ValueError, match=r"derivatives \(\.\.\., K - 1\)"):
        rq_spline(x, widths, heights, torch.randn(5), 3.0)
    with pytest.raises(ValueError, match="bound B > 0"):
        rq_spline(x, widths, heights, derivatives, 0.0)


# --- planted pitfalls -----------------------------------------------------------------------


def failures(report):
    return {result.name: result.message for result in report.failures}


def test_the_planted_reference_spline_is_correct():
    assert check_spline(planted.correct_spline, planted.correct_spline_inverse).passed


def test_boundary_slope_not_one_is_caught():
    failed = failures(
        check_spline(planted.boundary_slope_spline, planted.boundary_slope_spline_inverse)
    )
    assert "boundary" in failed
    assert "slope at -3 is 0.6941" in failed["boundary"] and "d_0 = d_K = 1" in failed["boundary"]
    assert "round trip" not in failed  # still a bijection: only the join is wrong


def test_tails_evaluated_under_where_give_nan_gradients():
    failed = failures(check_spline(planted.unclamped_spline, planted.unclamped_spline_inverse))
    assert "torch.where" in failed["tail gradients"]
    assert "clamp (or mask) the inputs" in failed["tail gradients"]
    assert "inverse: NaN or infinite gradient at the tail input" in failed["tail gradients"]


def test_wrong_root_of_the_quadratic_is_caught():
    failed = failures(check_spline(planted.wrong_root_spline, planted.wrong_root_spline_inverse))
    assert "other root" in failed["round trip"]
    assert "2c / (-b - sqrt(b^2 - 4ac))" in failed["round trip"]
    assert "0 / 0" in failed["identity at zero"]  # the textbook form divides by a = 0


def test_softmax_of_a_softmax_is_caught():
    failed = failures(
        check_spline(planted.softmax_twice_spline, planted.softmax_twice_spline_inverse)
    )
    assert list(failed) == ["parametrisation"]
    assert "softmax of a softmax" in failed["parametrisation"]


def test_check_spline_reports_a_crash_and_a_bad_shape():
    def crashing(x, w, h, d, bound):
        raise RuntimeError("boom")

    def summed(x, w, h, d, bound):
        y, log_det = rq_spline(x, w, h, d, bound)
        return y, log_det.sum()

    for bad, fragment in ((crashing, "RuntimeError: boom"), (summed, "log_det of the input")):
        report = check_spline(bad)
        assert not report.passed
        assert any(fragment in r.message for r in report.failures), str(report)


# --- the coupling layer ---------------------------------------------------------------------


@EXAMPLES
@given(
    dim=st.integers(2, 5),
    n=st.integers(1, 12),
    seed=seeds,
    bins=st.integers(1, 8),
    std=st.floats(0.05, 0.5),
    depth=st.integers(0, 2),
    context=st.integers(0, 3),
)
def test_spline_coupling_contract(dim, n, seed, bins, std, depth, context):
    mask = torch.randint(0, 2, (dim,), generator=torch.Generator().manual_seed(seed))
    mask[seed % dim], mask[(seed + 1) % dim] = 1, 0

    def make():
        return SplineCoupling(mask, bins, 3.0, hidden=8, depth=depth, context_dim=context).double()

    layer = make()
    randomize(layer, seed, std)
    x = normal(seed + 1, n, dim, scale=2.5)  # some entries in the tails
    c = normal(seed + 2, 1, context)
    wrapped = AtContext(layer, c) if context else layer
    assert_contract(wrapped, x)
    if not context:
        assert_state_dict_round_trip(layer, make(), x)
    y, _ = wrapped(x)
    kept = mask.bool()
    assert torch.equal(y[:, kept], x[:, kept])


def test_spline_coupling_starts_as_the_identity_and_passes_check_bijection():
    layer = SplineCoupling(torch.tensor([0, 1, 0]), bins=6, bound=3.0, hidden=16)
    x = torch.randn(40, 3) * 2
    y, log_det = layer(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros(40), atol=1e-6, rtol=0)
    randomize(layer, 1, 0.2)
    assert check_bijection(layer, x).passed
    conditional = SplineCoupling(torch.tensor([1, 0]), bins=4, hidden=8, context_dim=3)
    randomize(conditional, 2, 0.2)
    report = check_bijection(conditional, torch.randn(30, 2), context=torch.randn(30, 3))
    assert report.passed, str(report)


def test_spline_coupling_validates_masks_and_context():
    for bad in ([1, 1], [0, 0], [1, 2], [1]):
        with pytest.raises(ValueError, match="mask"):
            SplineCoupling(torch.tensor(bad))
    with pytest.raises(ValueError, match="bins"):
        SplineCoupling(torch.tensor([1, 0]), bins=0)
    layer = SplineCoupling(torch.tensor([1, 0]), context_dim=2)
    with pytest.raises(ValueError, match=r"needs a context of shape \(4, 2\), got None"):
        layer(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"context of shape \(4, 2\).*got \(3, 2\)"):
        layer.inverse(torch.zeros(4, 2), context=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="takes no context"):
        SplineCoupling(torch.tensor([1, 0]))(torch.zeros(4, 2), context=torch.zeros(4, 2))


def test_spline_flow_is_normalised_and_samples():
    torch.manual_seed(0)
    flow = spline_flow(2, layers=3, bins=6, bound=3.0, hidden=16)
    randomize(flow, 3, 0.3)
    result = check_normalised(flow, bounds=((-7, 7), (-7, 7)), resolution=300, tol=5e-3)
    assert result.passed, result.message
    x = flow.sample(50)
    assert x.shape == (50, 2) and x.isfinite().all()
    torch.testing.assert_close(flow.transform.inverse(x)[0].shape, torch.Size([50, 2]))
    with pytest.raises(ValueError, match="dim >= 2"):
        spline_flow(1)


def test_conditional_spline_flow_samples_and_log_probs_per_context():
    torch.manual_seed(1)
    flow = spline_flow(2, layers=2, bins=4, hidden=8, context_dim=3)
    randomize(flow, 4, 0.3)
    assert flow.context_dim == 3
    c = torch.eye(3)[[0, 1, 2, 1]]
    x = flow.sample(4, context=c)
    single = torch.stack([flow.sample(1, context=c[i])[0] for i in range(4)])
    assert x.shape == single.shape == (4, 2)
    log_q = flow.log_prob(x, context=c)
    for i in range(4):
        torch.testing.assert_close(
            log_q[i : i + 1], flow.log_prob(x[i : i + 1], context=c[i : i + 1])
        )
    # each conditional q(x | c) is a density
    for row in torch.eye(3):

        def log_prob(points, row=row):
            return flow.log_prob(points, context=row.expand(len(points), -1))

        assert check_normalised(log_prob, bounds=((-7, 7), (-7, 7)), resolution=250).passed
    with pytest.raises(ValueError, match="needs a context"):
        flow.log_prob(x)


def test_float32_round_trip():
    layer = SplineCoupling(torch.tensor([1, 0, 1, 0]), bins=8, bound=4.0, hidden=16)
    randomize(layer, 0, 0.1)
    x = torch.randn(100, 4) * 2
    y, log_det = layer(x)
    back, log_det_back = layer.inverse(y)
    assert y.dtype == torch.float32
    torch.testing.assert_close(back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-4, rtol=1e-4)
    assert math.isfinite(float(log_det.detach().sum()))
