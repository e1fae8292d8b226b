"""Monotone rational-quadratic splines (Durkan et al. 2019) and a spline coupling flow.

A spline maps ``[-B, B]`` onto itself through ``K`` bins. Bin ``k`` runs from knot
``(x_k, y_k)`` to ``(x_{k+1}, y_{k+1})``, with slope ``d_k`` at its left knot and ``d_{k+1}``
at its right one; with ``xi = (x - x_k) / w_k`` in ``[0, 1]``, ``s_k = h_k / w_k``,

    y = y_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / (s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi)),

which is increasing when every ``d`` is positive, and inverts in closed form (a quadratic in
``xi``). Outside ``[-B, B]`` the map is the identity, and the boundary slopes ``d_0 = d_K = 1``
make the joins smooth. Raw (unconstrained) parameters, as a network outputs them:
``widths, heights: (..., K)`` pass through a softmax (each bin at least ``min_bin`` of the
interval), ``derivatives: (..., K - 1)`` through ``min_derivative + softplus(. + c)`` with ``c``
chosen so that a raw 0 gives slope 1. All-zero parameters are the identity.

Tail inputs are clamped into ``[-B, B]`` before any spline arithmetic: evaluating the formulas
on them and discarding the result with ``torch.where`` keeps the values right but can send NaN
gradients back (a square root of a negative number, an overflow), because ``where`` passes
``0 * NaN = NaN`` to the branch it did not pick.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcourse.bijections import Bijection
from flowcourse.flows import Flow, standard_normal

__all__ = [
    "MIN_BIN",
    "MIN_DERIVATIVE",
    "rq_knots",
    "rq_spline",
    "rq_spline_inverse",
    "SplineCoupling",
    "spline_flow",
]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3


def _check_params(widths: Tensor, heights: Tensor, derivatives: Tensor) -> int:
    bins = widths.shape[-1]
    if heights.shape[-1] != bins or derivatives.shape[-1] != bins - 1 or bins < 1:
        raise ValueError(
            f"a spline with K bins needs widths (..., K), heights (..., K) and derivatives "
            f"(..., K - 1); got {tuple(widths.shape)}, {tuple(heights.shape)} and "
            f"{tuple(derivatives.shape)}"
        )
    return bins


def _check_bound(bound: float) -> float:
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not bound > 0:
        raise ValueError(f"a spline needs a bound B > 0 (it acts on [-B, B]), got {bound!r}")
    return float(bound)


def _check_settings(bins: int, min_bin: float, min_derivative: float) -> None:
    if not 0 <= min_bin * bins < 1 or not 0 <= min_derivative < 1:
        raise ValueError(
            f"a spline needs 0 <= min_bin * K < 1 and 0 <= min_derivative < 1, got min_bin "
            f"{min_bin}, K {bins}, min_derivative {min_derivative}"
        )


def rq_knots(
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float,
    min_bin: float = MIN_BIN,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Knots of the spline from raw parameters: ``(x_k, y_k, d_k)``, each ``(..., K + 1)``.

    ``x_0 = y_0 = -B`` and ``x_K = y_K = B`` exactly; ``d_0 = d_K = 1`` (the identity tails'
    slope). Raw zeros give equal bins and unit slopes, i.e. the identity.
    """
    bins = _check_params(widths, heights, derivatives)
    bound = _check_bound(bound)
    _check_settings(bins, min_bin, min_derivative)
    widths, heights = torch.broadcast_tensors(widths, heights)
    share = min_bin + (1 - min_bin * bins) * torch.softmax(torch.stack([widths, heights]), -1)
    cumulative = torch.cumsum(share, dim=-1)
    cumulative = cumulative / cumulative[..., -1:]  # ends at exactly 1, so the last knot at B
    knots = -bound + 2 * bound * F.pad(cumulative, (1, 0))
    # softplus(offset) = 1 - min_derivative: a raw 0 is a slope of exactly 1.
    offset = math.log(math.expm1(1 - min_derivative))
    slopes = min_derivative + F.softplus(derivatives + offset)
    return knots[0], knots[1], F.pad(slopes, (1, 1), value=1.0)


def _table(v: Tensor, *params: Tensor, **settings: float) -> tuple[Tensor, Tensor]:
    """``v`` broadcast against the parameters, and the knots as one ``(..., 3, K + 1)`` table."""
    table = torch.stack(torch.broadcast_tensors(*rq_knots(*params, **settings)), dim=-2)
    return v.expand(torch.broadcast_shapes(v.shape, table.shape[:-2])), table


