"""Assignment 08: MADE masks and rational-quadratic splines (after lesson 08).

In lesson 08's conventions: input ``i`` has degree ``m(i)`` in ``1..D``; a hidden unit of
degree ``m(k)`` reads units of the layer below of degree ``<= m(k)`` (the ``>=`` rule), output
``i`` reads hidden units of degree ``< m(i)`` (the strict ``>`` rule); a mask is ``(out, in)``,
as ``nn.Linear``'s weight. A spline has ``K`` bins on ``[-B, B]`` and raw parameters ``widths,
heights: (n, K)`` (softmax, each bin at least ``min_bin = 1e-3`` of the interval) and
``derivatives: (n, K - 1)`` (``min_derivative + softplus(raw + offset)``, a raw 0 is slope 1);
the boundary slopes are fixed, ``d_0 = d_K = 1``, and outside ``[-B, B]`` the spline is the
identity. ``rq_spline`` is the spline itself, ``x -> y``; ``rq_spline_inverse`` solves the
quadratic with the stable root ``xi = 2c / (-b - sqrt(b^2 - 4ac))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowcourse.assignments.core import (
    Assignment,
    Fail,
    Task,
    Traced,
    close,
    compare,
    expect_pair,
    expect_tensor,
    f32,
    kind_of,
    reference_value,
    t,
)

MIN_BIN = 1e-3  # as flowcourse.splines (and the references' defaults below)
MIN_DERIVATIVE = 1e-3
# Roundings a correct float32 spline may accumulate per input or knot (see _tolerances): at
# most 1.9 measured for three float32 implementations (the reference, tests/planted.py's,
# and one with searchsorted, pre-scaled knots and a log-det as a sum of logs) over 200 grader
# seeds; 16 leaves a wide margin.
ROUNDING = 16
# Of 1 + |gradient|: gradients are checked for NaN, for 0s and for gross errors (the same
# implementations differ from float64 by at most 4e-3 there).
GRADIENT_TOLERANCE = 0.05

# --- references (named after their tasks; see change_of_variables.py) -------------------------


def made_masks(in_degrees, hidden_degrees):
    masks, below = [], in_degrees
    for degrees in hidden_degrees:
        masks.append((degrees[:, None] >= below[None, :]).to(torch.get_default_dtype()))
        below = degrees
    masks.append((in_degrees[:, None] > below[None, :]).to(torch.get_default_dtype()))
    return masks


def rq_knots(widths, heights, derivatives, bound, min_bin=1e-3, min_derivative=1e-3):
    def edges(raw):
        share = min_bin + (1 - min_bin * raw.shape[-1]) * torch.softmax(raw, dim=-1)
        total = torch.cumsum(share, dim=-1)
        return -bound + 2 * bound * F.pad(total / total[..., -1:], (1, 0))

    offset = math.log(math.expm1(1 - min_derivative))
    slopes = min_derivative + F.softplus(derivatives + offset)
    return edges(widths), edges(heights), F.pad(slopes, (1, 1), value=1.0)


def rq_spline(x, widths, heights, derivatives, bound):
    xk, yk, dk = rq_knots(widths, heights, derivatives, bound)
    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)
    k = (v[:, None] >= xk[:, 1:-1]).sum(-1, keepdim=True)
    x0, x1 = xk.gather(-1, k)[:, 0], xk.gather(-1, k + 1)[:, 0]
    y0, y1 = yk.gather(-1, k)[:, 0], yk.gather(-1, k + 1)[:, 0]
    d0, d1 = dk.gather(-1, k)[:, 0], dk.gather(-1, k + 1)[:, 0]
    s = (y1 - y0) / (x1 - x0)
    xi = (v - x0) / (x1 - x0)
    between = xi * (1 - xi)
    denominator = s + (d0 + d1 - 2 * s) * between
    y = y0 + (y1 - y0) * (s * xi**2 + d0 * between) / denominator
    slope = s**2 * (d1 * xi**2 + 2 * s * between + d0 * (1 - xi) ** 2) / denominator**2
    return torch.where(inside, y, x), torch.where(inside, slope.log(), 0.0)


def rq_spline_inverse(y, widths, heights, derivatives, bound):
    xk, yk, dk = rq_knots(widths, heights, derivatives, bound)
    inside = (y >= -bound) & (y <= bound)
    v = y.clamp(-bound, bound)
    k = (v[:, None] >= yk[:, 1:-1]).sum(-1, keepdim=True)
    x0, x1 = xk.gather(-1, k)[:, 0], xk.gather(-1, k + 1)[:, 0]
    y0, y1 = yk.gather(-1, k)[:, 0], yk.gather(-1, k + 1)[:, 0]
    d0, d1 = dk.gather(-1, k)[:, 0], dk.gather(-1, k + 1)[:, 0]
    h = y1 - y0
    s = h / (x1 - x0)
    curve = d0 + d1 - 2 * s
    a = h * (s - d0) + (v - y0) * curve
    b = h * d0 - (v - y0) * curve
    c = -s * (v - y0)
    xi = 2 * c / (-b - torch.sqrt(b**2 - 4 * a * c))
    between = xi * (1 - xi)
    denominator = s + curve * between
    slope = s**2 * (d1 * xi**2 + 2 * s * between + d0 * (1 - xi) ** 2) / denominator**2
    return torch.where(inside, x0 + xi * (x1 - x0), y), torch.where(inside, -slope.log(), 0.0)


# --- inputs -----------------------------------------------------------------------------------


def _cases_made(rng):
    cases = []
    for dim, sizes in ((2, (4,)), (3, (6, 5)), (4, (8, 8)), (5, (7,)), (3, ())):
        order = rng.permutation(dim)
        rank = [0] * dim
        for position, entry in enumerate(order):
            rank[int(entry)] = position
        cases.append(
            {
                "in_degrees": [r + 1 for r in rank],
                "hidden_degrees": [
                    [int(d) for d in rng.integers(1, max(dim, 2), size)] for size in sizes
                ],
            }
        )
    return cases


def _spline_inputs(rng, n_inside: int, bound: float) -> list:
    """Points inside, both ends exactly, tails near and far, and two huge ones per side."""
    inside = rng.uniform(-bound, bound, n_inside) * 0.999
    near = bound * rng.uniform(1.01, 2.0, 8) * rng.choice([-1, 1], 8)
    far = bound * rng.uniform(2.0, 20.0, 8) * rng.choice([-1, 1], 8)
    huge = [-1e30, -1e20, 1e20, 1e30]
    values = [*inside, -bound, bound, *near, *far, *huge]
    return f32(rng.permutation(values))


def _cases_spline(rng, name: str):
    cases = []
    for bins, bound, scale in ((5, 3.0, 1.5), (8, 4.0, 1.0), (3, 1.5, 0.0)):
        values = _spline_inputs(rng, 40, bound)
        n = len(values)
        cases.append(
            {
                name: values,
                "widths": f32(rng.normal(0, scale, (n, bins))),
                "heights": f32(rng.normal(0, scale, (n, bins))),
                "derivatives": f32(rng.normal(0, scale, (n, bins - 1))),
                "bound": bound,
            }
        )
    return cases


def _cases_knots(rng):
    return [
        {
            "widths": f32(rng.normal(0, scale, (16, bins))),
            "heights": f32(rng.normal(0, scale, (16, bins))),
            "derivatives": f32(rng.normal(0, scale, (16, bins - 1))),
            "bound": bound,
        }
        for bins, bound, scale in ((5, 3.0, 1.5), (8, 4.0, 1.0), (3, 1.5, 0.0))
    ]


# --- judges: MADE masks -----------------------------------------------------------------------


def _masks_with(in_degrees, hidden, hidden_rule, output_rule):
    rules = {
        ">=": lambda a, b: a[:, None] >= b[None, :],
        ">": lambda a, b: a[:, None] > b[None, :],
        "<=": lambda a, b: a[:, None] <= b[None, :],
        "<": lambda a, b: a[:, None] < b[None, :],
    }
    masks, below = [], in_degrees
    for degrees in hidden:
        masks.append(rules[hidden_rule](degrees, below).double())
        below = degrees
    masks.append(rules[output_rule](in_degrees, below).double())
    return masks


def _connections(masks) -> torch.Tensor:
    """``(D, D)``: output i is connected to input j through some path of the masks."""
    path = masks[0]
    for mask in masks[1:]:
        path = (mask @ path).clamp(max=1.0)
    return path > 0


def _judge_made(case, value):
    in_degrees = torch.tensor(case["in_degrees"])
    hidden = [torch.tensor(d, dtype=torch.long) for d in case["hidden_degrees"]]
    expected = [m.double() for m in made_masks(in_degrees, hidden)]
    layers = len(expected)
    if not isinstance(value, list | tuple):
        raise Fail(f"should return a list of {layers} masks, got {kind_of(value)}")
    if len(value) == layers - 1:
        raise Fail(
            f"returned {len(value)} masks for {len(hidden)} hidden layer(s): the output layer's "
            "mask (output <- last hidden layer, the strict > rule) is missing"
        )
    if len(value) != layers:
        raise Fail(
            f"should return {layers} masks (one per hidden layer, then the output's), got "
            f"{len(value)}"
        )
    got = []
    for k, (mask, want) in enumerate(zip(value, expected, strict=True)):
        what = f"mask {k} ({'output' if k == layers - 1 else f'hidden layer {k + 1}'})"
        shape = tuple(want.shape)
        if isinstance(mask, torch.Tensor) and tuple(mask.shape) == shape[::-1] != shape:
            expect_tensor(mask, shape[::-1], what)  # a dtype mistake is named first
            raise Fail(
                f"{what} has shape {shape[::-1]}, expected {shape}: a mask is (out, in), like "
                f"nn.Linear's weight: one row per unit of the layer, one column per unit below"
            )
        if (
            k > 0
            and isinstance(mask, torch.Tensor)
            and tuple(mask.shape) == (shape[0], len(in_degrees)) != shape
        ):
            raise Fail(
                f"{what} has shape {tuple(mask.shape)}, expected {shape}: it compares with the "
                f"input degrees, but each layer's mask compares with the degrees of the layer "
                f"just below it (hidden layer {k})"
            )
        mask = expect_tensor(mask, shape, what)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise Fail(f"{what} holds values other than 0 and 1")
        got.append(mask)
    for k, (mask, want) in enumerate(zip(got, expected, strict=True)):
        if torch.equal(mask, want):
            continue
        output = k == layers - 1
        what = "the output mask" if output else f"the mask of hidden layer {k + 1}"
        below = "the last hidden layer" if hidden else "the inputs"
        if output:
            bugs = [
                (
                    _masks_with(in_degrees, hidden, ">=", ">=")[k],
                    "it uses >=, so output i reads units of its own degree m(i) and entry i sees "
                    "x_i itself (an off-by-one in the degrees): the output rule is strict, "
                    f"M[i, k] = 1 when m(i) > m(k), k a unit of {below}",
                ),
                (
                    _masks_with(in_degrees, hidden, ">=", "<")[k],
                    "the comparison is reversed: output i reads units of degree below its own, "
                    "M[i, k] = 1 when m(i) > m(k)",
                ),
            ]
        else:
            bugs = [
                (
                    _masks_with(in_degrees, hidden, ">", ">")[k],
                    "it uses >, an off-by-one in the degrees: a hidden unit of degree m reads the "
                    "units below of degree <= m (M[k, j] = 1 when m(k) >= m(j)); with > no unit "
                    "reads the inputs of its own degree, and dependences the order allows go "
                    "missing (in 2-D the second entry never sees the first)",
                ),
                (
                    _masks_with(in_degrees, hidden, "<=", ">")[k],
                    "the comparison is reversed: M[k, j] = 1 when the unit's degree m(k) >= "
                    "m(j), the degree of the unit it reads",
                ),
            ]
        for alternative, message in bugs:
            if torch.equal(mask, alternative):
                raise Fail(f"{what} is wrong: {message}")
        links = _connections(got)
        allowed = in_degrees[:, None] > in_degrees[None, :]
        bad = links & ~allowed
        if bool(bad.any()):
            i, j = (int(v) for v in bad.nonzero()[0])
            seen = "itself" if i == j else f"x_{j}, which does not come before it"
            raise Fail(
                f"{what} differs from the rule, and with these masks output {i} is connected to "
                f"{seen}: the Jacobian would not be triangular"
            )
        row, col = (int(v) for v in (mask != expected[k]).nonzero()[0])
        unit, lower = int([*hidden, in_degrees][k][row]), int([in_degrees, *hidden][k][col])
        raise Fail(
            f"{what} differs from the rule at row {row}, column {col}: expected "
            f"{int(expected[k][row, col])}, got {int(mask[row, col])} (degree of the unit "
            f"{unit}, of the one below {lower})"
        )
    return 0.0


def _plot_made(obj, cases, values):
    import matplotlib.pyplot as plt

    case = cases[2]  # D = 4, two hidden layers
    masks = [torch.as_tensor(m).double() for m in values[2]]
    in_degrees = torch.tensor(case["in_degrees"])
    layers = [in_degrees, *(torch.tensor(d) for d in case["hidden_degrees"])]
    fig, axes = plt.subplots(1, len(masks) + 1, figsize=(3.3 * (len(masks) + 1), 3.4))
    for k, (ax, mask) in enumerate(zip(axes, masks, strict=False)):
        last = k == len(masks) - 1
        rows = layers[0] if last else layers[k + 1]
        by_row, by_col = torch.argsort(rows, stable=True), torch.argsort(layers[k], stable=True)
        ax.imshow(mask[by_row][:, by_col], cmap="Greys", vmin=0, vmax=1.3, aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(len(by_col)), layers[k][by_col].tolist())
        ax.set_yticks(range(len(by_row)), rows[by_row].tolist())
        ax.set(
            title="output <- last hidden (>)" if last else f"hidden {k + 1} <- below (>=)",
            xlabel="degree of the unit below",
            ylabel="degree of the output" if last else "degree of the unit",
        )
    order = torch.argsort(in_degrees)
    links = _connections(masks)[order][:, order]
    axes[-1].imshow(links.double(), cmap="Greys", vmin=0, vmax=1.3)
    axes[-1].grid(False)
    names = [f"$x_{i}$" for i in order.tolist()]
    axes[-1].set_xticks(range(len(names)), names)
    axes[-1].set_yticks(range(len(names)), names)
    axes[-1].set(title="output i reaches input j", xlabel="input, in order", ylabel="output")
    fig.suptitle(f"Your masks (black: 1) for D = {len(in_degrees)}, sorted by degree")
    fig.tight_layout()


# --- judges: splines --------------------------------------------------------------------------


def _knot_variants(widths, heights, derivatives, bound):
    """Knots as the usual mistakes compute them (float64): (knots, message)."""

    def edges(raw, min_bin=MIN_BIN):
        share = min_bin + (1 - min_bin * raw.shape[-1]) * torch.softmax(raw, -1)
        total = torch.cumsum(share, -1)
        return -bound + 2 * bound * F.pad(total / total[..., -1:], (1, 0))

    offset = math.log(math.expm1(1 - MIN_DERIVATIVE))
    slopes = MIN_DERIVATIVE + F.softplus(derivatives + offset)
    right = (edges(widths), edges(heights), F.pad(slopes, (1, 1), value=1.0))
    twice = "the widths and heights are normalised twice (a softmax of a softmax): they arrive raw"
    return [
        ((edges(widths.softmax(-1)), edges(heights.softmax(-1)), right[2]), twice),
        ((edges(widths.softmax(-1)), right[1], right[2]), twice),
        (
            (edges(widths, 0.0), edges(heights, 0.0), right[2]),
            f"each bin must be at least min_bin = {MIN_BIN:g} of the interval: share = "
            "min_bin + (1 - min_bin K) softmax(raw)",
        ),
        (
            (right[1], right[0], right[2]),
            "the x knots come from the widths, the y knots from the heights",
        ),  # fmt: skip
        (
            (*right[:2], F.pad(slopes, (1, 1))),
            "the boundary slopes d_0 and d_K are 0, not 1 (F.pad pads with 0 unless value=1.0): "
            "at -B and B the spline must meet the identity tails with slope 1",
        ),
        (
            (*right[:2], MIN_DERIVATIVE + F.softplus(F.pad(derivatives, (1, 1)))),
            "the boundary slopes come out of the softplus (about 0.694), and a raw 0 is not "
            "slope 1: d_0 = d_K = 1 exactly, inner slopes min_derivative + softplus(raw + "
            "log(expm1(1 - min_derivative)))",
        ),
        (
            (*right[:2], F.pad(MIN_DERIVATIVE + F.softplus(derivatives), (1, 1), value=1.0)),
            "a raw derivative of 0 must give slope 1: add the offset, min_derivative + "
            "softplus(raw + log(expm1(1 - min_derivative)))",
        ),
        (
            (
                *right[:2],
                F.pad(F.softplus(derivatives + math.log(math.expm1(1))), (1, 1), value=1.0),
            ),  # fmt: skip
            f"the slopes are at least min_derivative = {MIN_DERIVATIVE:g}: min_derivative + "
            "softplus(raw + log(expm1(1 - min_derivative)))",
        ),
        (
            (*right[:2], F.pad(derivatives.exp(), (1, 1), value=1.0)),
            "the inner slopes are min_derivative + softplus(raw + offset), not exp(raw)",
        ),
    ]


def _expect_triple(value, names: str) -> tuple:
    if isinstance(value, tuple | list) and len(value) == 3:
        return tuple(value)
    raise Fail(f"should return three tensors ({names}), got {kind_of(value)}")


def _judge_knots(case, value):
    widths, heights, derivatives = (t(case[k]) for k in ("widths", "heights", "derivatives"))
    bound, (n, bins) = case["bound"], widths.shape
    want = rq_knots(widths, heights, derivatives, bound)
    xk, yk, dk = _expect_triple(value, "xk, yk, dk")
    shape = (n, bins + 1)
    for got, what in ((xk, "xk"), (yk, "yk")):
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (n, bins):
            raise Fail(
                f"{what} has shape {(n, bins)}, expected {shape}: K bins have K + 1 knots, from "
                "-B to B (prepend -B: F.pad(cumulative, (1, 0)))"
            )
    xk, yk = expect_tensor(xk, shape, "xk"), expect_tensor(yk, shape, "yk")
    if isinstance(dk, torch.Tensor) and tuple(dk.shape) in ((n, bins - 1), (n, bins)):
        raise Fail(
            f"dk has shape {tuple(dk.shape)}, expected {shape}: one slope per knot, the K - 1 "
            "inner ones from the raw derivatives and d_0 = d_K = 1 at the ends"
        )
    dk = expect_tensor(dk, shape, "dk")
    for got, what in ((xk, "xk"), (yk, "yk")):
        ends = got[:, [0, -1]]
        if not close(ends, torch.tensor([-bound, bound]).expand(n, 2), 1e-5, 1e-5):
            raise Fail(
                f"{what} runs from {ends[0, 0].item():.4g} to {ends[0, 1].item():.4g}, not from "
                f"-B = {-bound:g} to B = {bound:g}: the first knot is -B, the last B"
            )
    boundary = dk[:, [0, -1]]
    if not close(boundary, torch.ones_like(boundary), 1e-5, 1e-5):
        found = boundary[(boundary - 1).abs().argmax() // 2].tolist()
        raise Fail(
            f"the boundary slopes d_0 and d_K are {found[0]:.4g} and {found[1]:.4g}, not 1: a "
            "boundary derivative other than 1 leaves a kink where the spline meets the identity "
            "tails. They are fixed to 1, not learned (F.pad(slopes, (1, 1), value=1.0))"
        )
    variants = _knot_variants(widths, heights, derivatives, bound)
    for k, (got, what) in enumerate(((xk, "xk"), (yk, "yk"), (dk, "dk"))):
        compare(got, want[k], what, bugs=[(v[k], message) for v, message in variants])
    return max((g - w).abs().max().item() for g, w in zip((xk, yk, dk), want, strict=True))


def _bins(v, knots, edges: int):
    """The ends of the bin of each ``v`` (in [-B, B]) among ``knots[edges]``, in float64."""
    xk, yk, dk = knots
    k = (v[:, None] >= knots[edges][:, 1:-1]).sum(-1, keepdim=True)
    return [table.gather(-1, j)[:, 0] for table in (xk, yk, dk) for j in (k, k + 1)]


def _spline_with(x, knots, bound, swap=False):
    """The forward spline from given knots (float64); ``swap``: d_k, d_{k+1} swapped."""
    v = x.clamp(-bound, bound)
    x0, x1, y0, y1, d0, d1 = _bins(v, knots, 0)
    if swap:
        d0, d1 = d1, d0
    s, xi = (y1 - y0) / (x1 - x0), (v - x0) / (x1 - x0)
    between = xi * (1 - xi)
    denominator = s + (d0 + d1 - 2 * s) * between
    y = y0 + (y1 - y0) * (s * xi**2 + d0 * between) / denominator
    slope = s**2 * (d1 * xi**2 + 2 * s * between + d0 * (1 - xi) ** 2) / denominator**2
    inside = (x >= -bound) & (x <= bound)
    return torch.where(inside, y, x), torch.where(inside, slope.log(), 0.0)


def _quadratic(y, knots, bound, edges: int = 1):
    """Per element of ``y`` (float64): ``x0, w, a, b, c`` of the quadratic in its bin, found
    among ``knots[edges]`` (1: the y knots; 0, the x knots, is a mistake), and ``s, d0, d1``."""
    v = y.clamp(-bound, bound)
    x0, x1, y0, y1, d0, d1 = _bins(v, knots, edges)
    h, w = y1 - y0, x1 - x0
    s, dy = h / w, v - y0
    curve = d0 + d1 - 2 * s
    return x0, w, h * (s - d0) + dy * curve, h * d0 - dy * curve, -s * dy, s, d0, d1


def _tolerances(v, knots, bound, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element, how far a correct float32 spline may land from the float64 reference:
    ``(for the value, for log_det)``.

    First-order error analysis: the input and the slopes carry a rounding error of about
    ``eps |value|``, a knot one of about ``eps B`` (it is -B plus a cumulative sum), the
    inverse's ``-b - sqrt(b^2 - 4ac)`` one of ``eps (|b| + sqrt(...))``, a few roundings each
    in float32; the spline multiplies them by its sensitivity, read from autograd in float64.
    Tiny bins and extreme slopes make some points ill-conditioned (a log-det off by 1e-3 in
    float32 there is not a mistake).
    """
    leaves = [v.clone().requires_grad_(True), *(k.clone().requires_grad_(True) for k in knots)]
    scales = [v.abs(), bound, bound, knots[2].abs()]
    if inverse:
        leaves.append(torch.zeros_like(v, requires_grad=True))
        scales.append(1.0)
        outputs = _inverse_with(leaves[0], tuple(leaves[1:4]), bound, noise=leaves[4])
    else:
        outputs = _spline_with(leaves[0], tuple(leaves[1:]), bound)
    tolerances = []
    for out in outputs:
        grads = torch.autograd.grad(out.sum(), leaves, retain_graph=True)
        size = sum(
            (g * scale).abs().reshape(len(v), -1).sum(-1)
            for g, scale in zip(grads, scales, strict=True)
        )
        tolerances.append(1e-4 + ROUNDING * 2.0**-24 * size.detach())
    return tolerances[0], tolerances[1]


