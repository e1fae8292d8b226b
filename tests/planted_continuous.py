"""Deliberately broken pieces of a continuous flow: the classic mistakes, one per function.

Each has the signature of the package's correct version (``flowcourse.continuous``), so a test
can swap it in. tests/test_continuous.py asserts that every one fails the known-answer checks;
the grader of assignment 09 names the same mistakes. Do not "fix" them.
"""

from __future__ import annotations

import torch

from flowcourse.continuous import hutchinson_divergence, integrate, rk4_step


def rk4_step_overwrites(dynamics, x, log_det, t, h):
    """The log-det of this step replaces the one carried in, instead of adding to it."""
    v1, d1 = dynamics(x, t)
    v2, d2 = dynamics(x + (h / 2) * v1, t + h / 2)
    v3, d3 = dynamics(x + (h / 2) * v2, t + h / 2)
    v4, d4 = dynamics(x + h * v3, t + h)
    x = x + (h / 6) * (v1 + 2 * v2 + 2 * v3 + v4)
    log_det = (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4)  # BUG: overwritten, not accumulated
    return x, log_det


def rk4_step_no_dt(dynamics, x, log_det, t, h):
    """The divergence is added without the step size: a sum of rates, not an integral."""
    v1, d1 = dynamics(x, t)
    v2, d2 = dynamics(x + (h / 2) * v1, t + h / 2)
    v3, d3 = dynamics(x + (h / 2) * v2, t + h / 2)
    v4, d4 = dynamics(x + h * v3, t + h)
    x = x + (h / 6) * (v1 + 2 * v2 + 2 * v3 + v4)
    log_det = log_det + (d1 + 2 * d2 + 2 * d3 + d4) / 6  # BUG: Δt missing
    return x, log_det


def integrate_forward_in_time(field, x, t0, t1, steps, probe=None, step=rk4_step):
    """Always integrates from 0 to 1, whatever was asked: from the data it runs the wrong way."""
    return integrate(field, x, min(t0, t1), max(t0, t1), steps, probe=probe, step=step)


def hutchinson_ones(field, x, t, probe):
    """1^T J probe: the vector-Jacobian product with a vector of ones, then the probe.

    Its expectation over the probe is zero, not the trace."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = field(x, t)
        (vjp,) = torch.autograd.grad(v, x, grad_outputs=torch.ones_like(v))  # BUG: J^T 1
    return v.detach(), (vjp * probe).sum(1).detach()


def hutchinson_fresh_probe(field, x, t, probe):
    """Draws a new probe at every call, i.e. at every stage of every solver step.

    Each stage is still unbiased, but the integrand is no longer one function of time: the
    result is not the solution of any ODE, and not the estimate for the probe passed in."""
    return hutchinson_divergence(field, x, t, torch.randn_like(x))  # BUG: ignores the probe


def exact_divergence_first_only(field, x, t):
    """Only the first diagonal entry of the Jacobian: one backward pass instead of dim."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = field(x, t)
        (grad,) = torch.autograd.grad(v[:, 0].sum(), x)
    return v.detach(), grad[:, 0].detach()  # BUG: trace of a 1x1 block