def _bin_ends(v: Tensor, edges: int, table: Tensor) -> tuple[Tensor, ...]:
    """``x0, x1, y0, y1, d0, d1``: the knots at both ends of the bin of each ``v``.

    ``v: (...)`` in ``[-B, B]``, binned by row ``edges`` of ``table: (..., 3, K + 1)`` (0: the
    x knots, 1: the y knots): its bin is the number of inner knots at or below it.
    """
    table = table.expand(*v.shape, *table.shape[-2:])
    k = (v[..., None] >= table[..., edges, 1:-1]).sum(-1, keepdim=True)
    index = torch.cat([k, k + 1], dim=-1)[..., None, :].expand(*v.shape, 3, 2)
    ends = table.gather(-1, index)  # one gather for the six numbers
    return tuple(ends[..., row, side] for row in range(3) for side in range(2))


def _log_slope(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor, denominator: Tensor) -> Tensor:
    """``log dy/dx = log(s^2 (d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2) / denominator^2)``."""
    numerator = d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2
    return torch.log(s**2 * numerator / denominator**2)


def rq_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float,
    min_bin: float = MIN_BIN,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """The spline, element-wise: ``x: (...)`` -> ``(y: (...), log dy/dx: (...))``.

    Parameters are raw, ``(..., K)``, ``(..., K)``, ``(..., K - 1)``, broadcast against ``x``
    (one set of ``K`` per element of ``x``, or one shared set). Identity, log-det 0, outside
    ``[-B, B]``.
    """
    settings = {"bound": bound, "min_bin": min_bin, "min_derivative": min_derivative}
    x, table = _table(x, widths, heights, derivatives, **settings)
    inside = (x >= -bound) & (x <= bound)
    x_in = x.clamp(-bound, bound)  # tails: safe numbers for the arithmetic, then discarded
    x0, x1, y0, y1, d0, d1 = _bin_ends(x_in, 0, table)
    s = (y1 - y0) / (x1 - x0)
    xi = (x_in - x0) / (x1 - x0)
    between = xi * (1 - xi)
    denominator = s + (d0 + d1 - 2 * s) * between
    y = y0 + (y1 - y0) * (s * xi**2 + d0 * between) / denominator
    log_det = _log_slope(xi, s, d0, d1, denominator)
    return torch.where(inside, y, x), torch.where(inside, log_det, 0.0)


