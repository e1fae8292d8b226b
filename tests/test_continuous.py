"""flowcourse.continuous: the solver, the divergences and flow matching against known answers.

Known answers: a linear field ``v = (a + b t) A x`` has a closed-form flow and density
(``LinearField``), a constant field shifts the base, and a density integrates to 1. The
planted mistakes of tests/planted_continuous.py (wrong time direction, log-det overwritten,
Δt missing, J^T 1 instead of J^T probe, a fresh probe at every stage, one diagonal entry for
the trace) must each fail the check that names them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowcourse.checks import check_normalised
from flowcourse.continuous import (
    ContinuousFlow,
    LinearField,
    TimeEmbedding,
    VelocityField,
    cnf_nll_loss,
    exact_divergence,
    flow_matching_loss,
    hutchinson_divergence,
    integrate,
    rk4_step,
)

try:  # tests/planted_continuous.py: the deliberately broken pieces
    import planted_continuous as planted
except ImportError:  # run as a package (pytest --import-mode=importlib)
    from tests import planted_continuous as planted


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The solver makes many small autograd calls: two threads on a shared machine only wait
    for each other (20x slower measured), so these tests run on one, as the notebooks do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


A = torch.tensor([[0.3, -1.1, 0.2], [0.7, -0.4, 0.5], [-0.2, 0.6, 0.25]], dtype=torch.float64)
TRACE_A = float(torch.trace(A))  # 0.15: a field that expands a little overall


def linear() -> LinearField:
    """v = (0.6 + 0.8 t) A x: time-dependent, so the direction of time matters."""
    return LinearField(A, a=0.6, b=0.8)


def points(n: int = 64, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def solve(field, x, t0, t1, steps, step=rk4_step, divergence=exact_divergence, probe=None):
    """The solver loop with swappable pieces (the package's ``integrate`` fixes them)."""
    if probe is None:

        def dynamics(y, t):
            return divergence(field, y, t)
    else:

        def dynamics(y, t):
            return divergence(field, y, t, probe)

    h = (t1 - t0) / steps
    log_det = torch.zeros(len(x), dtype=x.dtype)
    for k in range(steps):
        x, log_det = step(dynamics, x, log_det, t0 + k * h, h)
    return x, log_det


def small_field(dim: int = 2, seed: int = 0) -> VelocityField:
    """A random non-linear field, float64, whose output layer is not near zero."""
    torch.manual_seed(seed)
    field = VelocityField(dim, hidden=16, depth=2, frequencies=2).double()
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(1.5)
    return field


# --- the solver against the closed form -------------------------------------------------------


def test_linear_field_likelihood_matches_closed_form():
    field = linear()
    x = points()
    got = ContinuousFlow(field).double().log_prob(x, steps=64)
    expected = field.log_prob(x)
    assert torch.allclose(got, expected, atol=1e-9), (got - expected).abs().max()


def test_sampling_direction_follows_the_closed_form_map():
    field = linear()
    z = points(seed=1)
    x, log_det = ContinuousFlow(field).double()(z, steps=64)
    assert torch.allclose(x, field.flow_map(z), atol=1e-9)
    # div v = (a + b t) tr A integrated over [0, 1]: exact for RK4 (a polynomial in t).
    assert torch.allclose(log_det, torch.full_like(log_det, (0.6 + 0.4) * TRACE_A), atol=1e-12)


def test_log_det_is_the_integral_of_the_divergence_for_any_step_count():
    field = linear()
    x = points()
    expected = -(0.6 + 0.4) * TRACE_A  # from t = 1 back to t = 0
    for steps in (1, 2, 5, 16):
        _, log_det = integrate(field, x, 1.0, 0.0, steps)
        assert torch.allclose(log_det, torch.full_like(log_det, expected), atol=1e-12), steps


def test_integrate_over_part_of_the_interval():
    field = linear()
    x = points()
    # integral of (0.6 + 0.8 t) over [0.25, 0.75] is 0.6 * 0.5 + 0.4 * (0.75^2 - 0.25^2) = 0.5
    _, log_det = integrate(field, x, 0.25, 0.75, 3)
    assert torch.allclose(log_det, torch.full_like(log_det, 0.5 * TRACE_A), atol=1e-12)
    back, _ = integrate(field, integrate(field, x, 0.25, 0.75, 40)[0], 0.75, 0.25, 40)
    assert torch.allclose(back, x, atol=1e-8)


def test_constant_velocity_moves_the_base_by_that_vector():
    shift = torch.tensor([1.5, -0.5], dtype=torch.float64)

    def field(x, t):
        return shift.expand_as(x)

    flow = ContinuousFlow(field, dim=2).double()
    x = points(dim=2)
    expected = torch.distributions.MultivariateNormal(shift, torch.eye(2, dtype=torch.float64))
    assert torch.allclose(flow.log_prob(x, steps=3), expected.log_prob(x), atol=1e-12)


def test_sample_runs_the_field_forward():
    shift = torch.tensor([4.0, -3.0])
    flow = ContinuousFlow(lambda x, t: shift.expand_as(x), dim=2)
    assert torch.allclose(flow.sample(4000, steps=2).mean(0), shift, atol=0.1)


def test_density_of_a_nonlinear_field_integrates_to_one():
    flow = ContinuousFlow(small_field())
    result = check_normalised(
        lambda x: flow.log_prob(x.double(), steps=12), ((-7, 7), (-7, 7)), 120, tol=5e-3
    )
    assert result.passed, result.message


def test_log_prob_and_sample_and_inverse_agree_for_a_nonlinear_field():
    flow = ContinuousFlow(small_field(3, seed=2), dim=3)
    z = points(32, 3, seed=3)
    with torch.no_grad():
        x, log_det_forward = flow(z, steps=48)
        z_back, log_det_inverse = flow.inverse(x, steps=48)
    assert torch.allclose(z_back, z, atol=1e-6)
    assert torch.allclose(log_det_inverse, -log_det_forward, atol=1e-6)


def test_few_solver_steps_break_the_normalisation():
    """The solver is part of the model. One RK4 step of v = A x maps x to P(-A) x, with P the
    Taylor polynomial of exp to 4th order, while its log-det is the exact -trace(A): the
    "density" then has mass exp(-trace A) / det P(-A) = 1.376 for A = diag(-3, -2.5)."""
    field = LinearField(torch.diag(torch.tensor([-3.0, -2.5], dtype=torch.float64)))
    flow = ContinuousFlow(field).double()
    box = ((-0.6, 0.6), (-0.6, 0.6))

    def taylor(a):
        return sum(a**k / math.factorial(k) for k in range(5))

    expected = math.exp(5.5) / (taylor(3.0) * taylor(2.5))
    coarse = check_normalised(lambda x: flow.log_prob(x, steps=1), box, 150, tol=1e-3)
    fine = check_normalised(lambda x: flow.log_prob(x, steps=32), box, 150, tol=1e-3)
    assert fine.passed, fine.message
    assert f"= {expected:.4f}" in coarse.message and not coarse.passed, coarse.message


# --- planted mistakes of the solver -----------------------------------------------------------


def _linear_error(**pieces) -> float:
    field = linear()
    x = points()
    integrate_fn = pieces.pop("integrate_fn", None)
    if integrate_fn is not None:
        z, log_det = integrate_fn(field, x, 1.0, 0.0, 8)
    else:
        z, log_det = solve(field, x, 1.0, 0.0, 8, **pieces)
    got = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + log_det
    return (got - field.log_prob(x)).abs().max().item()


def test_the_reference_pieces_pass_the_known_answer():
    # 8 RK4 steps: the error of the map is about 1e-5 here, far below any planted mistake
    assert _linear_error() < 1e-4
    assert _linear_error(integrate_fn=integrate) < 1e-4


@pytest.mark.parametrize(
    "pieces",
    [
        {"integrate_fn": planted.integrate_forward_in_time},
        {"step": planted.rk4_step_overwrites},
        {"step": planted.rk4_step_no_dt},
        {"divergence": planted.exact_divergence_first_only},
    ],
    ids=["wrong time direction", "log-det overwritten", "dt missing", "one diagonal entry"],
)
def test_planted_solver_mistakes_miss_the_known_answer(pieces):
    assert _linear_error(**pieces) > 0.05


def test_the_planted_integrate_respects_the_step_it_is_given():
    """The wrong-direction bug alone is caught, not a side effect of another piece."""
    field = linear()
    x = points()
    good = integrate(field, x, 0.0, 1.0, 8)
    bad = planted.integrate_forward_in_time(field, x, 1.0, 0.0, 8)
    assert torch.allclose(good[0], bad[0]) and torch.allclose(good[1], bad[1])


def test_overwritten_log_det_hides_with_one_step():
    """Why the checks use several steps: with a single step both versions agree."""
    field = linear()
    x = points()
    one = solve(field, x, 1.0, 0.0, 1)[1]
    assert torch.allclose(one, solve(field, x, 1.0, 0.0, 1, step=planted.rk4_step_overwrites)[1])
    assert not torch.allclose(
        one, solve(field, x, 1.0, 0.0, 4, step=planted.rk4_step_overwrites)[1]
    )


# --- the divergence ---------------------------------------------------------------------------


def test_exact_divergence_is_the_trace_of_the_autograd_jacobian():
    field = small_field(3, seed=5)
    x = points(8, 3)
    v, div = exact_divergence(field, x, 0.3)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda y: field(y[None], 0.3)[0], x[i])
        assert torch.isclose(div[i], torch.trace(jac), atol=1e-12)
    assert torch.allclose(v, field(x, 0.3).detach())
    _, wrong = planted.exact_divergence_first_only(field, x, 0.3)
    assert not torch.allclose(wrong, div, atol=1e-3)