TAIL_NAN = (
    "NaN gradients in the tails. torch.where(inside, y, x) keeps the right values, but the "
    "spline's arithmetic on a tail input overflows or takes the square root of a negative "
    "number, and where's backward pass multiplies that NaN by 0, which is NaN: clamp (or mask) "
    "the inputs into [-B, B] before any spline arithmetic"
)


def _check_gradients(case, value: Traced, name: str, reference, hint=None) -> None:
    """The gradients of sum(out) + sum(log_det) against the reference's, in float64.

    At exactly -B and B the log-det's slope jumps (the spline's curvature meets the straight
    tail), so the gradient there is one-sided and not compared; ``hint(i)`` names a likely
    cause for a gradient that differs at sample ``i``."""
    keys = (name, "widths", "heights", "derivatives")
    if value.error is not None:
        raise Fail(
            "the gradients of its result could not be computed: "
            f"{value.error.get('type', '')}: {value.error.get('message', '')} (a flow is "
            "trained through this function, so it must stay differentiable)"
        )
    leaves = [t(case[k]).requires_grad_(True) for k in keys]
    out, log_det = reference(*leaves, case["bound"])
    expected = torch.autograd.grad(out.sum() + log_det.sum(), leaves)
    v, bound = t(case[name]), case["bound"]
    for key, want in zip(keys, expected, strict=True):
        got = value.grads.get(key)
        what = f"the gradient of sum({'y' if name == 'x' else 'x'}) + sum(log_det) for {key}"
        if got is None:
            raise Fail(
                f"{what} is missing: the result does not depend on {key} through autograd "
                "(.detach(), .item() or numpy break the chain)"
            )
        got = expect_tensor(got, tuple(want.shape), what)
        nan = got.isnan() & ~want.isnan()
        if bool(nan.any()):
            i = int(nan.nonzero()[0][0])
            where = "outside" if abs(v[i].item()) > bound else "inside"
            hint = TAIL_NAN if where == "outside" else "a division by 0 or a log of 0?"
            raise Fail(
                f"{what} is NaN at sample {i}, where {name} = {v[i].item():.4g} lies {where} "
                f"[-B, B] = [{-bound:g}, {bound:g}]: {hint}"
            )
        edge = v.abs() == bound
        got, want = got.clone(), want.clone()
        got[edge], want[edge] = 0.0, 0.0
        if not close(got, want, GRADIENT_TOLERANCE, GRADIENT_TOLERANCE):
            error = (got - want).abs() - GRADIENT_TOLERANCE * want.abs()
            i = int(error.reshape(len(v), -1).max(-1).values.argmax())
            extra = hint(i) if hint else None
            flat_got, flat_want = got.reshape(len(v), -1)[i], want.reshape(len(v), -1)[i]
            if not extra and bool(((flat_got == 0) & (flat_want.abs() > 1e-2)).any()):
                extra = (
                    "it is 0 where the reference's is not: is part of the computation detached "
                    "from the inputs (.detach(), .item(), numpy, a new tensor)?"
                )
            if extra:
                raise Fail(f"{what} differs from the reference at sample {i}: {extra}")
        compare(got, want, what, atol=GRADIENT_TOLERANCE, rtol=GRADIENT_TOLERANCE)


