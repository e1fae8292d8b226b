"""Assignment 09: continuous flows, their likelihood, and flow matching (after lesson 09).

In lesson 09's conventions: time runs from the base (``t = 0``) to the data (``t = 1``); a
solver carries ``(x, log_det)`` with ``dx/dt = v`` and ``d log_det/dt = div v``, so ``log_det``
is the log |det| of the map just applied, and the density runs from the data back to the base
with negative steps: ``log p(x) = log N(z; 0, I) + log_det``. Flow matching regresses the field
on the velocity ``x1 - x0`` of the straight path ``x_t = (1 - t) x0 + t x1``. Hutchinson's
estimate is ``probe^T J probe`` for the probe given, held fixed along a path.

The fields a student's functions receive are the grader's instruments (``kernel.TanhField``,
``kernel.FieldDynamics``): defined by a few numbers, with a Jacobian the judges know in closed
form, so every classic mistake can be computed exactly and named.
"""

from __future__ import annotations

import math
import textwrap

import torch

from flowcourse.assignments.core import (
    Assignment,
    Fail,
    Task,
    close,
    compare,
    expect_pair,
    expect_tensor,
    f32,
    reference_value,
    t,
)
from flowcourse.assignments.kernel import (
    FieldDynamics,
    TanhField,
    _times,
    log_standard_normal,
)

# --- references (named after their tasks; sent into a kernel as source when another task
# depends on them, so they use only torch, math, LOG_2PI, log_standard_normal, instruments)


def exact_divergence(field, x, t):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = field(x, t)
        div = torch.zeros(x.shape[0], dtype=x.dtype)
        for i in range(x.shape[1]):
            (row,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)
            div = div + row[:, i]
    return v.detach(), div.detach()


def rk4_step(dynamics, x, log_det, t, h):
    v1, d1 = dynamics(x, t)
    v2, d2 = dynamics(x + h / 2 * v1, t + h / 2)
    v3, d3 = dynamics(x + h / 2 * v2, t + h / 2)
    v4, d4 = dynamics(x + h * v3, t + h)
    x = x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
    return x, log_det + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)


def ode_log_prob(field, x, steps):
    h = -1.0 / steps
    z, log_det = x, torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(steps):
        z, log_det = rk4_step(
            lambda y, s: exact_divergence(field, y, s), z, log_det, 1.0 + k * h, h
        )
    return log_standard_normal(z) + log_det


def flow_matching_loss(field, x0, x1, t):
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    return ((field(x_t, t) - (x1 - x0)) ** 2).sum(-1).mean()


def hutchinson_divergence(field, x, t, probe):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = field(x, t)
        (row,) = torch.autograd.grad(v, x, grad_outputs=probe.to(v.dtype))
    return v.detach(), (row * probe).sum(-1).detach()


# --- inputs -----------------------------------------------------------------------------------


def _field_spec(rng, dim):
    """A smooth field of moderate speed: RK4 with a few steps stays well inside its stability."""
    return {
        "A": f32(rng.normal(0, 0.4, (dim, dim))),
        "B": f32(rng.normal(0, 0.4, (dim, dim))),
        "W": f32(rng.normal(0, 0.8, (dim, dim))),
        "b": f32(rng.normal(0, 0.5, dim)),
        "e": f32(rng.normal(0, 1.0, dim)),
        "c": f32(rng.normal(0, 0.8, dim)),
    }


def _number(value) -> float:
    return float(f32(value))


def _cases_divergence(rng):
    return [
        {
            "field": _field_spec(rng, dim),
            "x": f32(rng.normal(0, 1.5, (64, dim))),
            "t": _number(rng.uniform(0, 1)),
        }
        for dim in (2, 3, 4)
    ]


