"""Assignment 01: the density of a transformed variable (after lesson 01)."""

from __future__ import annotations

import torch

from flowcourse.assignments.core import (
    Assignment,
    Fail,
    Task,
    compare,
    expect_tensor,
    f32,
    reference_value,
    t,
)
from flowcourse.assignments.kernel import LOG_2PI, TanhMap, log_standard_normal

# --- references (named after their tasks; sent into a kernel as source when another task
# depends on them, so they use only torch, math, LOG_2PI, log_standard_normal, instruments)


def histogram_density(samples, edges):
    n = samples.shape[0]
    index = torch.searchsorted(edges, samples, right=True) - 1
    bins = edges.shape[0] - 1
    index = torch.where(samples == edges[-1], bins - 1, index)  # the last bin is closed
    inside = (index >= 0) & (index < bins)
    counts = torch.bincount(index[inside], minlength=bins).to(samples.dtype)
    return counts / (n * (edges[1:] - edges[:-1]))


def lognormal_log_prob(x, mu, sigma):
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    z = (torch.log(x) - mu) / sigma
    return -0.5 * z**2 - 0.5 * LOG_2PI - torch.log(sigma) - torch.log(x)


def linear_log_prob(x, A, b):
    z = torch.linalg.solve(A, (x - b).T).T
    return log_standard_normal(z) - torch.linalg.slogdet(A)[1]


def log_det_jacobian(f, z):
    if isinstance(f, TanhMap):  # the grader's map: its Jacobian in closed form
        slope = f.c * (1 - torch.tanh(z @ f.W.T + f.d) ** 2)
        return torch.linalg.slogdet(f.M + slope.unsqueeze(-1) * f.W)[1]
    out = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], row)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# --- inputs -----------------------------------------------------------------------------------


def _cases_histogram(rng):
    cases = []
    for n, bins, kind in ((400, 6, "normal"), (1000, 12, "lognormal"), (1500, 20, "mixture")):
        if kind == "normal":
            samples = rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), n)
        elif kind == "lognormal":
            samples = rng.lognormal(0.0, rng.uniform(0.4, 0.8), n)
        else:
            samples = rng.normal(0, 1, n) + 3 * (rng.uniform(size=n) < 0.3)
        lo, hi = sorted(rng.choice(samples, 2, replace=False))
        lo, hi = min(lo, float(samples.min()) + 0.3), max(hi, float(samples.max()) - 0.3)
        inner = rng.uniform(lo, hi, bins - 1)
        edges = sorted([lo, *inner.tolist(), hi])
        cases.append({"samples": f32(samples), "edges": f32(edges)})
    return cases


def _cases_lognormal(rng):
    cases = []
    for _ in range(4):
        mu, sigma = float(rng.uniform(-1, 1)), float(rng.uniform(0.3, 2.0))
        x = rng.lognormal(mu, sigma, 64)
        cases.append({"x": f32(x), "mu": float(f32(mu)), "sigma": float(f32(sigma))})
    return cases


def random_matrix(rng, dim, negative_det: bool):
    """A well-conditioned random matrix whose determinant has the sign asked for."""
    import numpy as np

    while True:
        A = rng.normal(0, 1, (dim, dim)) + np.eye(dim) * rng.uniform(0.5, 1.5)
        det = np.linalg.det(A)
        if abs(det) > 0.3 and np.linalg.cond(A) < 20:
            break
    if (det < 0) != negative_det:
        A[0] = -A[0]
    return A


def _cases_linear(rng):
    cases = []
    for dim, negative in ((2, True), (3, False), (1, True), (3, True)):
        A = random_matrix(rng, dim, negative)
        b = rng.normal(0, 1, dim)
        x = rng.normal(0, 1, (64, dim)) @ A.T + b
        cases.append({"x": f32(x), "A": f32(A), "b": f32(b)})
    return cases