def _tails(case, name, out, log_det, value_name):
    v, bound = t(case[name]), case["bound"]
    tails = v.abs() > bound
    if bool(out[tails].isnan().any()) or bool(log_det[tails].isnan().any()):
        raise Fail(
            f"{value_name} or log_det is NaN outside [-B, B]: there the spline is the identity, "
            f"{value_name} = {name} and log_det = 0 (torch.where(inside, ..., {name}))"
        )
    if not close(out[tails], v[tails], 1e-5, 1e-5):
        clamped = close(out[tails], v[tails].clamp(-bound, bound), 1e-5, 1e-5)
        raise Fail(
            f"{value_name} differs from {name} outside [-B, B]"
            + (" (it stops at -B and B)" if clamped else "")
            + f": the spline is the identity in the tails, {value_name} = {name} there "
            f"(torch.where(inside, {value_name}, {name}))"
        )
    if not close(log_det[tails], torch.zeros_like(log_det[tails]), 1e-5, 1e-5):
        raise Fail("log_det is not 0 outside [-B, B], where the spline is the identity")


def _distinct(bugs, expected, tolerance):
    """The known mistakes whose answers a correct float32 spline could not give by accident
    (a mistake that changes the answer by less than 10 tolerances names nothing)."""
    return [(alt, message) for alt, message in bugs if not close(alt, expected, 10 * tolerance, 0)]