def test_hutchinson_with_a_fixed_probe_solves_one_ode():
    """For a linear field, probe^T J probe is known along the whole path for that probe."""
    field = linear()
    x = points()
    probe = points(seed=7)
    expected = -(0.6 + 0.4) * torch.einsum("bi,ij,bj->b", probe, A, probe)
    _, log_det = integrate(field, x, 1.0, 0.0, 8, probe=probe)
    assert torch.allclose(log_det, expected, atol=1e-10)
    for bug in (planted.hutchinson_fresh_probe, planted.hutchinson_ones):
        torch.manual_seed(0)
        _, bad = solve(field, x, 1.0, 0.0, 8, divergence=bug, probe=probe)
        assert (bad - expected).abs().max() > 0.05, bug.__name__


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_on_average(kind):
    field = small_field(3, seed=6)
    x = points(4, 3).repeat_interleave(4000, 0)
    gen = torch.Generator().manual_seed(8)
    probe = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    if kind == "rademacher":
        probe = probe.sign()
    _, exact = exact_divergence(field, x, 0.6)
    _, estimate = hutchinson_divergence(field, x, 0.6, probe)
    per_point = estimate.reshape(4, 4000)
    se = per_point.std(1) / math.sqrt(4000)
    assert ((per_point.mean(1) - exact.reshape(4, 4000)[:, 0]).abs() < 4 * se).all()
    assert (per_point.std(1) > 0.01).all()  # a real estimate: it varies with the probe