def _cases_rk4_step(rng):
    cases = []
    # h > 0 first: a sign mistake on the log-det is named there before |h| could hide it
    for dim, h in ((2, rng.uniform(0.1, 0.4)), (3, -rng.uniform(0.1, 0.4)), (2, -0.5)):
        cases.append(
            {
                "dynamics": _field_spec(rng, dim),
                "x": f32(rng.normal(0, 1.5, (64, dim))),
                "log_det": f32(rng.normal(0, 2.0, 64)),
                "t": _number(rng.uniform(0.5, 1.0)),
                "h": _number(h),
            }
        )
    return cases


def _cases_log_prob(rng):
    return [
        {
            "field": _field_spec(rng, dim),
            "x": f32(rng.normal(0, 1.5, (64, dim))),
            "steps": steps,
        }
        for dim, steps in ((2, 3), (3, 8), (2, 5))
    ]


def _cases_flow_matching(rng):
    cases = []
    for dim in (2, 3, 4):
        n = 128
        cases.append(
            {
                "field": _field_spec(rng, dim),
                "x0": f32(rng.normal(0, 1, (n, dim))),
                "x1": f32(rng.normal(rng.normal(0, 2, dim), rng.uniform(0.3, 1.0), (n, dim))),
                "t": f32(rng.uniform(0, 1, n)),
            }
        )
    return cases


def _cases_hutchinson(rng):
    import numpy as np

    cases = []
    for dim, kind in ((2, "normal"), (3, "signs"), (5, "normal")):
        x = rng.normal(0, 1.5, (32, dim))
        if kind == "normal":
            probe = rng.normal(0, 1, (32, dim))
        else:
            probe = rng.choice([-1.0, 1.0], (32, dim))
        # every row twice: one probe per row, so identical rows must get identical estimates
        cases.append(
            {
                "field": _field_spec(rng, dim),
                "x": f32(np.concatenate([x, x])),
                "t": _number(rng.uniform(0, 1)),
                "probe": f32(np.concatenate([probe, probe])),
            }
        )
    return cases


# --- the grader's closed forms ------------------------------------------------------------------


def _jacobian(field: TanhField, x: torch.Tensor, time) -> torch.Tensor:
    """``dv/dx`` row by row, ``(n, D, D)``: ``A + t B + diag(c (1 - tanh^2)) W``."""
    tt = _times(time, x)
    slope = field.c * (1 - torch.tanh(x @ field.W.T + field.b + tt * field.e) ** 2)
    linear = field.A + tt.reshape(-1, 1, 1) * field.B
    return linear + slope[:, :, None] * field.W


def _field(case) -> TanhField:
    return TanhField(case["field"], torch.float64)


def _expect_v(value, field, x, time, names):
    v, div = expect_pair(value, names)
    v = expect_tensor(v, tuple(x.shape), "v")
    compare(v, field(x, time), "v", bugs=[(x, "return the field's value v(x, t), not x")])
    return v, div


def _per_point(value, x, what, how):
    if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(x.shape):
        raise Fail(
            f"{what} has shape {tuple(x.shape)}, one number per point and dimension; expected "
            f"one number per point, shape ({x.shape[0]},): {how}"
        )


# --- judges -----------------------------------------------------------------------------------


def _judge_divergence(case, value):
    field, x, time = _field(case), t(case["x"]), case["t"]
    _, div = _expect_v(value, field, x, time, "v, div")
    expected = reference_value(TASKS[0], case)[1]
    jac = _jacobian(field, x, time)
    _per_point(div, x, "div", "the sum of the diagonal entries d v_i/d x_i over i")
    div = expect_tensor(div, tuple(expected.shape), "div", log_det=True)
    return compare(
        div,
        expected,
        "div",
        bugs=[
            (
                jac[:, 0, 0],
                "it holds only d v_0/d x_0: the divergence is the trace, the sum of "
                "d v_i/d x_i over every dimension i (one backward pass each)",
            ),
            (
                jac.sum((1, 2)),
                "it sums every entry of the Jacobian (a backward pass of v.sum()): keep the "
                "diagonal entries d v_i/d x_i only, one backward pass of v[:, i] for each i",
            ),
            (
                jac[:, :, 0].sum(1),
                "it adds column 0 of the Jacobian: the backward pass of v[:, i] gives row i, "
                "whose entry i belongs to the trace",
            ),
            (-expected, "it has the wrong sign: div v = trace(dv/dx)"),
        ],
    )


