"""Invertible layers ("bijections") with exact log-determinants.

Every layer maps ``x: (batch, dim)`` to ``y: (batch, dim)`` and returns the pair ``(y, log_det)``
where ``log_det: (batch,)`` is ``log|det J|`` of the map it just applied. ``inverse`` undoes
``forward`` and returns minus the forward log-det at the matching point, so

    y, ld = layer(x);  x_back, ld_back = layer.inverse(y)   # x_back == x, ld_back == -ld

Layers validate their input (a 2-D floating-point tensor with the right ``dim``) and work in
float32 and float64 (``layer.double()``).
"""

from __future__ import annotations

import itertools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Bijection",
    "Affine",
    "ActNorm",
    "Planar",
    "planar",
    "planar_inverse",
    "planar_u_hat",
    "Radial",
    "radial",
    "radial_inverse",
    "AffineCoupling",
    "Permutation",
    "Reverse",
    "Logit",
    "dequantize",
    "Compose",
]


def _check_dim(dim: object, owner: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"{owner} expects dim to be an integer >= 1, got {dim!r}")
    return int(dim)


def _per_dim(value: float | Tensor, dim: int, what: str) -> Tensor:
    """A float or a (dim,) tensor -> a fresh (dim,) tensor in the default dtype."""
    value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if value.ndim > 1 or value.numel() not in (1, dim):
        raise ValueError(
            f"{what} must be a number or a tensor of shape ({dim},), got {value.shape}"
        )
    return value.expand(dim).clone()


class Bijection(nn.Module):
    """An invertible map with a tractable ``log|det J|``.

    Subclasses implement ``forward(x) -> (y, log_det)`` and ``inverse(y) -> (x, log_det)``,
    calling ``self.check_input`` first. ``dim=None`` means "any dimension" (element-wise layers).

    A conditional layer (``context_dim > 0``) takes ``context: (batch, context_dim)`` as a
    keyword in both directions, ``forward(x, context=c)``: for each fixed ``c`` it is a
    bijection of ``x`` (``self.check_context`` validates it).
    """

    context_dim: int = 0  # > 0: forward and inverse need a context of this width

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = None if dim is None else _check_dim(dim, type(self).__name__)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse")

    def label(self) -> str:
        """Name used in error messages, e.g. ``Affine(dim=2)``."""
        name = type(self).__name__
        return name if self.dim is None else f"{name}(dim={self.dim})"

    def extra_repr(self) -> str:
        return "" if self.dim is None else f"dim={self.dim}"

    def check_input(self, x: Tensor, name: str = "x") -> None:
        """Raise a ValueError naming what was expected and what came."""
        shape = "(batch, dim)" if self.dim is None else f"(batch, {self.dim})"
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{self.label()} expects {name} to be a tensor of shape {shape}, "
                f"got {type(x).__name__}"
            )
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise ValueError(
                f"{self.label()} expects {name} of shape {shape}, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"{self.label()} expects a floating-point {name} (float32 or float64), "
                f"got {x.dtype}"
            )
        dtype = self._dtype()
        if dtype is not None and x.dtype != dtype:
            # Silent promotion would mix precisions; a clear error is easier to fix.
            raise ValueError(
                f"{self.label()} has {dtype} parameters but {name} is {x.dtype}: "
                f"convert one of them, e.g. layer.to({x.dtype}) or {name}.to({dtype})"
            )

    def check_context(self, context: Tensor | None, x: Tensor) -> None:
        """Raise a clear error unless ``context`` fits this layer and the batch ``x``."""
        if not self.context_dim:
            if context is not None:
                raise ValueError(f"{self.label()} takes no context, but one was given")
            return
        shape = f"({x.shape[-2]}, {self.context_dim})"
        if context is None:
            raise ValueError(f"{self.label()} needs a context of shape {shape}, got None")
        if not isinstance(context, Tensor):
            raise TypeError(
                f"{self.label()} expects a context tensor of shape {shape}, "
                f"got {type(context).__name__}"
            )
        if context.shape != (x.shape[-2], self.context_dim):
            raise ValueError(
                f"{self.label()} expects a context of shape {shape} (one row per sample), "
                f"got {tuple(context.shape)}"
            )
        if context.dtype != x.dtype:
            raise ValueError(
                f"{self.label()} got a {context.dtype} context for {x.dtype} inputs: "
                f"convert it, e.g. context.to({x.dtype})"
            )

    def _dtype(self) -> torch.dtype | None:
        # The layer's own tensors first: walking every submodule on each call costs about
        # a tenth of a small coupling layer's training step.
        own = (*self._parameters.values(), *self._buffers.values())
        for tensor in itertools.chain(own, self.parameters(), self.buffers()):
            if tensor is not None and tensor.is_floating_point():
                return tensor.dtype
        return None