def _cases_log_det_jacobian(rng):
    cases = []
    for dim, negative in ((2, True), (3, False), (2, False)):
        spec = {
            "M": f32(random_matrix(rng, dim, negative)),
            "W": f32(rng.normal(0, 0.5, (dim, dim))),
            "c": f32(rng.uniform(-0.3, 0.3, dim)),
            "d": f32(rng.normal(0, 0.5, dim)),
        }
        cases.append({"f": spec, "z": f32(rng.normal(0, 1, (32, dim)))})
    return cases


# --- judges -----------------------------------------------------------------------------------


def _judge_histogram(case, value):
    samples, edges = t(case["samples"]), t(case["edges"])
    expected = reference_value(TASKS[0], case)
    got = expect_tensor(value, tuple(expected.shape), "the density")
    widths, n = edges[1:] - edges[:-1], samples.shape[0]
    counts = expected * n * widths
    inside = counts.sum()
    bugs = [
        (counts / n, "it is the fraction of samples per bin; divide it by the bin width"),
        (counts / widths, "divide the counts by the total number of samples n as well"),
        (counts, "those are raw counts: divide by n and by each bin's width"),
        (
            counts / (inside * widths),
            f"you divided by the {int(inside)} samples inside the edges; divide by all "
            f"n = {n} samples, so the estimate targets the density itself",
        ),
        (
            counts / (n * widths.mean()),
            "divide each bin by its own width (these bins have different widths)",
        ),
    ]
    return compare(got, expected, "the density", bugs=bugs, atol=1e-5)


def _judge_lognormal(case, value):
    x = t(case["x"])
    expected = reference_value(TASKS[1], case)
    got = expect_tensor(value, tuple(expected.shape), "log p_X(x)")
    log_x, log_sigma = torch.log(x), torch.log(torch.tensor(case["sigma"], dtype=torch.float64))
    bugs = [
        (
            expected + log_x + log_sigma,
            "the Jacobian term is missing: add log|dz/dx| = -log x - log sigma, where "
            "z = (log x - mu) / sigma",
        ),
        (expected + log_x, "the term -log x is missing (the derivative of log x is 1/x)"),
        (expected + log_sigma, "the term -log sigma is missing (dz/dx has a 1/sigma)"),
        (
            expected + 2 * log_x + 2 * log_sigma,
            "the Jacobian term has the wrong sign: it is log|dz/dx| = -log x - log sigma",
        ),
    ]
    return compare(got, expected, "log p_X(x)", bugs=bugs, nan_hint="is x > 0 handled?")


def _judge_linear(case, value):
    x, A, b = t(case["x"]), t(case["A"]), t(case["b"])
    expected = reference_value(TASKS[2], case)
    got = expect_tensor(value, tuple(expected.shape), "log p_X(x)")
    log_det = torch.linalg.slogdet(A)[1]
    bugs = [
        (expected + log_det, "the term -log|det A| is missing"),
        (expected + 2 * log_det, "log|det A| has the wrong sign: it is subtracted"),
        (
            log_standard_normal((x - b) @ A.T) - log_det,
            "z is A^{-1}(x - b): solve with A (torch.linalg.solve), do not multiply by A",
        ),
    ]
    sign = "negative" if torch.linalg.det(A) < 0 else "positive"
    return compare(
        got,
        expected,
        "log p_X(x)",
        bugs=bugs,
        nan_hint=f"det A is {sign} here ({torch.linalg.det(A).item():.4g}): take log|det A| "
        "(torch.linalg.slogdet), not log det A",
    )


def _judge_log_det_jacobian(case, value):
    expected = reference_value(TASKS[3], case)
    n, d = t(case["z"]).shape
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (n, d, n, d):
        raise Fail(
            f"returned shape {(n, d, n, d)}: that is the Jacobian of the whole batch; take the "
            "block of each sample, jac[i, :, i, :], or use torch.func.vmap(torch.func.jacrev(f))"
        )
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (n, d, d):
        raise Fail(f"returned shape {(n, d, d)}: those are the Jacobians; return log|det| of each")
    got = expect_tensor(value, (n,), "log|det J|")
    bugs = [
        (expected.exp(), "that is |det J|; return its log"),
        (-expected, "it has the wrong sign"),
    ]
    return compare(
        got,
        expected,
        "log|det J|",
        bugs=bugs,
        nan_hint="det J is negative for this map: take log|det J| (torch.linalg.slogdet)",
    )


