"""Assignment 03: planar flows (after lesson 03)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowcourse.assignments.core import (
    Assignment,
    Fail,
    Task,
    compare,
    expect_pair,
    expect_tensor,
    f32,
    reference_value,
    t,
)
from flowcourse.assignments.kernel import log_standard_normal

# --- references (named after their tasks; see change_of_variables.py) -------------------------


def planar_u_hat(u, w):
    wu = (w * u).sum(-1, keepdim=True)
    return u + (F.softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True)


def planar_forward(z, u, w, b):
    u_hat = planar_u_hat(u, w)
    h = torch.tanh((z * w).sum(-1) + b)
    y = z + h.unsqueeze(-1) * u_hat
    return y, torch.log((1 + (1 - h**2) * (w * u_hat).sum(-1)).abs())


def planar_flow_sample(z0, params):
    z, log_q = z0, log_standard_normal(z0)
    for u, w, b in params:
        z, log_det = planar_forward(z, u, w, b)
        log_q = log_q - log_det
    return z, log_q


# --- inputs -----------------------------------------------------------------------------------


def planar_params(rng, dim, wu_target=None):
    """Random (u, w); with ``wu_target``, u moved along w so that w.u equals it."""
    w = rng.normal(0, 1, dim)
    u = rng.normal(0, 1, dim)
    if wu_target is not None:
        u = u + (wu_target - w @ u) * w / (w @ w)
    return u, w


def _cases_u_hat(rng):
    cases = []
    for dim, wu in ((2, -3.0), (3, -1.5), (2, -0.5), (5, 0.7), (3, 2.5), (2, -6.0), (4, None)):
        u, w = planar_params(rng, dim, wu)
        cases.append({"u": f32(u), "w": f32(w)})
    return cases


def _cases_planar_forward(rng):
    cases = []
    for dim, wu in ((2, -2.5), (3, 0.8), (2, None), (5, -1.2)):
        u, w = planar_params(rng, dim, wu)
        cases.append(
            {
                "z": f32(rng.normal(0, 1, (64, dim))),
                "u": f32(u),
                "w": f32(w),
                "b": float(f32(rng.normal(0, 0.5))),
            }
        )
    return cases


def _cases_planar_sample(rng):
    cases = []
    for k, dim in ((2, 2), (4, 2), (3, 3)):
        params = []
        for _ in range(k):
            u, w = planar_params(rng, dim, float(rng.uniform(-3, 2)))
            params.append([f32(u), f32(w), float(f32(rng.normal(0, 0.5)))])
        cases.append({"z0": f32(rng.normal(0, 1, (64, dim))), "params": params})
    return cases


# --- judges -----------------------------------------------------------------------------------


def _judge_u_hat(case, value):
    u, w = t(case["u"]), t(case["w"])
    expected = reference_value(TASKS[0], case)
    got = expect_tensor(value, tuple(expected.shape), "u_hat")
    wu = (w @ u).item()
    w_sq = (w @ w).item()
    bugs = [
        (
            u,
            f"u_hat is u: no correction (here w.u = {wu:.3g}, and the map is invertible only if "
            "w.u_hat >= -1)",
        ),
        (
            u + (F.softplus(torch.tensor(wu)) - wu) * w / w_sq,
            "w.u_hat = softplus(w.u) > 0: the constraint is w.u_hat > -1, so "
            "m(a) = -1 + softplus(a)",
        ),
        (
            u + (F.softplus(torch.tensor(wu)) - 1 - wu) * w,
            "the correction along w must be divided by |w|^2",
        ),
    ]
    try:
        return compare(got, expected, "u_hat", bugs=bugs)
    except Fail as failure:
        w_u_hat = (w @ got).item()
        if w_u_hat <= -1:
            raise Fail(
                f"{failure}; w.u_hat = {w_u_hat:.4g} <= -1, so the map is not invertible"
            ) from None
        raise


def _judge_planar_forward(case, value):
    z, u, w = t(case["z"]), t(case["u"]), t(case["w"])
    b = case["b"]
    y_ref, ld_ref = reference_value(TASKS[1], case)
    y, log_det = expect_pair(value, "y, log_det")
    y = expect_tensor(y, tuple(y_ref.shape), "y")
    h = torch.tanh(z @ w + b)
    compare(
        y,
        y_ref,
        "y",
        bugs=[(z + h[:, None] * u, "you used u; the map uses u_hat = planar_u_hat(u, w)")],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    u_hat = planar_u_hat(u, w)
    det_u = 1 + (1 - h**2) * (w @ u)
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (det_u.abs().log(), "the log-det must use u_hat too, not u"),
            (torch.log((1 + w @ u_hat).abs()).expand_as(ld_ref), "psi is (1 - tanh^2(w.z + b)) w"),
            (-ld_ref, "it has the wrong sign"),
            ((1 + (1 - h**2) * (w @ u_hat)), "that is det J; return log|det J|"),
        ],
        nan_hint="det J = 1 + u_hat.psi can be negative: take its absolute value before the log",
    )


def _judge_planar_sample(case, value):
    z0 = t(case["z0"])
    params = [tuple(t(p) for p in layer) for layer in case["params"]]
    z_ref, lq_ref = reference_value(TASKS[2], case)
    z, log_q = expect_pair(value, "zK, log_q")
    z = expect_tensor(z, tuple(z_ref.shape), "zK")
    z_rev = z0
    for u, w, b in reversed(params):
        z_rev, _ = planar_forward(z_rev, u, w, b)
    compare(z, z_ref, "zK", bugs=[(z_rev, "apply the layers in the order of the list")])
    log_q = expect_tensor(log_q, tuple(lq_ref.shape), "log_q", log_det=True)
    total = log_standard_normal(z0) - lq_ref
    return compare(
        log_q,
        lq_ref,
        "log_q",
        bugs=[
            (log_standard_normal(z0) + total, "subtract the log-dets: log q(zK) = log p(z0) - sum"),
            (-total, "the base log-density log p(z0) is missing"),
            (log_standard_normal(z_ref) - total, "the base density is evaluated at z0, not zK"),
        ],
    )


def _plot_planar_sample(obj, cases, values):
    import matplotlib.pyplot as plt

    case, (z, log_q) = cases[1], values[1]
    z0 = torch.tensor(case["z0"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True, sharey=True)
    for ax, points, title in (
        (axes[0], z0, "z0 ~ N(0, I)"),
        (axes[1], z, f"zK after {len(case['params'])} planar layers"),
    ):
        art = ax.scatter(points[:, 0], points[:, 1], c=log_q.numpy(), s=14, cmap="viridis")
        ax.set(title=title, xlabel="$z_1$", ylabel="$z_2$")
        ax.set_aspect("equal")
    fig.colorbar(art, ax=axes, label="log q(zK), your planar_flow_sample")
    fig.suptitle("The same 64 points before and after the flow, coloured by their log-density")


TASKS = (
    Task(
        "planar_u_hat",
        3,
        "planar_u_hat(u, w) -> u_hat",
        planar_u_hat,
        (("tensor", "u"), ("tensor", "w")),
        _cases_u_hat,
        _judge_u_hat,
        library=("planar_u_hat",),
    ),
    Task(
        "planar_forward",
        4,
        "planar_forward(z, u, w, b) -> (y, log_det)",
        planar_forward,
        (("tensor", "z"), ("tensor", "u"), ("tensor", "w"), ("tensor", "b")),
        _cases_planar_forward,
        _judge_planar_forward,
        depends=("planar_u_hat",),
        library=("planar",),
    ),
    Task(
        "planar_flow_sample",
        3,
        "planar_flow_sample(z0, params) -> (zK, log_q)",
        planar_flow_sample,
        (("tensor", "z0"), ("layers", "params")),
        _cases_planar_sample,
        _judge_planar_sample,
        depends=("planar_u_hat", "planar_forward"),
        plot=_plot_planar_sample,
    ),
)

ASSIGNMENT = Assignment("03_planar_flow", "Planar flows", TASKS)
