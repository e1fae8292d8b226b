"""A flow: a base distribution pushed through bijections.

Convention (the same as ``torch.distributions.TransformedDistribution``): the bijections are
listed in the GENERATIVE direction, base -> data, ``x = f_K(...f_1(z))``. Then

    log q(x) = log p(z) + sum_k (inverse log-dets),  with z = f_1^{-1}(...f_K^{-1}(x))
             = log p(z) - sum_k (forward log-dets),  with x = f_K(...f_1(z))

The first line is ``log_prob`` (density estimation, needs inverses); the second is
``sample_and_log_prob`` (variational inference, forward only).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from flowcourse.bijections import ActNorm, AffineCoupling, Bijection, Compose

__all__ = ["standard_normal", "Flow", "realnvp"]


def standard_normal(dim: int, dtype: torch.dtype | None = None) -> Distribution:
    """N(0, I) on R^dim, with ``event_shape (dim,)``: ``log_prob(z: (batch, dim)) -> (batch,)``.

    Argument validation is off: a nan in ``z`` gives a nan log-density, which the training
    loop's NaN guard then reports by step and parameter, instead of a ``ValueError`` that
    prints the whole tensor from inside ``torch.distributions``.
    """
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"standard_normal expects dim to be an integer >= 1, got {dim!r}")
    zeros = torch.zeros(int(dim), dtype=dtype)
    normal = Normal(zeros, torch.ones_like(zeros), validate_args=False)
    return Independent(normal, 1, validate_args=False)


def _map_tensors(dist: Distribution, fn: Callable[[Tensor], Tensor]) -> Distribution:
    """A shallow copy of ``dist`` with ``fn`` applied to its tensors (and nested distributions)."""
    dist = copy.copy(dist)
    for name, value in vars(dist).items():
        if isinstance(value, Tensor):
            setattr(dist, name, fn(value))
        elif isinstance(value, Distribution):
            setattr(dist, name, _map_tensors(value, fn))
    return dist


class Flow(nn.Module):
    """``Flow(base, bijections)``: samples are ``x = f_K(...f_1(z))`` with ``z ~ base``.

    ``base`` is any Distribution with ``event_shape (dim,)``; ``bijections`` are listed base ->
    data and kept in ``self.transform`` (a :class:`Compose`). ``flow.double()`` also converts
    the base; the base is not part of ``state_dict``.

    A conditional flow (layers with ``context_dim > 0``) models ``q(x | c)``: ``log_prob(x,
    context=c)`` with ``c: (batch, context_dim)``, ``sample(n, context=c)`` with one row of
    ``c`` per sample, or a single ``(context_dim,)`` row shared by all ``n``.
    """

    def __init__(self, base: Distribution, bijections: Sequence[nn.Module] | nn.Module) -> None:
        super().__init__()
        if not isinstance(base, Distribution):
            raise TypeError(
                f"Flow expects a torch.distributions.Distribution as base, "
                f"got {type(base).__name__}"
            )
        if len(base.event_shape) != 1 or len(base.batch_shape) != 0:
            raise ValueError(
                f"Flow expects a base with event_shape (dim,) and batch_shape (), got event_shape "
                f"{tuple(base.event_shape)} and batch_shape {tuple(base.batch_shape)}; wrap a "
                f"per-dimension distribution in torch.distributions.Independent(..., 1)"
            )
        if isinstance(bijections, Bijection):
            bijections = [bijections]
        self.dim = base.event_shape[0]
        self.base = base
        self.transform = Compose(*bijections)
        if self.transform.dim not in (None, self.dim):
            raise ValueError(
                f"Flow got a base of dim {self.dim} but bijections of dim {self.transform.dim}"
            )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"

    @property
    def bijections(self) -> nn.ModuleList:
        """The layers, base -> data."""
        return self.transform.layers

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Flow:
        # .double() / .to() reach parameters and buffers; the base's tensors need a hand.
        super()._apply(fn, recurse)
        self.base = _map_tensors(self.base, fn)
        return self

    def _check(self, x: Tensor, method: str) -> None:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"Flow(dim={self.dim}).{method} expects a tensor of shape "
                f"(batch, {self.dim}), got {got}"
            )

    def _check_n(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"Flow expects a number of samples n >= 1, got {n!r}")
        return int(n)

    @property
    def context_dim(self) -> int:
        """Width of the context of a conditional flow, 0 for an unconditional one."""
        return self.transform.context_dim

    def _sample_context(self, n: int, context: Tensor | None) -> Tensor | None:
        # One (context_dim,) row serves all n samples.
        if isinstance(context, Tensor) and context.ndim == 1:
            return context.expand(n, -1)
        return context

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x: (batch, dim) -> (batch,)``: log p(z) at z = inverse(x) plus the inverse log-dets.

        A conditional flow needs ``context: (batch, context_dim)`` and gives ``log q(x | c)``.
        """
        self._check(x, "log_prob")
        z, log_det = self.transform.inverse(x, context=context)
        return self.base.log_prob(z) + log_det

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``n`` samples, ``(n, dim)``, without gradients (use ``sample_and_log_prob`` to train).

        A conditional flow needs ``context: (n, context_dim)``, or one ``(context_dim,)`` row.
        """
        n = self._check_n(n)
        z = self.base.sample((n,))
        return self.transform(z, context=self._sample_context(n, context))[0]

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x: (n, dim), log q(x): (n,))`` in the forward direction only, with gradients.

        ``log q(x) = log p(z) - sum of forward log-dets``: no inverse is needed, which is what
        reverse-KL training (variational inference) with planar or radial flows relies on.
        """
        n = self._check_n(n)
        z = self.base.rsample((n,)) if self.base.has_rsample else self.base.sample((n,))
        x, log_det = self.transform(z, context=self._sample_context(n, context))
        return x, self.base.log_prob(z) - log_det

    @torch.no_grad()
    def trace(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """``[z, f_1(z), f_2(f_1(z)), ..., x]``: the K + 1 states, for per-layer plots."""
        self._check(z, "trace")
        states = [z]
        for layer in self.bijections:
            kw = {"context": context} if getattr(layer, "context_dim", 0) else {}
            states.append(layer(states[-1], **kw)[0])
        return states

    @torch.no_grad()
    def trace_inverse(self, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """``[x, f_K^{-1}(x), ..., z]``: the K + 1 states from data back to the base."""
        self._check(x, "trace_inverse")
        states = [x]
        for layer in reversed(self.bijections):
            kw = {"context": context} if getattr(layer, "context_dim", 0) else {}
            states.append(layer.inverse(states[-1], **kw)[0])
        return states


def realnvp(
    dim: int,
    layers: int = 8,
    hidden: int = 64,
    depth: int = 2,
    scale_bound: float | None = 2.0,
    actnorm: bool = False,
    activation: type[nn.Module] = nn.ReLU,
    context_dim: int = 0,
) -> Flow:
    """A RealNVP flow (Dinh et al. 2017) on R^dim with a standard normal base.

    ``layers`` coupling layers with alternating masks ``[1, 0, 1, ...]`` and ``[0, 1, 0, ...]``
    (for dim 2: ``[1, 0]`` and ``[0, 1]``), so every entry is transformed. ``actnorm=True`` puts
    an :class:`ActNorm` after each coupling, i.e. first on the way from data to base.
    ``hidden``, ``depth``, ``scale_bound``, ``activation`` and ``context_dim`` (> 0: a
    conditional flow ``q(x | c)``) configure every :class:`AffineCoupling`.
    """
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 2:
        raise ValueError(
            f"realnvp needs dim >= 2 (a coupling layer keeps some entries to "
            f"condition on), got {dim!r}"
        )
    steps: list[nn.Module] = []
    for k in range(layers):
        mask = (torch.arange(dim) + k) % 2 == 0
        steps.append(
            AffineCoupling(
                mask,
                hidden=hidden,
                depth=depth,
                scale_bound=scale_bound,
                activation=activation,
                context_dim=context_dim,
            )
        )
        if actnorm:
            steps.append(ActNorm(dim))
    return Flow(standard_normal(dim), steps)