# --- figures drawn by passing checks: the student's own function at work --------------------


def _plot_histogram(obj, cases, values):
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(0)
    samples = torch.exp(0.5 * torch.randn(5000, generator=gen))
    edges = torch.linspace(0.2, 3.5, 34)
    density = obj(samples, edges).detach()
    x = torch.linspace(0.05, 3.5, 400)
    exact = lognormal_log_prob(x, 0.0, 0.5).exp()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.stairs(density.numpy(), edges.numpy(), fill=True, alpha=0.4, label="your histogram_density")
    ax.plot(x, exact, color="C1", label="exact density of exp(0.5 Z)")
    ax.set(
        title="5000 samples of exp(0.5 Z): histogram estimate vs exact density",
        xlabel="x",
        ylabel="density",
    )
    ax.legend()


def _plot_lognormal(obj, cases, values):
    import matplotlib.pyplot as plt

    mu, sigma = 0.2, 0.6
    gen = torch.Generator().manual_seed(0)
    samples = torch.exp(mu + sigma * torch.randn(20000, generator=gen))
    x = torch.linspace(0.02, 5.0, 400)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(
        samples.numpy(),
        bins=80,
        range=(0, 5),
        density=True,
        alpha=0.4,
        label="histogram of 20000 samples",
    )
    ax.plot(x, obj(x, mu, sigma).detach().exp(), color="C1", label="your lognormal_log_prob, exp'd")
    ax.set(
        title=f"X = exp({mu} + {sigma} Z): formula against samples", xlabel="x", ylabel="density"
    )
    ax.legend()


def _plot_linear(obj, cases, values):
    import matplotlib.pyplot as plt

    A = torch.tensor([[1.0, 0.6], [-0.4, 0.5]])
    b = torch.tensor([0.5, -0.2])
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(1500, 2, generator=gen) @ A.T + b
    xs, ys = torch.linspace(-3, 4, 150), torch.linspace(-2.5, 2, 120)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    density = obj(grid, A, b).detach().exp().reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter(
        samples[:, 0], samples[:, 1], s=2, color="0.5", alpha=0.5, label="samples of A z + b"
    )
    contours = ax.contour(gx, gy, density, levels=6, cmap="viridis")
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    ax.plot([], [], color="C2", label="contours of your linear_log_prob, exp'd")
    ax.set(title="X = A Z + b in 2-D: your density over samples", xlabel="$x_1$", ylabel="$x_2$")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)


TASKS = (
    Task(
        "histogram_density",
        2,
        "histogram_density(samples, edges) -> density",
        histogram_density,
        (("tensor", "samples"), ("tensor", "edges")),
        _cases_histogram,
        _judge_histogram,
        plot=_plot_histogram,
    ),
    Task(
        "lognormal_log_prob",
        2,
        "lognormal_log_prob(x, mu, sigma) -> log_p",
        lognormal_log_prob,
        (("tensor", "x"), ("number", "mu"), ("number", "sigma")),
        _cases_lognormal,
        _judge_lognormal,
        plot=_plot_lognormal,
    ),
    Task(
        "linear_log_prob",
        3,
        "linear_log_prob(x, A, b) -> log_p",
        linear_log_prob,
        (("tensor", "x"), ("tensor", "A"), ("tensor", "b")),
        _cases_linear,
        _judge_linear,
        plot=_plot_linear,
    ),
    Task(
        "log_det_jacobian",
        3,
        "log_det_jacobian(f, z) -> log_det",
        log_det_jacobian,
        (("tanh_map", "f"), ("tensor", "z")),
        _cases_log_det_jacobian,
        _judge_log_det_jacobian,
    ),
)

ASSIGNMENT = Assignment("01_change_of_variables", "Density of a transformed variable", TASKS)