def rq_spline_inverse(
    y: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float,
    min_bin: float = MIN_BIN,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`rq_spline`: ``y: (...)`` -> ``(x, log dx/dy)``, same parameters.

    In the bin of ``y``, ``xi`` solves ``a xi^2 + b xi + c = 0`` with ``dy = y - y_k``,
    ``a = h (s - d_k) + dy D``, ``b = h d_k - dy D``, ``c = -s dy``, ``D = d_k + d_{k+1} - 2s``.
    The root in ``[0, 1]`` is taken as ``2c / (-b - sqrt(b^2 - 4ac))``: the textbook
    ``(-b + sqrt(...)) / 2a`` is the same number but divides by ``a``, which is 0 for a straight
    bin, and cancels digits when ``4ac`` is small.
    """
    settings = {"bound": bound, "min_bin": min_bin, "min_derivative": min_derivative}
    y, table = _table(y, widths, heights, derivatives, **settings)
    inside = (y >= -bound) & (y <= bound)
    y_in = y.clamp(-bound, bound)
    x0, x1, y0, y1, d0, d1 = _bin_ends(y_in, 1, table)
    h = y1 - y0
    s = h / (x1 - x0)
    dy = y_in - y0
    curve = d0 + d1 - 2 * s
    a = h * (s - d0) + dy * curve
    b = h * d0 - dy * curve
    c = -s * dy
    xi = (2 * c) / (-b - (b * b - 4 * a * c).clamp_min(0).sqrt())
    xi = xi.clamp(0, 1)  # rounding can step a hair outside the bin
    x = x0 + xi * (x1 - x0)
    denominator = s + curve * xi * (1 - xi)
    log_det = -_log_slope(xi, s, d0, d1, denominator)
    return torch.where(inside, x, y), torch.where(inside, log_det, 0.0)


class SplineCoupling(Bijection):
    """Rational-quadratic spline coupling layer (Durkan et al. 2019).

    ``mask: (dim,)`` of 0/1, as in :class:`~flowcourse.bijections.AffineCoupling`: entries with
    mask 1 pass unchanged and, with the optional ``context``, are the conditioner's input; each
    entry with mask 0 goes through its own spline with ``bins`` bins on ``[-bound, bound]``,
    whose ``3 bins - 1`` raw parameters the conditioner computes. The spline is the density
    direction: ``inverse(x)`` gives ``z = g(x)`` (one pass, no square root), ``forward(z)``
    solves the quadratic. The conditioner (``depth`` hidden layers of ``hidden`` units) ends in
    a zero-initialised layer, so the layer starts as the identity.

    ``x: (batch, dim)``; with ``context_dim > 0`` both directions need ``context: (batch,
    context_dim)``.
    """

    def __init__(
        self,
        mask: Tensor,
        bins: int = 8,
        bound: float = 4.0,
        hidden: int = 64,
        depth: int = 2,
        context_dim: int = 0,
        activation: type[nn.Module] = nn.ReLU,
        min_bin: float = MIN_BIN,
        min_derivative: float = MIN_DERIVATIVE,
    ) -> None:
        mask = torch.as_tensor(mask)
        if mask.ndim != 1 or mask.numel() < 2 or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                f"SplineCoupling expects a mask of 0s and 1s of shape (dim,) with dim >= 2, "
                f"got {mask.tolist()}"
            )
        if bool((mask == 1).all()) or bool((mask == 0).all()):
            raise ValueError(
                f"SplineCoupling needs at least one 1 (kept) and one 0 (transformed) in its "
                f"mask, got {mask.tolist()}"
            )
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
            raise ValueError(f"SplineCoupling expects bins >= 1, got {bins!r}")
        for name, value in (("hidden", hidden), ("depth", depth), ("context_dim", context_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"SplineCoupling expects {name} >= 0, got {value!r}")
        super().__init__(mask.numel())
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.register_buffer("moved", (mask == 0).nonzero().flatten())
        self.bins, self.bound = int(bins), _check_bound(bound)
        self.context_dim = int(context_dim)
        self.min_bin, self.min_derivative = float(min_bin), float(min_derivative)
        _check_settings(self.bins, self.min_bin, self.min_derivative)

        layers: list[nn.Module] = []
        width = self.dim + self.context_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        last = nn.Linear(width, len(self.moved) * (3 * self.bins - 1))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.conditioner = nn.Sequential(*layers, last)

    def extra_repr(self) -> str:
        return (
            f"mask={self.mask.int().tolist()}, bins={self.bins}, bound={self.bound:g}, "
            f"context_dim={self.context_dim}"
        )

    def spline_parameters(
        self, kept: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Raw ``(widths, heights, derivatives)`` of every moved entry: ``(batch, moved, K)``,
        ``(batch, moved, K)``, ``(batch, moved, K - 1)``, from ``kept = x * mask``."""
        features = kept if context is None else torch.cat([kept, context], dim=-1)
        raw = self.conditioner(features).unflatten(-1, (len(self.moved), 3 * self.bins - 1))
        k = self.bins
        return raw[..., :k], raw[..., k : 2 * k], raw[..., 2 * k :]

    def _transform(self, v: Tensor, context: Tensor | None, spline) -> tuple[Tensor, Tensor]:
        params = self.spline_parameters(v * self.mask, context)  # v * mask is the same both ways
        out, log_det = spline(
            v[:, self.moved], *params, self.bound, self.min_bin, self.min_derivative
        )
        return v.index_copy(1, self.moved, out), log_det.sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        self.check_context(context, x)
        return self._transform(x, context, rq_spline_inverse)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        self.check_context(context, y)
        return self._transform(y, context, rq_spline)


def spline_flow(
    dim: int,
    layers: int = 5,
    bins: int = 8,
    bound: float = 4.0,
    hidden: int = 64,
    depth: int = 2,
    context_dim: int = 0,
) -> Flow:
    """A neural spline flow (Durkan et al. 2019) of coupling layers, standard normal base.

    ``layers`` :class:`SplineCoupling` layers with alternating masks ``[1, 0, 1, ...]`` and
    ``[0, 1, 0, ...]``, so every entry is transformed; ``context_dim > 0`` makes it a
    conditional flow ``q(x | c)``.
    """
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 2:
        raise ValueError(f"spline_flow needs dim >= 2 (a coupling keeps some entries), got {dim!r}")
    steps = [
        SplineCoupling((torch.arange(dim) + k) % 2 == 0, bins, bound, hidden, depth, context_dim)
        for k in range(layers)
    ]
    return Flow(standard_normal(dim), steps)