def _judge_spline(case, value):
    traced = value if isinstance(value, Traced) else Traced(value, {}, None)
    x = t(case["x"])
    params = [t(case[k]) for k in ("widths", "heights", "derivatives")]
    bound = case["bound"]
    y_ref, ld_ref = reference_value(TASKS[2], case)
    y, log_det = expect_pair(traced.value, "y, log_det")
    y = expect_tensor(y, tuple(y_ref.shape), "y")
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    _tails(case, "x", y, log_det, "y")
    inside = x.abs() <= bound
    knots = rq_knots(*params, bound)
    variants = [(_spline_with(x, k, bound), m) for k, m in _knot_variants(*params, bound)]
    swapped = _spline_with(x, knots, bound, swap=True)
    tol_y, tol_ld = _tolerances(x, knots, bound, inverse=False)
    compare(
        y,
        y_ref,
        "y",
        atol=tol_y,
        bugs=_distinct(
            [(v[0], message) for v, message in variants]
            + [(swapped[0], "d_k and d_{k+1} are swapped: the numerator holds d_k xi (1 - xi)")],
            y_ref,
            tol_y,
        ),
        nan_hint="for x inside [-B, B]; is a bin's width or the denominator 0?",
    )
    compare(
        log_det,
        ld_ref,
        "log_det",
        atol=tol_ld,
        bugs=_distinct(
            [
                (-ld_ref, "it has the wrong sign: the log-det of x -> y is log(dy/dx)"),
                (
                    torch.where(inside, ld_ref.exp(), 0.0),
                    "it is the slope dy/dx itself: take its log",
                ),  # fmt: skip
                (
                    2 * ld_ref,
                    "it is log((dy/dx)^2): the slope's denominator is squared, not the slope",
                ),  # fmt: skip
            ]
            + [(v[1], message) for v, message in variants],
            ld_ref,
            tol_ld,
        ),
    )
    _check_gradients(case, traced, "x", rq_spline)
    return (y - y_ref).abs().max().item()