# --- element-wise affine maps ---------------------------------------------------------------


class Affine(Bijection):
    """Element-wise ``y = exp(log_scale) * x + shift``; ``x, y: (batch, dim)``.

    The scale is parametrised by its log, so it stays strictly positive whatever the optimiser
    does. Starts as the identity unless ``scale`` (> 0) or ``shift`` are given.
    """

    def __init__(self, dim: int, scale: float | Tensor = 1.0, shift: float | Tensor = 0.0) -> None:
        super().__init__(dim)
        scale = _per_dim(scale, self.dim, "Affine(scale=...)")
        if not bool((scale > 0).all()):
            raise ValueError(f"Affine(scale=...) must be strictly positive, got {scale.tolist()}")
        self.log_scale = nn.Parameter(scale.log())
        self.shift = nn.Parameter(_per_dim(shift, self.dim, "Affine(shift=...)"))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        y = x * self.log_scale.exp() + self.shift
        # Same log-det for every sample; a real (batch,) tensor, safe for in-place updates.
        return y, x.new_zeros(x.shape[0]) + self.log_scale.sum()

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        x = (y - self.shift) * (-self.log_scale).exp()
        return x, y.new_zeros(y.shape[0]) - self.log_scale.sum()


class ActNorm(Affine):
    """Affine layer with data-dependent initialisation (Kingma & Dhariwal 2018, Glow).

    ``y = exp(log_scale) * x + shift``. The first call in training mode, forward or inverse, sets
    ``log_scale`` and ``shift`` so that the output of that call has zero mean and unit variance
    per dimension. In a Flow trained by maximum likelihood that first call is the inverse on a
    data batch, so ``shift`` and ``exp(log_scale)`` start as the data's mean and std.

    ``initialized`` is a registered buffer: it is saved in ``state_dict`` and a reloaded model
    does not initialise again.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        if self.training and not self.initialized:
            self._initialize(x, direction="forward")
        return super().forward(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        if self.training and not self.initialized:
            self._initialize(y, direction="inverse")
        return super().inverse(y)

    @torch.no_grad()
    def _initialize(self, batch: Tensor, direction: str) -> None:
        mean = batch.mean(0)
        std = batch.std(0, correction=0)
        # A dimension without spread (or a batch of one) keeps unit scale instead of exploding.
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        if direction == "forward":  # y = x / std - mean / std is standardised
            self.log_scale.copy_(-std.log())
            self.shift.copy_(-mean / std)
        else:  # x = (y - mean) / std is standardised
            self.log_scale.copy_(std.log())
            self.shift.copy_(mean)
        self.initialized.fill_(True)


# --- planar and radial flows (Rezende & Mohamed 2015) -----------------------------------------


def planar_u_hat(u: Tensor, w: Tensor) -> Tensor:
    """Rezende & Mohamed (2015, appendix A.1): ``u_hat = u + (m(w.u) - w.u) w / |w|^2``.

    ``m(a) = -1 + softplus(a)``, so ``w.u_hat = m(w.u) > -1`` and the planar map is invertible.
    ``u, w: (dim,)`` or ``(batch, dim)``.
    """
    wu = (w * u).sum(-1, keepdim=True)
    # tiny instead of 0 keeps w = 0 (a pure translation) finite: then u_hat = u.
    w_sq = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return u + (F.softplus(wu) - 1 - wu) * w / w_sq


def _planar_bias(b: Tensor) -> Tensor:
    # (batch, 1) would broadcast against (batch,) into (batch, batch): flatten it.
    return b.squeeze(-1) if b.ndim == 2 else b


def planar(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Planar map ``f(z) = z + u_hat tanh(w.z + b)`` and its log-det (Rezende & Mohamed 2015).

    ``z: (batch, dim)``; ``u, w: (dim,)`` or per-sample ``(batch, dim)``; ``b: ()`` or
    ``(batch,)``. ``u`` is unconstrained: the invertibility correction ``u_hat`` is applied here.
    Returns ``y: (batch, dim)`` and ``log_det: (batch,)``. By the matrix determinant lemma
    ``det J = 1 + u_hat.psi`` with ``psi = (1 - tanh^2(w.z + b)) w``.
    """
    b = _planar_bias(b)
    u_hat = planar_u_hat(u, w)
    h = torch.tanh((z * w).sum(-1) + b)
    y = z + u_hat * h.unsqueeze(-1)
    det = 1 + (1 - h**2) * (w * u_hat).sum(-1)
    return y, det.abs().log()


