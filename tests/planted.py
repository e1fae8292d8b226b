"""Deliberately broken layers: each reproduces a bug seen in published flow code.

The regression tests assert that ``flowcourse.checks`` fails every one of them with a message
that points at the bug. Do not "fix" them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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