def test_hutchinson_with_ones_averages_to_zero_not_the_trace():
    field = LinearField(A)
    x = points(4000)
    probe = points(4000, seed=9)
    _, good = hutchinson_divergence(field, x, 0.0, probe)
    _, bad = planted.hutchinson_ones(field, x, 0.0, probe)
    se = good.std() / math.sqrt(len(x))
    assert abs(good.mean() - TRACE_A) < 4 * se
    assert abs(bad.mean()) < 4 * bad.std() / math.sqrt(len(x))  # E[1^T J probe] = 0
    assert abs(bad.mean() - TRACE_A) > 4 * se


# --- gradients for maximum-likelihood training --------------------------------------------------


def test_nll_gradient_flows_through_the_divergence():
    """Backpropagating the NLL through the solver matches finite differences in float64."""
    field = small_field(2, seed=10)
    flow = ContinuousFlow(field)
    x = points(16, 2, seed=11)
    loss_fn = cnf_nll_loss(steps=3)
    weight = field.net[0].weight
    loss = loss_fn(flow, x)
    (grad,) = torch.autograd.grad(loss, weight)
    eps = 1e-6
    numeric = torch.zeros(3)
    for k, (i, j) in enumerate([(0, 0), (3, 1), (7, 2)]):
        with torch.no_grad():
            weight[i, j] += eps
            up = loss_fn(flow, x).item()
            weight[i, j] -= 2 * eps
            down = loss_fn(flow, x).item()
            weight[i, j] += eps
        numeric[k] = (up - down) / (2 * eps)
    analytic = torch.stack([grad[0, 0], grad[3, 1], grad[7, 2]]).float()
    assert torch.allclose(analytic, numeric, rtol=1e-4, atol=1e-6), (analytic, numeric)