def planar_inverse(
    y: Tensor, u: Tensor, w: Tensor, b: Tensor, iterations: int = 100
) -> tuple[Tensor, Tensor]:
    """Numerical inverse of :func:`planar`; same shapes, returns ``(z, log_det of the inverse)``.

    There is no closed form, but only the component of z along w is unknown. With
    ``alpha = w.z`` and ``c = w.u_hat``, dotting ``y = z + u_hat tanh(alpha + b)`` with w gives
    the scalar equation ``alpha + c tanh(alpha + b) = w.y``. Its left side is strictly increasing
    because ``c > -1``, and ``|alpha - w.y| <= |c|``, so bisection on that bracket finds alpha to
    float precision; then ``z = y - u_hat tanh(alpha + b)``.
    """
    b = _planar_bias(b)
    u_hat = planar_u_hat(u, w)
    c = (w * u_hat).sum(-1)
    wy = (y * w).sum(-1)

    def excess(alpha: Tensor) -> Tensor:
        return alpha + c * torch.tanh(alpha + b) - wy

    with torch.no_grad():
        lo = wy - c.abs() - 1
        hi = wy + c.abs() + 1
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = excess(mid) > 0
            lo = torch.where(above, lo, mid)
            hi = torch.where(above, mid, hi)
        alpha = (lo + hi) / 2
    # One Newton step with autograd on: it moves alpha by ~0 at the root, but it gives autograd
    # the implicit-function derivative of alpha, which bisection alone would not.
    slope = 1 + c * (1 - torch.tanh(alpha + b) ** 2)
    alpha = alpha - excess(alpha) / slope
    z = y - u_hat * torch.tanh(alpha + b).unsqueeze(-1)
    _, log_det = planar(z, u, w, b)
    return z, -log_det


class Planar(Bijection):
    """Planar flow layer ``f(z) = z + u_hat tanh(w.z + b)`` (Rezende & Mohamed 2015).

    ``z: (batch, dim)``. Parameters start small and random (torch's global generator). The
    inverse is numerical (bisection, see :func:`planar_inverse`): planar flows are meant for the
    sampling direction, e.g. variational inference with ``Flow.sample_and_log_prob``.
    For extreme ``w.u`` (below about -35 in float64, -16 in float32) softplus underflows, so
    ``w.u_hat`` rounds to -1 and ``det J`` can reach 0 on one hyperplane.
    """

    def __init__(self, dim: int, init_std: float = 0.1) -> None:
        super().__init__(dim)
        self.u = nn.Parameter(torch.randn(self.dim) * init_std)
        self.w = nn.Parameter(torch.randn(self.dim) * init_std)
        self.b = nn.Parameter(torch.randn(()) * init_std)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return planar(x, self.u, self.w, self.b)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        return planar_inverse(y, self.u, self.w, self.b)