def _rk4(dynamics, x, time, h, stage_times=True):
    """One RK4 step: (new x, the log-det's rate (d1 + 2 d2 + 2 d3 + d4) / 6, v1, d1);
    ``stage_times=False``: every stage evaluated at t (a mistake to name)."""
    s = (lambda a: time + a) if stage_times else (lambda a: time)
    v1, d1 = dynamics(x, s(0))
    v2, d2 = dynamics(x + h / 2 * v1, s(h / 2))
    v3, d3 = dynamics(x + h / 2 * v2, s(h / 2))
    v4, d4 = dynamics(x + h * v3, s(h))
    return x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4), (d1 + 2 * d2 + 2 * d3 + d4) / 6, v1, d1


def _judge_rk4_step(case, value):
    dynamics = FieldDynamics(case["dynamics"], torch.float64)
    x, log_det, time, h = t(case["x"]), t(case["log_det"]), case["t"], case["h"]
    x_ref, ld_ref = reference_value(TASKS[1], case)
    x_new, ld_new = expect_pair(value, "x, log_det")
    x_new = expect_tensor(x_new, tuple(x_ref.shape), "x")
    _, rate, v1, d1 = _rk4(dynamics, x, time, h)
    frozen, rate_frozen, _, _ = _rk4(dynamics, x, time, h, stage_times=False)
    compare(
        x_new,
        x_ref,
        "x",
        bugs=[
            (x + h * v1, "that is an Euler step: RK4 moves x by h (k1 + 2 k2 + 2 k3 + k4) / 6"),
            (
                frozen,
                "the stages are evaluated at the wrong times: k1 at t, k2 and k3 at t + h/2, "
                "k4 at t + h",
            ),
            (2 * x - x_ref, "x moves the wrong way: add h (k1 + 2 k2 + 2 k3 + k4) / 6"),
        ],
    )
    ld_new = expect_tensor(ld_new, tuple(ld_ref.shape), "log_det", log_det=True)
    sign = (
        "the log-det changes by +h (d1 + 2 d2 + 2 d3 + d4) / 6, with h as given (negative when "
        "going back in time, so no sign to add): yours has the opposite sign"
    )
    return compare(
        ld_new,
        ld_ref,
        "log_det",
        bugs=[
            (
                h * rate,
                "the divergence is overwritten instead of accumulated: the step returns only "
                "its own increment; add it to the log_det passed in",
            ),
            (
                log_det + rate,
                "Δt missing: the increment is h (d1 + 2 d2 + 2 d3 + d4) / 6, a rate times a "
                "time (without h it adds up rates as if each step lasted one time unit)",
            ),
            (log_det - h * rate, sign),
            (
                log_det + h * d1,
                "the log-det takes an Euler step: advance it with the same RK4 combination as "
                "x, h (d1 + 2 d2 + 2 d3 + d4) / 6",
            ),
            (
                log_det + h * rate_frozen,
                "the stages are evaluated at the wrong times: t, t + h/2, t + h/2, t + h",
            ),
        ],
    )


def _solve(dynamics, x, t0, steps, h):
    """``steps`` RK4 steps of size h from t0: (z, accumulated log_det, last step's share)."""
    log_det, last = torch.zeros(x.shape[0], dtype=x.dtype), None
    for k in range(steps):
        x, last = rk4_step(dynamics, x, torch.zeros_like(log_det), t0 + k * h, h)
        log_det = log_det + last
    return x, log_det, last