def _judge_inverse(case, value):
    traced = value if isinstance(value, Traced) else Traced(value, {}, None)
    y_in = t(case["y"])
    params = [t(case[k]) for k in ("widths", "heights", "derivatives")]
    bound = case["bound"]
    x_ref, ld_ref = reference_value(TASKS[3], case)
    x, log_det = expect_pair(traced.value, "x, log_det")
    x = expect_tensor(x, tuple(x_ref.shape), "x")
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    _tails(case, "y", x, log_det, "x")
    knots = rq_knots(*params, bound)
    x0, w, a, b, c, *_ = _quadratic(y_in, knots, bound)
    inside = y_in.abs() <= bound
    straight = a.abs() <= 1e-3 * (b.abs() + c.abs())
    textbook = (
        "where a bin is (nearly) straight, a = 0 in a xi^2 + b xi + c = 0 (every bin of the "
        "identity): the textbook root (-b + sqrt(b^2 - 4ac)) / 2a divides by a, 0 / 0 there, "
        "and loses its digits near it; use the stable root xi = 2c / (-b - sqrt(b^2 - 4ac))"
    )
    nan = x.isnan() & inside
    if bool(nan.any()):
        i = int(nan.nonzero()[0][0])
        if bool(straight[nan].float().mean() >= 0.5):
            raise Fail(f"x is NaN at sample {i} (y = {y_in[i].item():.4g}): {textbook}")
        if bool(_inverse_with(y_in, knots, bound, edges=0, clamp=False)[0][nan].isnan().all()):
            raise Fail(
                f"x is NaN at sample {i} (y = {y_in[i].item():.4g}): b^2 - 4ac < 0 because the "
                "bin was looked up among the x knots; find the bin of y among the y knots (yk)"
            )
        raise Fail(
            f"x is NaN at sample {i} (y = {y_in[i].item():.4g}, inside [-B, B]): a square root "
            "of a negative number, or a division by 0?"
        )
    variants = [(_inverse_with(y_in, k, bound), m) for k, m in _knot_variants(*params, bound)]
    bugs = [(_inverse_with(y_in, knots, bound, edges=0)[0], "find the bin of y among the y knots "
             "(yk), not the x knots")] + [(v[0], message) for v, message in variants]  # fmt: skip
    tol_x, tol_ld = _tolerances(y_in, knots, bound, inverse=True)
    bugs = _distinct(bugs, x_ref, tol_x)
    for alternative, message in bugs:
        if not close(x, x_ref, tol_x, 1e-4) and close(x, alternative, tol_x, 1e-4):
            raise Fail(f"x is wrong: {message}")
    wrong = inside & ~((x - x_ref).abs() <= tol_x + 1e-4 * x_ref.abs())
    if bool(wrong.any()):
        xi = (x - x0) / w
        outside_bin = (xi < -1e-3) | (xi > 1 + 1e-3)
        if bool(straight[wrong].float().mean() >= 0.5):
            raise Fail(f"x is wrong {textbook}")
        if bool(outside_bin[wrong].float().mean() >= 0.5):
            raise Fail(
                "x is wrong: it lies outside the bin of y, so it is the other root of the "
                "quadratic a xi^2 + b xi + c = 0. The root in [0, 1] is xi = 2c / (-b - sqrt(b^2 "
                "- 4ac)) (the same number as (-b + sqrt(b^2 - 4ac)) / 2a, without dividing by a)"
            )
    compare(x, x_ref, "x", atol=tol_x)
    forward_ld = _spline_with(x_ref, knots, bound)[1]
    compare(
        log_det,
        ld_ref,
        "log_det",
        atol=tol_ld,
        bugs=_distinct(
            [
                (
                    forward_ld,
                    "it has the wrong sign: the inverse's log-det is minus the forward one, "
                    "-log(dy/dx) at the x found",
                ),
                (
                    torch.where(inside, (-ld_ref).exp(), 0.0),
                    "it is the slope dx/dy: the log-det is its log, -log(dy/dx)",
                ),  # fmt: skip
            ]
            + [(v[1], message) for v, message in variants],
            ld_ref,
            tol_ld,
        ),
    )
    _check_gradients(
        case, traced, "y", rq_spline_inverse, lambda i: textbook if straight[i] else None
    )
    return (x - x_ref).abs().max().item()