def _radial_alpha_beta(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    alpha = F.softplus(a)
    return alpha, -alpha + F.softplus(b)  # beta > -alpha keeps the map invertible


def radial(z: Tensor, z0: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Radial map ``f(z) = z + beta h(r) (z - z0)``, ``h = 1 / (alpha + r)``, ``r = |z - z0|``.

    Rezende & Mohamed (2015). ``a, b`` are unconstrained: ``alpha = softplus(a) > 0`` and
    ``beta = -alpha + softplus(b) > -alpha`` (invertibility). ``z: (batch, dim)``; ``z0: (dim,)``
    or ``(batch, dim)``; ``a, b: ()`` or ``(batch,)``. Returns ``y`` and ``log_det: (batch,)``:
    ``(dim - 1) log(1 + beta h) + log(1 + beta h + beta h' r)``.
    """
    alpha, beta = _radial_alpha_beta(a, b)
    diff = z - z0
    r = diff.norm(dim=-1)
    h = 1 / (alpha + r)
    y = z + (beta * h).unsqueeze(-1) * diff
    # With h' = -h^2 the last term is 1 + beta * alpha * h^2, which log1p handles accurately.
    log_det = (z.shape[-1] - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h**2)
    return y, log_det


def radial_inverse(y: Tensor, z0: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`radial`; same shapes, returns ``(z, log_det of the inverse)``.

    The map moves z along the ray from z0, so only the radius is unknown. It solves
    ``|y - z0| = r (1 + beta / (alpha + r))``, increasing in r; here that scalar equation is the
    quadratic ``r^2 + (alpha + beta - |y - z0|) r - alpha |y - z0| = 0``, so its positive root
    is exact: no iteration is needed.
    """
    alpha, beta = _radial_alpha_beta(a, b)
    diff = y - z0
    r_y = diff.norm(dim=-1)
    B = alpha + beta - r_y
    C = alpha * r_y
    root = torch.sqrt(B**2 + 4 * C)
    # The two textbook forms of the root; each avoids cancellation for one sign of B.
    r = torch.where(B > 0, 2 * C / (root + B.abs()), (root + B.abs()) / 2)
    h = 1 / (alpha + r)
    z = z0 + diff / (1 + beta * h).unsqueeze(-1)
    log_det = (y.shape[-1] - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h**2)
    return z, -log_det


class Radial(Bijection):
    """Radial flow layer, contracting or expanding around ``z0`` (Rezende & Mohamed 2015).

    ``z: (batch, dim)``. Parameters start small and random, so the map starts near identity.
    """

    def __init__(self, dim: int, init_std: float = 0.1) -> None:
        super().__init__(dim)
        self.z0 = nn.Parameter(torch.randn(self.dim) * init_std)
        self.a = nn.Parameter(torch.randn(()) * init_std)
        self.b = nn.Parameter(torch.randn(()) * init_std)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return radial(x, self.z0, self.a, self.b)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        return radial_inverse(y, self.z0, self.a, self.b)


# --- coupling layers (Dinh et al. 2017, RealNVP) --------------------------------------------


class AffineCoupling(Bijection):
    """RealNVP affine coupling layer (Dinh, Sohl-Dickstein & Bengio 2017).

    ``mask: (dim,)`` of 0/1. Entries with mask 1 pass through unchanged and are the only input of
    the conditioner, an MLP on ``x * mask`` that returns a log-scale ``s`` and a shift ``t``.
    As in the paper, the affine map is written in the *density* direction, data to
    base, the one every training step evaluates: ``inverse(x)`` gives ``z = x * exp(s) + t`` on
    the entries with mask 0, ``log_det = sum of s over them``; ``forward(z)`` (base to data, for
    sampling) undoes it, ``x = (z - t) * exp(-s)``. Both directions are exact and cost one
    conditioner call. The mask can be any pattern (halves, checkerboard, ...): outputs are
    merged by the mask itself.

    ``s = scale_bound * tanh(raw / scale_bound)`` softly clamps the log-scale to
    ``(-scale_bound, scale_bound)`` (``None``: no clamp). The conditioner's last layer starts at
    zero, so the layer starts as the identity. ``activation``: the hidden layers'
    non-linearity, a module class. These defaults (density direction, ReLU, bound 2) trained
    two moons best in the course's benchmark (``benchmarks/realnvp.py``): smooth SiLU or the
    affine map written in the sampling direction left the test NLL higher and more
    seed-dependent after 2000 steps.

    ``context_dim > 0`` makes the layer conditional: the conditioner also reads ``context:
    (batch, context_dim)``, which both directions then need.
    """

    def __init__(
        self,
        mask: Tensor,
        hidden: int = 64,
        depth: int = 2,
        scale_bound: float | None = 2.0,
        activation: type[nn.Module] = nn.ReLU,
        context_dim: int = 0,
    ) -> None:
        mask = torch.as_tensor(mask)
        if mask.ndim != 1 or mask.numel() < 2:
            raise ValueError(
                f"AffineCoupling expects a mask of shape (dim,) with dim >= 2, "
                f"got shape {tuple(mask.shape)}"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"AffineCoupling expects a mask of 0s and 1s, got {mask.tolist()}")
        if bool((mask == 1).all()) or bool((mask == 0).all()):
            raise ValueError(
                f"AffineCoupling needs at least one 1 (entries that condition) and "
                f"one 0 (entries that are transformed) in its mask, got {mask.tolist()}"
            )
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"AffineCoupling expects scale_bound > 0 or None, got {scale_bound}")
        if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
            raise ValueError(
                f"AffineCoupling expects activation to be a module class such as nn.ReLU, "
                f"got {activation!r}"
            )
        if (
            not isinstance(context_dim, numbers.Integral)
            or isinstance(context_dim, bool)
            or (context_dim < 0)
        ):
            raise ValueError(f"AffineCoupling expects context_dim >= 0, got {context_dim!r}")
        super().__init__(mask.numel())
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.scale_bound = scale_bound
        self.context_dim = int(context_dim)

        layers: list[nn.Module] = []
        width = self.dim + self.context_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        last = nn.Linear(width, 2 * self.dim)  # s and t for every entry; masked ones are zeroed
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.conditioner = nn.Sequential(*layers, last)

    def extra_repr(self) -> str:
        return f"mask={self.mask.int().tolist()}, scale_bound={self.scale_bound}"

    def _scale_shift(self, x_kept: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        features = x_kept if context is None else torch.cat([x_kept, context], dim=-1)
        raw, t = self.conditioner(features).chunk(2, dim=-1)
        s = (
            raw
            if self.scale_bound is None
            else self.scale_bound * torch.tanh(raw / self.scale_bound)
        )
        # s = t = 0 on kept entries, so exp(s) * x + t leaves them exactly unchanged.
        moved = 1 - self.mask
        return s * moved, t * moved

    # Contract names: forward(x) -> y runs base to data, so here x plays the docstring's z.
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        self.check_context(context, x)
        # x * mask == y * mask: the kept entries are equal in both directions
        s, t = self._scale_shift(x * self.mask, context)
        return (x - t) * (-s).exp(), -s.sum(-1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        self.check_context(context, y)
        s, t = self._scale_shift(y * self.mask, context)
        return y * s.exp() + t, s.sum(-1)


# --- permutations ---------------------------------------------------------------------------


class Permutation(Bijection):
    """Reorder dimensions: ``y = x[:, perm]``; ``log_det = 0`` (|det| of a permutation is 1).

    ``perm`` is stored as a buffer, so it is saved in ``state_dict``.
    """

    def __init__(self, perm: Tensor) -> None:
        perm = torch.as_tensor(perm)
        if perm.ndim != 1 or perm.is_floating_point() or perm.dtype == torch.bool:
            raise ValueError(
                f"Permutation expects a 1-D integer tensor, got {perm.dtype} of "
                f"shape {tuple(perm.shape)}"
            )
        if not torch.equal(perm.sort().values, torch.arange(perm.numel())):
            raise ValueError(
                f"Permutation expects each of 0..{perm.numel() - 1} exactly once, "
                f"got {perm.tolist()}"
            )
        super().__init__(perm.numel())
        self.register_buffer("perm", perm.long())
        self.register_buffer("inverse_perm", perm.argsort())

    @classmethod
    def random(cls, dim: int, generator: torch.Generator | None = None) -> Permutation:
        """A uniformly random permutation of ``dim`` entries."""
        return cls(torch.randperm(_check_dim(dim, cls.__name__), generator=generator))

    def extra_repr(self) -> str:
        return f"perm={self.perm.tolist()}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        return y[:, self.inverse_perm], y.new_zeros(y.shape[0])


class Reverse(Permutation):
    """Reverse the order of the dimensions."""

    def __init__(self, dim: int) -> None:
        dim = _check_dim(dim, "Reverse")
        super().__init__(torch.arange(dim - 1, -1, -1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


# --- image steps ----------------------------------------------------------------------------


class Logit(Bijection):
    """From pixels in (0, 1)^D to R^D: ``y = logit(alpha + (1 - 2 alpha) x)``.

    ``alpha`` keeps pixels at exactly 0 or 1 away from infinite logits. The log-det is exact,
    including the constant ``D log(1 - 2 alpha)`` of the squeeze. Works for any dim.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__(None)
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Logit expects 0 <= alpha < 0.5, got {alpha}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"Logit expects x in [0, 1] (dequantised pixels), got values in "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]"
            )
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = p.log(), torch.log1p(-p)
        log_det = (math.log1p(-2 * self.alpha) - log_p - log_1mp).sum(-1)
        return log_p - log_1mp, log_det

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        # log sigmoid(y) and log(1 - sigmoid(y)) via softplus stay finite for large |y|.
        log_det = (-F.softplus(-y) - F.softplus(y) - math.log1p(-2 * self.alpha)).sum(-1)
        return x, log_det


def dequantize(
    x_int: Tensor, levels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Uniform dequantisation: ``x_cont = (x_int + u) / levels``, ``u ~ U[0, 1)^D``.

    ``x_int: (batch, D)`` holds integers in ``0..levels-1``. Returns ``x_cont`` in [0, 1) (float,
    default dtype for integer input) and ``log_det: (batch,)``, the constant ``-D log(levels)`` of
    the ``1/levels`` scaling. For a density ``p`` on [0, 1)^D the discrete log-likelihood is
    bounded by ``log P(x_int) >= E_u[log p(x_cont)] - D log(levels)``, i.e. add ``log_det`` to
    ``log p(x_cont)`` (Theis et al. 2016; Ho et al. 2019).
    """
    if not isinstance(x_int, Tensor) or x_int.ndim != 2:
        shape = tuple(x_int.shape) if isinstance(x_int, Tensor) else type(x_int).__name__
        raise ValueError(f"dequantize expects x_int of shape (batch, D), got {shape}")
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 2:
        raise ValueError(f"dequantize expects levels to be an integer >= 2, got {levels!r}")
    dtype = x_int.dtype if x_int.is_floating_point() else torch.get_default_dtype()
    values = x_int.to(dtype)
    if x_int.numel() and (
        bool((values != values.round()).any()) or values.min() < 0 or values.max() > levels - 1
    ):
        raise ValueError(
            f"dequantize expects integers in 0..{levels - 1}, got values in "
            f"[{values.min().item():g}, {values.max().item():g}]"
        )
    u = torch.rand(x_int.shape, generator=generator, dtype=dtype)
    log_det = torch.full((x_int.shape[0],), -x_int.shape[1] * math.log(levels), dtype=dtype)
    return (values + u) / levels, log_det


# --- composition ----------------------------------------------------------------------------


def _as_pair(out: object, layer: nn.Module, method: str) -> tuple[Tensor, Tensor]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"{type(layer).__name__}.{method} must return a pair (y, log_det), "
            f"got {type(out).__name__}"
        )
    return out


class Compose(Bijection):
    """Chain bijections: ``Compose(f1, f2, f3)`` is ``x -> f3(f2(f1(x)))``.

    Log-dets are summed per sample; ``inverse`` runs the layers backwards. Use it instead of
    ``nn.Sequential``, which cannot pass (y, log_det) pairs along. Accepts layers or one list.
    A ``context`` is passed to the layers that take one (``context_dim > 0``, all the same).
    """

    def __init__(self, *bijections: nn.Module) -> None:
        if len(bijections) == 1 and isinstance(bijections[0], list | tuple):
            bijections = tuple(bijections[0])
        for i, layer in enumerate(bijections):
            if not isinstance(layer, nn.Module) or not callable(getattr(layer, "inverse", None)):
                raise TypeError(
                    f"Compose expects bijections (modules with forward and inverse), "
                    f"got {type(layer).__name__} at position {i}"
                )
        dims = sorted({d for layer in bijections if (d := getattr(layer, "dim", None)) is not None})
        if len(dims) > 1:
            raise ValueError(f"Compose expects layers of one dim, got dims {dims}")
        contexts = sorted({c for layer in bijections if (c := getattr(layer, "context_dim", 0))})
        if len(contexts) > 1:
            raise ValueError(f"Compose expects layers of one context_dim, got {contexts}")
        super().__init__(dims[0] if dims else None)
        self.context_dim = contexts[0] if contexts else 0
        self.layers = nn.ModuleList(bijections)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> nn.Module:
        return self.layers[index]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        self.check_context(context, x)
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            out = layer(x, context=context) if getattr(layer, "context_dim", 0) else layer(x)
            x, step = _as_pair(out, layer, "forward")
            log_det = log_det + step
        return x, log_det

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        self.check_context(context, y)
        log_det = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            conditional = getattr(layer, "context_dim", 0)
            out = layer.inverse(y, context=context) if conditional else layer.inverse(y)
            y, step = _as_pair(out, layer, "inverse")
            log_det = log_det + step
        return y, log_det