def _judge_log_prob(case, value):
    dynamics = FieldDynamics(case["field"], torch.float64)
    x, steps = t(case["x"]), case["steps"]
    expected = reference_value(TASKS[2], case)
    got = expect_tensor(value, tuple(expected.shape), "log p(x)", log_det=True)
    z, log_det, last = _solve(dynamics, x, 1.0, steps, -1.0 / steps)
    direction = (
        "wrong time direction: the density runs from the data at t = 1 back to the base at "
        "t = 0, with negative steps h = -1/steps at times 1, 1 + h, ..."
    )
    bugs = []
    for t0, h in ((0.0, 1.0 / steps), (1.0, 1.0 / steps), (0.0, -1.0 / steps)):
        z_w, ld_w, _ = _solve(dynamics, x, t0, steps, h)
        bugs.append((log_standard_normal(z_w) + ld_w, direction))
    bugs += [
        (
            log_standard_normal(z) + last,
            "the divergence is overwritten instead of accumulated: only the last step's "
            "log-det is left; pass the running log_det into every rk4_step",
        ),
        (
            log_standard_normal(z) - log_det,
            "add the log-det: log p(x) = log N(z; 0, I) + log_det, where log_det (the time "
            "integral of div v from 1 to 0) belongs to the map from the data to the base",
        ),
        (log_det, "the base log-density log N(z; 0, I) is missing"),
        (
            expected + 0.5 * x.shape[1] * math.log(2 * math.pi),
            "the constant -D/2 log(2 pi) of the base is missing",
        ),
        (
            log_standard_normal(x) + log_det,
            "the base density is evaluated at x: evaluate it at z, the end of the path",
        ),
    ]
    return compare(got, expected, "log p(x)", bugs=bugs)


def _judge_flow_matching(case, value):
    field = _field(case)
    x0, x1, time = t(case["x0"]), t(case["x1"]), t(case["t"])
    expected = reference_value(TASKS[3], case)
    got = expect_tensor(value, (), "the loss")
    tc = time[:, None]
    x_t, target = (1 - tc) * x0 + tc * x1, x1 - x0
    backwards = tc * x0 + (1 - tc) * x1

    def loss(points, velocity, times=time):
        return ((field(points, times) - velocity) ** 2).sum(-1).mean()

    direction = (
        "wrong time direction: the path x_t = (1 - t) x0 + t x1 starts at the base x0 (t = 0) "
        "and reaches the data x1 at t = 1, so its velocity, the target, is x1 - x0"
    )
    return compare(
        got,
        expected,
        "the loss",
        bugs=[
            (loss(x_t, -target), direction),
            (loss(backwards, target), direction),
            (loss(backwards, -target), direction),
            (loss(x_t, target, 1 - time), direction),
            (
                expected / x0.shape[1],
                "a mean over every entry divides by the dimension D: sum the squared error "
                "over the dimensions, then average over the batch, .sum(-1).mean()",
            ),
            (
                expected * x0.shape[0],
                "average over the batch: the loss is the mean of the squared error",
            ),
            (
                (field(x_t, time) - target).norm(dim=-1).mean(),
                "square the error: the loss is the mean of ||v(x_t, t) - (x1 - x0)||^2",
            ),
            (loss(x_t, x1), "the regression target is the path's velocity x1 - x0, not x1"),
            (loss(x1, target), "evaluate the field on the path, at (x_t, t), not at the data"),
            (loss(x0, target), "evaluate the field on the path, at (x_t, t), not at the base"),
        ],
    )