def _inverse_with(y, knots, bound, noise=None, edges: int = 1, clamp: bool = True):
    """The inverse spline from given knots (float64), for the known mistakes: ``edges=0``
    looks the bin of y up among the x knots; ``clamp=False`` leaves b^2 - 4ac unclamped (NaN
    where it is negative). ``noise: (n,)`` (zeros) stands for the rounding of the root's
    denominator, for :func:`_tolerances`."""
    x0, w, a, b, c, s, d0, d1 = _quadratic(y, knots, bound, edges)
    discriminant = b**2 - 4 * a * c
    root = (discriminant.clamp_min(0) if clamp else discriminant).sqrt()
    denominator = -b - root  # digits cancel where b < 0 (a bin far steeper at one end)
    if noise is not None:
        denominator = denominator + noise * (b.abs() + root).detach()
    xi = 2 * c / denominator
    between = xi * (1 - xi)
    curve = d0 + d1 - 2 * s
    slope = s**2 * (d1 * xi**2 + 2 * s * between + d0 * (1 - xi) ** 2) / (s + curve * between) ** 2
    inside = (y >= -bound) & (y <= bound)
    return torch.where(inside, x0 + xi * w, y), torch.where(inside, -slope.log(), 0.0)


def _plot_spline(obj, cases, values):
    import matplotlib.pyplot as plt

    case = cases[1]  # K = 8, B = 4
    bound = case["bound"]
    params = [torch.tensor(case[k])[:1] for k in ("widths", "heights", "derivatives")]
    grid = torch.linspace(-1.5 * bound, 1.5 * bound, 2001)
    with torch.no_grad():
        y, log_det = obj(grid, *(p.expand(len(grid), -1) for p in params), bound)
        xk, yk, dk = rq_knots(*params, bound)
    fig, (ax_y, ax_d) = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax in (ax_y, ax_d):
        ax.axvspan(-1.5 * bound, -bound, color="0.93")
        ax.axvspan(bound, 1.5 * bound, color="0.93")
    ax_y.plot(grid, grid, color="0.7", ls="--", lw=1, label="identity")
    ax_y.plot(grid, y, color="C0", label="your rq_spline")
    ax_y.plot(xk[0], yk[0], "o", color="C3", ms=5, label="knots")
    ax_y.set(title=f"one of the check's splines, K = {xk.shape[1] - 1}, B = {bound:g}",
             xlabel="x", ylabel="y")  # fmt: skip
    ax_y.legend(loc="upper left")
    ax_d.plot(grid, log_det.exp(), color="C0", label="exp(your log_det)")
    ax_d.plot(xk[0], dk[0], "o", color="C3", ms=5, label="knot slopes $d_k$")
    ax_d.axhline(1, color="0.7", ls="--", lw=1)
    ax_d.set_yscale("log")
    ax_d.set(title="its slope (log scale): 1 at both ends and in the grey tails", xlabel="x",
             ylabel="dy/dx")  # fmt: skip
    ax_d.legend(loc="upper left")
    fig.tight_layout()


