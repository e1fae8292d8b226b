"""Deliberately broken layers: each reproduces a bug seen in published flow code.

The regression tests assert that ``flowcourse.checks`` fails every one of them with a message
that points at the bug. Do not "fix" them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowcourse.autoregressive import MADE, AffineAutoregressive
from flowcourse.bijections import Bijection


class BlockMergeCoupling(Bijection):
    """Splits by an interleaved mask but merges as [kept block, transformed block].

    In 2-D with mask [1, 0] the block order happens to be right, so the bug hides; for dim > 2
    with an interleaved mask the inverse no longer undoes the forward.
    """

    def __init__(self, mask: Tensor, hidden: int = 8) -> None:
        super().__init__(len(mask))
        self.register_buffer("mask", torch.as_tensor(mask).bool())
        kept = int(self.mask.sum())
        self.net = nn.Sequential(
            nn.Linear(kept, hidden), nn.Tanh(), nn.Linear(hidden, 2 * (self.dim - kept))
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_kept, x_moved = x[:, self.mask], x[:, ~self.mask]
        s, t = self.net(x_kept).chunk(2, dim=-1)
        return torch.cat([x_kept, x_moved * s.exp() + t], dim=1), s.sum(-1)  # BUG: block merge

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y_kept, y_moved = y[:, self.mask], y[:, ~self.mask]
        s, t = self.net(y_kept).chunk(2, dim=-1)
        return torch.cat([y_kept, (y_moved - t) * (-s).exp()], dim=1), -s.sum(-1)


class UnconstrainedPlanar(Bijection):
    """Planar flow that uses u directly: with w.u < -1 the map folds and is not invertible."""

    def __init__(self, u: Tensor, w: Tensor, b: float = 0.0) -> None:
        super().__init__(len(u))
        self.u, self.w = nn.Parameter(torch.as_tensor(u)), nn.Parameter(torch.as_tensor(w))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh(x @ self.w + self.b)
        det = 1 + (1 - h**2) * (self.w @ self.u)  # BUG: no u_hat, det can be <= 0
        return x + self.u * h[:, None], det.abs().log()


class _Affine(Bijection):
    """Element-wise affine map with a log-scale parameter: the base of several bugs."""

    def __init__(self, dim: int, log_scale: Tensor | None = None) -> None:
        super().__init__(dim)
        self.log_scale = nn.Parameter(torch.zeros(dim) if log_scale is None else log_scale)
        self.shift = nn.Parameter(torch.linspace(-1, 1, dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(len(x))

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return (y - self.shift) * (-self.log_scale).exp(), -self.log_scale.sum().expand(len(y))


class WrongSignInverse(_Affine):
    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det = super().inverse(y)
        return x, -log_det  # BUG: same sign as forward


class WrongSignForward(_Affine):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_det = super().forward(x)
        return y, -log_det  # BUG


class UnsummedLogDet(_Affine):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, _ = super().forward(x)
        return y, self.log_scale.expand_as(x)  # BUG: (batch, dim), not summed


class MeanLogDet(_Affine):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, _ = super().forward(x)
        return y, self.log_scale.mean().expand(len(x))  # BUG: mean instead of sum


class RawScaleAffine(Bijection):
    """Scale parametrised directly: log(scale) is NaN once the optimiser makes it negative."""

    def __init__(self, scale: Tensor) -> None:
        super().__init__(len(scale))
        self.scale = nn.Parameter(torch.as_tensor(scale))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.scale, self.scale.log().sum().expand(len(x))  # BUG: log of raw scale

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y / self.scale, -self.scale.log().sum().expand(len(y))


class ForgetfulActNorm(Bijection):
    """ActNorm whose ``initialized`` flag is a plain attribute: a reloaded model re-initialises."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.initialized = False  # BUG: not a buffer, so not in state_dict

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            with torch.no_grad():
                self.loc.copy_(x.mean(0))
                self.log_scale.copy_(x.std(0).log())
            self.initialized = True
        return (x - self.loc) * (-self.log_scale).exp(), -self.log_scale.sum().expand(len(x))

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y * self.log_scale.exp() + self.loc, self.log_scale.sum().expand(len(y))


class PlainPermutation(Bijection):
    """Random permutation kept as a plain tensor: a new process would draw another one."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.perm = torch.randperm(dim)  # BUG: not a buffer

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(len(x))

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y[:, self.perm.argsort()], y.new_zeros(len(y))


class LogitWithoutConstant(Bijection):
    """Logit squeeze that forgets the log(1 - 2 alpha) term of the log-det."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__(None)
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        return p.log() - (-p).log1p(), (-p.log() - (-p).log1p()).sum(-1)  # BUG: no constant

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        p = torch.sigmoid(y)
        return (p - self.alpha) / (1 - 2 * self.alpha), (p.log() + (-p).log1p()).sum(-1)


class BatchCentering(Bijection):
    """Subtracts the batch mean: each sample's output depends on the others."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x - x.mean(0), x.new_zeros(len(x))

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y, y.new_zeros(len(y))


class Crashing(Bijection):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise RuntimeError("boom")


class ReturnsTensor(Bijection):
    """Forgets the log-det, as if it were an nn.Linear in an nn.Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