def _judge_hutchinson(case, value):
    field, x, time, probe = _field(case), t(case["x"]), case["t"], t(case["probe"])
    _, estimate = _expect_v(value, field, x, time, "v, estimate")
    expected = reference_value(TASKS[4], case)[1]
    _per_point(estimate, x, "the estimate", "probe^T J dotted with the probe, a sum over i")
    estimate = expect_tensor(estimate, tuple(expected.shape), "the estimate", log_det=True)
    jac = _jacobian(field, x, time)
    half = x.shape[0] // 2
    if close(estimate, expected, 1e-4, 1e-4):
        return compare(estimate, expected, "the estimate")
    if not close(estimate[:half], estimate[half:], 1e-4, 1e-4):
        raise Fail(
            "the estimate is not the one for the probe passed in: identical rows with identical "
            "probes got different values, as if a fresh probe were drawn at each call. Use the "
            "probe you are given: a fresh probe at every solver stage makes the log-det no "
            "longer one ODE's solution"
        )
    return compare(
        estimate,
        expected,
        "the estimate",
        bugs=[
            (
                torch.einsum("nij,nj->n", jac, probe),
                "that is J^T 1 (a vector of ones in the backward pass), dotted with the probe: "
                "1^T J probe averages to zero, not to the trace. Take the vector-Jacobian "
                "product with the probe (grad_outputs=probe), then dot it with the same probe",
            ),
            (
                torch.einsum("ni,nij->n", probe, jac),
                "probe^T J is summed, not dotted with the probe: probe^T J 1 averages to zero, "
                "not to the trace; dot it with the same probe",
            ),
            (
                torch.diagonal(jac, dim1=1, dim2=2).sum(-1),
                "that is the exact divergence (D backward passes): the task is the one-probe "
                "estimate probe^T J probe, one backward pass",
            ),
            (-expected, "it has the wrong sign: the estimate is probe^T (dv/dx) probe"),
        ],
    )


# --- figures drawn by the check cells when a task passes --------------------------------------

# A field whose flow bends the base into a curved, lopsided density (for the figures).
_DEMO_FIELD = {
    "A": [[0.3, -0.6], [0.4, -0.2]],
    "B": [[-0.2, 0.5], [0.0, 0.3]],
    "W": [[1.2, -0.6], [0.9, 1.0]],
    "b": [0.2, -0.3],
    "e": [1.0, -0.5],
    "c": [0.9, -0.8],
}
_SPIRAL = ([[-0.4, -2.0], [2.0, -0.6]], 0.5, 1.0)  # lesson 09's linear field: matrix, a, b


def _say(text: str) -> None:
    print(textwrap.fill(text, 100, subsequent_indent="    "))


def _plot_log_prob(obj, cases, values):
    import matplotlib.pyplot as plt

    from flowcourse.continuous import LinearField

    spiral = LinearField(torch.tensor(_SPIRAL[0], dtype=torch.float64), *_SPIRAL[1:])
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = spiral.log_prob(x)
    counts = [1, 2, 4, 8, 16, 32, 64]
    errors = [(obj(spiral, x, s) - exact).abs().max().item() for s in counts]

    field = TanhField(_DEMO_FIELD, torch.float64)
    lo, hi, res = -7.0, 7.0, 112  # cells of 0.125: the box holds all but ~1e-6 of the mass
    ticks = lo + (torch.arange(res, dtype=torch.float64) + 0.5) * (hi - lo) / res
    log_q = obj(field, torch.cartesian_prod(ticks, ticks), 16)
    mass = (log_q.exp().sum() * ((hi - lo) / res) ** 2).item()

    fig, (ax_err, ax_density) = plt.subplots(1, 2, figsize=(11, 4))
    ax_err.loglog(counts, errors, "o-", label="your ode_log_prob")
    ax_err.loglog(counts, [errors[2] * (4 / s) ** 4 for s in counts], "k--", lw=1,
                  label="slope $-4$")  # fmt: skip
    ax_err.set(xlabel="RK4 steps from t = 1 to 0", ylabel="max |log p error| (nats)",
               title="Lesson 09's spiral: against the closed form")  # fmt: skip
    ax_err.legend()
    image = ax_density.imshow(log_q.exp().reshape(res, res).T.numpy(), origin="lower",
                              extent=(lo, hi, lo, hi), cmap="viridis")  # fmt: skip
    ax_density.grid(False)
    ax_density.set(xlabel="$x_1$", ylabel="$x_2$", xlim=(-5, 5), ylim=(-5, 5),
                   title="N(0, I) carried by a nonlinear field, 16 steps")  # fmt: skip
    fig.colorbar(image, ax=ax_density, label="density")
    fig.tight_layout()
    _say(
        f"spiral, 32 RK4 steps: largest error {errors[counts.index(32)]:.1e} nats; the density "
        f"of the nonlinear field integrates to {mass:.4f} over [-7, 7]^2"
    )