TASKS = (
    Task(
        "made_masks",
        3,
        "made_masks(in_degrees, hidden_degrees) -> masks",
        made_masks,
        (("long", "in_degrees"), ("longs", "hidden_degrees")),
        _cases_made,
        _judge_made,
        library=("made_masks",),
        plot=_plot_made,
    ),
    Task(
        "rq_knots",
        2,
        "rq_knots(widths, heights, derivatives, bound) -> (xk, yk, dk)",
        rq_knots,
        (
            ("tensor", "widths"),
            ("tensor", "heights"),
            ("tensor", "derivatives"),
            ("number", "bound"),
        ),  # fmt: skip
        _cases_knots,
        _judge_knots,
        library=("rq_knots",),
    ),
    Task(
        "rq_spline",
        4,
        "rq_spline(x, widths, heights, derivatives, bound) -> (y, log_det)",
        rq_spline,
        (
            ("tensor", "x"),
            ("tensor", "widths"),
            ("tensor", "heights"),
            ("tensor", "derivatives"),
            ("number", "bound"),
        ),  # fmt: skip
        lambda rng: _cases_spline(rng, "x"),
        _judge_spline,
        depends=("rq_knots",),
        library=("rq_spline",),
        plot=_plot_spline,
        grads=("x", "widths", "heights", "derivatives"),
    ),
    Task(
        "rq_spline_inverse",
        3,
        "rq_spline_inverse(y, widths, heights, derivatives, bound) -> (x, log_det)",
        rq_spline_inverse,
        (
            ("tensor", "y"),
            ("tensor", "widths"),
            ("tensor", "heights"),
            ("tensor", "derivatives"),
            ("number", "bound"),
        ),  # fmt: skip
        lambda rng: _cases_spline(rng, "y"),
        _judge_inverse,
        depends=("rq_knots",),
        library=("rq_spline_inverse",),
        grads=("y", "widths", "heights", "derivatives"),
    ),
)

ASSIGNMENT = Assignment("08_spline_flows", "MADE masks and rational-quadratic splines", TASKS)