def test_no_grad_evaluation_keeps_no_graph():
    flow = ContinuousFlow(small_field())
    with torch.no_grad():
        lp = flow.log_prob(points(8, 2), steps=2)
    assert not lp.requires_grad


# --- flow matching ----------------------------------------------------------------------------


def test_flow_matching_loss_by_hand():
    x1 = points(5, 2)
    x0 = points(5, 2, seed=1)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)

    def field(x, s):
        return 2 * x + s[:, None]

    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    expected = ((2 * xt + t[:, None] - (x1 - x0)) ** 2).sum(1).mean()
    assert torch.isclose(flow_matching_loss(field, x1, x0, t), expected)


def test_flow_matching_target_reaches_the_data():
    """The straight path's velocity field, if learnt exactly for one pair, carries x0 to x1."""
    x1, x0 = points(6, 2), points(6, 2, seed=1)
    t = torch.rand(6, dtype=torch.float64)

    def perfect(x, s):  # for these pairs: x1 - x0, whatever x_t
        return x1 - x0

    assert flow_matching_loss(perfect, x1, x0, t).item() == pytest.approx(0.0, abs=1e-24)
    ends, _ = integrate(lambda x, s: x1 - x0, x0, 0.0, 1.0, 1)
    assert torch.allclose(ends, x1)


def test_flow_matching_learns_the_marginal_field_of_a_gaussian():
    """Data N(m, I), base N(0, I): x_t ~ N(t m, s_t^2 I) with s_t^2 = (1 - t)^2 + t^2, and the
    marginal field is E[x1 - x0 | x_t = x] = m + (2 t - 1) / s_t^2 (x - t m)."""
    torch.manual_seed(0)
    m = torch.tensor([2.0, -1.0])
    field = VelocityField(2, hidden=32, depth=2)
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    for _ in range(400):
        opt.zero_grad()
        loss = flow_matching_loss(field, torch.randn(256, 2) + m)
        loss.backward()
        opt.step()
    t = torch.rand(2000)
    s2 = ((1 - t) ** 2 + t**2)[:, None]
    x = t[:, None] * m + s2.sqrt() * torch.randn(2000, 2)
    expected = m + (2 * t[:, None] - 1) / s2 * (x - t[:, None] * m)
    with torch.no_grad():
        error = (field(x, t) - expected).norm(dim=1).mean().item()
    assert error < 0.2, error
    # a field trained toward x0 - x1 (the time direction swapped) is far from it
    assert (-expected - expected).norm(dim=1).mean().item() > 2


# --- the field and bad input ------------------------------------------------------------------


def test_time_embedding_and_field_shapes():
    emb = TimeEmbedding(3)
    assert emb(torch.tensor([0.0, 0.5])).shape == (2, 7)
    field = VelocityField(4, hidden=8, depth=1)
    x = torch.randn(5, 4)
    assert field(x, 0.5).shape == (5, 4)
    assert torch.allclose(field(x, 0.5), field(x, torch.full((5,), 0.5)))


def test_bad_input_gets_a_clear_error():
    field = VelocityField(2, hidden=8, depth=1)
    flow = ContinuousFlow(field)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        flow.log_prob(torch.randn(5, 3))
    with pytest.raises(ValueError, match="floating-point"):
        flow.log_prob(torch.ones(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        flow.log_prob(torch.randn(5, 2), steps=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        flow.sample(3, steps=2.5)
    with pytest.raises(ValueError, match="n >= 1"):
        flow.sample(0)
    with pytest.raises(ValueError, match="probe must have the shape of x"):
        flow.log_prob(torch.randn(5, 2), probe=torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"t must be a number or a tensor of shape \(5,\)"):
        field(torch.randn(5, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="x0 must have the shape of x1"):
        flow_matching_loss(field, torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"t must be a tensor of shape \(5,\)"):
        flow_matching_loss(field, torch.randn(5, 2), t=torch.rand(5, 1))
    with pytest.raises(ValueError, match="hidden >= 1"):
        VelocityField(2, hidden=0)
    with pytest.raises(ValueError, match="square matrix"):
        LinearField(torch.ones(2, 3))
    with pytest.raises(ValueError, match="dim="):
        ContinuousFlow(lambda x, t: x)
    with pytest.raises(TypeError, match="field v"):
        ContinuousFlow(nn.Linear(2, 2).weight, dim=2)