def gaussian_marginal_field(mean: torch.Tensor, std: float):
    """The marginal velocity ``E[x1 - x0 | x_t = x]`` when ``x1 ~ N(mean, std^2 I)``:
    ``mean + (t std^2 - (1 - t)) / ((1 - t)^2 + t^2 std^2) (x - t mean)``."""

    def field(x, time):
        tt = _times(time, x)
        gain = (tt * std**2 - (1 - tt)) / ((1 - tt) ** 2 + tt**2 * std**2)
        return mean + gain * (x - tt * mean)

    return field


def _plot_flow_matching(obj, cases, values):
    import matplotlib.pyplot as plt

    mean, std, n = torch.tensor([2.0, 1.0], dtype=torch.float64), 0.5, 200_000
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x1 = mean + std * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    time = torch.rand(n, generator=gen, dtype=torch.float64)
    u = gaussian_marginal_field(mean, std)

    def swirl(x, tt):  # a perturbation: a rotation about the path's mean
        centred = x - _times(tt, x) * mean
        return torch.stack([-centred[:, 1], centred[:, 0]], 1)

    scales = [k / 10 for k in range(-10, 11)]
    losses = [
        obj(lambda x, tt, a=a: u(x, tt) + a * swirl(x, tt), x0, x1, time).item() for a in scales
    ]
    # The floor: E || (x1 - x0) - u_t(x_t) ||^2, per dimension the conditional variance of
    # x1 - x0 given x_t, (1 + std^2) - (t std^2 - (1 - t))^2 / ((1 - t)^2 + t^2 std^2)
    ts = (torch.arange(10_000, dtype=torch.float64) + 0.5) / 10_000
    var_t = (1 - ts) ** 2 + ts**2 * std**2
    floor = (2 * ((1 + std**2) - (ts * std**2 - (1 - ts)) ** 2 / var_t)).mean().item()

    fig, (ax_loss, ax_paths) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(scales, losses, "o-", ms=3, label="your flow_matching_loss")
    ax_loss.axhline(floor, color="k", ls="--", lw=1, label="its floor (spread of the lines)")
    ax_loss.set(xlabel="a, in the field u + a · swirl", ylabel="loss",
                title="Flow-matching loss around the marginal field u")  # fmt: skip
    ax_loss.legend()
    z = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    path = [z]
    zero = lambda y, s: (u(y, s), torch.zeros(len(y), dtype=y.dtype))  # noqa: E731
    for k in range(32):
        path.append(rk4_step(zero, path[-1], torch.zeros(len(z)), k / 32, 1 / 32)[0])
    path = torch.stack(path)
    ax_paths.scatter(x1[:1000, 0], x1[:1000, 1], s=2, color="0.7", label="data x1")
    ax_paths.plot(path[:, :, 0], path[:, :, 1], color="C0", lw=0.8)
    ax_paths.scatter(path[0, :, 0], path[0, :, 1], s=10, color="C0", label="base, t = 0")
    ax_paths.scatter(path[-1, :, 0], path[-1, :, 1], s=10, color="C3", label="t = 1")
    ax_paths.set(xlabel="$x_1$", ylabel="$x_2$", title="Paths of the marginal field u")
    ax_paths.set_aspect("equal")
    ax_paths.legend(loc="lower right", fontsize=8, markerscale=2)
    fig.tight_layout()
    best = scales[min(range(len(losses)), key=losses.__getitem__)]
    _say(
        f"lowest loss at a = {best:g}: {min(losses):.3f} (an average over {n:,} draws); its "
        f"floor, the spread of the straight lines through each point: {floor:.3f}"
    )