class ForwardOnly(_Affine):
    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError("no inverse")


# --- autoregressive layers: MADE masks off by one -------------------------------------------


class SelfSeeingMADE(MADE):
    """Output mask ``>=`` instead of ``>``: entry i's parameters read x_i itself."""

    def masks(self, in_degrees: Tensor, hidden: list[Tensor]) -> list[Tensor]:
        masks = super().masks(in_degrees, hidden)
        masks[-1] = in_degrees[:, None] >= hidden[-1][None, :]  # BUG: off by one
        return masks


class TooStrictMADE(MADE):
    """Hidden masks ``>`` instead of ``>=``: in 2-D the second entry never sees the first."""

    def masks(self, in_degrees: Tensor, hidden: list[Tensor]) -> list[Tensor]:
        masks = super().masks(in_degrees, hidden)
        masks[0] = hidden[0][:, None] > in_degrees[None, :]  # BUG: off by one
        return masks


def self_seeing_maf_layer(dim: int, hidden: int = 16) -> AffineAutoregressive:
    """A MAF layer whose MADE lets each entry see itself (random weights, so it shows)."""
    layer = AffineAutoregressive(dim, hidden, depth=1, zero_init=False)
    layer.made = SelfSeeingMADE(dim, 2, hidden, depth=1)
    return layer


# --- rational-quadratic splines: the pitfalls of writing one ---------------------------------


def _spline(
    v: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float,
    *,
    inverse: bool = False,
    boundary_from_softplus: bool = False,
    clamp_tails: bool = True,
    wrong_root: bool = False,
    softmax_twice: bool = False,
) -> tuple[Tensor, Tensor]:
    """A spline written from scratch, with one switch per bug (all off: a correct spline)."""
    bins = widths.shape[-1]
    if softmax_twice:
        widths, heights = widths.softmax(-1), heights.softmax(-1)  # BUG: normalised again below

    def knots(raw: Tensor) -> Tensor:
        share = 1e-3 + (1 - 1e-3 * bins) * raw.softmax(-1)
        cum = torch.cumsum(share, -1)
        inner = -bound + 2 * bound * cum[..., :-1]
        edge = torch.full_like(cum[..., :1], bound)
        return torch.cat([-edge, inner, edge], -1)

    xk, yk = knots(widths), knots(heights)
    offset = torch.log(torch.expm1(torch.tensor(1 - 1e-3, dtype=v.dtype)))
    if boundary_from_softplus:  # BUG: the boundary slopes come out of softplus(0), not 1
        dk = 1e-3 + nn.functional.softplus(nn.functional.pad(derivatives, (1, 1)))
    else:
        slopes = 1e-3 + nn.functional.softplus(derivatives + offset)
        dk = nn.functional.pad(slopes, (1, 1), value=1.0)
    inside = (v >= -bound) & (v <= bound)
    u = v.clamp(-bound, bound) if clamp_tails else v  # BUG when False: arithmetic on the tails
    edges = yk if inverse else xk
    k = (u[..., None] >= edges[..., 1:-1]).sum(-1, keepdim=True)

    def at(t: Tensor, j: Tensor) -> Tensor:
        return t.gather(-1, j).squeeze(-1)

    x0, x1, y0, y1 = at(xk, k), at(xk, k + 1), at(yk, k), at(yk, k + 1)
    d0, d1 = at(dk, k), at(dk, k + 1)
    s = (y1 - y0) / (x1 - x0)
    if inverse:
        dy, curve = u - y0, d0 + d1 - 2 * s
        a = (y1 - y0) * (s - d0) + dy * curve
        b = (y1 - y0) * d0 - dy * curve
        c = -s * dy
        root = (b * b - 4 * a * c).sqrt()
        xi = (-b - root) / (2 * a) if wrong_root else 2 * c / (-b - root)  # BUG: other root
        out = x0 + xi * (x1 - x0)
    else:
        xi = (u - x0) / (x1 - x0)
        between = xi * (1 - xi)
        out = y0 + (y1 - y0) * (s * xi**2 + d0 * between) / (s + (d0 + d1 - 2 * s) * between)
    between = xi * (1 - xi)
    slope = (
        s**2
        * (d1 * xi**2 + 2 * s * between + d0 * (1 - xi) ** 2)
        / (s + (d0 + d1 - 2 * s) * between) ** 2
    )
    log_det = -slope.log() if inverse else slope.log()
    return torch.where(inside, out, v), torch.where(inside, log_det, torch.zeros_like(log_det))


def _pair(**bug: bool):
    def forward(x, widths, heights, derivatives, bound):
        return _spline(x, widths, heights, derivatives, bound, **bug)

    def inverse(y, widths, heights, derivatives, bound):
        return _spline(y, widths, heights, derivatives, bound, inverse=True, **bug)

    return forward, inverse


correct_spline, correct_spline_inverse = _pair()
boundary_slope_spline, boundary_slope_spline_inverse = _pair(boundary_from_softplus=True)
unclamped_spline, unclamped_spline_inverse = _pair(clamp_tails=False)
wrong_root_spline, wrong_root_spline_inverse = _pair(wrong_root=True)
softmax_twice_spline, softmax_twice_spline_inverse = _pair(softmax_twice=True)