def _plot_hutchinson(obj, cases, values):
    import matplotlib.pyplot as plt

    field = TanhField(_DEMO_FIELD, torch.float64)
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    counts = [2, 4, 8, 16, 32]
    gen = torch.Generator().manual_seed(11)

    def log_p(divergence, steps):
        z, log_det, _ = _solve(divergence, x, 1.0, steps, -1.0 / steps)
        return (log_standard_normal(z) + log_det).item()

    exact = log_p(lambda y, s: exact_divergence(field, y, s), 32)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.axhline(exact, color="k", lw=1, label="exact divergence")
    spread = []
    for k in range(3):
        probe = torch.randn(1, 2, generator=gen, dtype=torch.float64)
        held = [log_p(lambda y, s, e=probe: obj(field, y, s, e), n) for n in counts]

        def fresh(y, s):
            return obj(field, y, s, torch.randn(y.shape, generator=gen, dtype=y.dtype))

        drawn = [log_p(fresh, n) for n in counts]
        ax.plot(counts, held, "o-", color=f"C{k}", label=f"probe {k + 1}, held fixed")
        ax.plot(counts, drawn, "x:", color=f"C{k}", label=f"fresh probe at every stage ({k + 1})")
        spread.append((abs(held[-1] - held[-2]), abs(drawn[-1] - drawn[-2])))
    ax.set_xscale("log", base=2)
    ax.set(xlabel="RK4 steps from t = 1 to 0", ylabel="estimate of log p(x) (nats)",
           title="One point, three probes: Hutchinson's estimate along the path")  # fmt: skip
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    held_change = max(h for h, _ in spread)
    fresh_change = max(f for _, f in spread)
    _say(
        f"from 16 to 32 steps, a held probe's estimate moves by at most {held_change:.0e} "
        f"nats (it converges: one ODE per probe); with fresh probes, by up to "
        f"{fresh_change:.2f} nats"
    )


TASKS = (
    Task(
        "exact_divergence",
        2,
        "exact_divergence(field, x, t) -> (v, div)",
        exact_divergence,
        (("tanh_field", "field"), ("tensor", "x"), ("number", "t")),
        _cases_divergence,
        _judge_divergence,
        library=("exact_divergence",),
    ),
    Task(
        "rk4_step",
        3,
        "rk4_step(dynamics, x, log_det, t, h) -> (x, log_det)",
        rk4_step,
        (
            ("field_dynamics", "dynamics"),
            ("tensor", "x"),
            ("tensor", "log_det"),
            ("number", "t"),
            ("number", "h"),
        ),
        _cases_rk4_step,
        _judge_rk4_step,
        library=("rk4_step", "integrate"),
    ),
    Task(
        "ode_log_prob",
        3,
        "ode_log_prob(field, x, steps) -> log_p",
        ode_log_prob,
        (("tanh_field", "field"), ("tensor", "x"), ("number", "steps")),
        _cases_log_prob,
        _judge_log_prob,
        depends=("exact_divergence", "rk4_step"),
        library=("integrate", "ContinuousFlow"),
        plot=_plot_log_prob,
    ),
    Task(
        "flow_matching_loss",
        2,
        "flow_matching_loss(field, x0, x1, t) -> loss",
        flow_matching_loss,
        (("tanh_field", "field"), ("tensor", "x0"), ("tensor", "x1"), ("tensor", "t")),
        _cases_flow_matching,
        _judge_flow_matching,
        library=("flow_matching_loss",),
        plot=_plot_flow_matching,
    ),
    Task(
        "hutchinson_divergence",
        2,
        "hutchinson_divergence(field, x, t, probe) -> (v, estimate)",
        hutchinson_divergence,
        (("tanh_field", "field"), ("tensor", "x"), ("number", "t"), ("tensor", "probe")),
        _cases_hutchinson,
        _judge_hutchinson,
        library=("hutchinson_divergence",),
        plot=_plot_hutchinson,
    ),
)

ASSIGNMENT = Assignment(
    "09_continuous_flows", "Continuous flows: the likelihood and flow matching", TASKS
)
