"""Autoregressive flows: MADE, and one affine layer that is a MAF or an IAF step.

An autoregressive map changes entry ``i`` of its input using only the entries that come
before ``i`` in some order, so its Jacobian is triangular and its log-det is a sum over the
diagonal. **MADE** (Germain et al. 2015) computes every entry's parameters in one pass of one
network by masking its weights: input ``i`` gets degree ``rank(i) + 1`` in ``1..D``, every
hidden unit a degree, and

- a hidden unit of degree ``k`` reads inputs and hidden units of degree ``<= k`` (``>=`` rule),
- output ``i`` reads hidden units of degree ``< rank(i) + 1`` (strict ``>`` rule),

so output ``i`` depends on the inputs that come before ``i`` and never on ``i`` itself. A
context ``c`` (features of an image, a class, the parameters of a simulator) enters every
first-layer unit; units of degree 0 read the context alone, and the first entry's parameters
are a function of ``c``.

:class:`AffineAutoregressive` applies ``y = x * exp(s) + t``, ``(t, s) = MADE(x, c)``, in the
direction it computes in one pass, and undoes it in ``D`` passes:

- ``fast="density"`` is a **MAF** step (Papamakarios et al. 2017): ``inverse`` (data ->
  base, the density) is one pass, ``forward`` (sampling) takes ``D``.
- ``fast="sampling"`` is an **IAF** step (Kingma et al. 2016): ``forward`` (base -> data,
  sampling) is one pass, ``inverse`` (the density of given points) takes ``D``.

``scale="gate"`` is the IAF paper's gated update ``y = sigma * x + (1 - sigma) * m``,
``sigma = sigmoid(s + forget_bias)``, which keeps every scale in (0, 1).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcourse.bijections import Bijection
from flowcourse.flows import Flow, standard_normal

__all__ = [
    "MaskedLinear",
    "input_degrees",
    "hidden_degrees",
    "made_masks",
    "MADE",
    "AffineAutoregressive",
    "maf",
]


def _check_int(value: object, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_order(order: Tensor | None, dim: int, owner: str) -> Tensor:
    order = torch.arange(dim) if order is None else torch.as_tensor(order)
    if (
        order.ndim != 1
        or order.is_floating_point()
        or order.dtype == torch.bool
        or not torch.equal(order.long().sort().values, torch.arange(dim))
    ):
        raise ValueError(
            f"{owner} expects order to be a permutation of 0..{dim - 1} (the entry that comes "
            f"first, then second, ...), got {order.tolist()}"
        )
    return order.long()


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask: (out, in)`` (a buffer)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def input_degrees(order: Tensor) -> Tensor:
    """Degree of each input entry: ``rank + 1`` in ``1..D``; ``order[k]`` is the k-th entry."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank + 1


def hidden_degrees(units: int, dim: int, context: bool) -> Tensor:
    """Degrees of one hidden layer, cycling through ``0..D-1`` with a context, else ``1..D-1``.

    A unit of degree ``k`` may read inputs of degree ``<= k``. Degree ``D`` would feed no
    output, so it is never used; degree 0 reads no input, only the context (without one, and
    for ``D = 1``, it is a constant).
    """
    low = 0 if context or dim == 1 else 1
    return low + torch.arange(units) % (dim - low)


def made_masks(in_degrees: Tensor, hidden: list[Tensor]) -> list[Tensor]:
    """The MADE masks ``(out, in)`` of each layer, from the degrees of inputs and hidden layers.

    Hidden layers: ``M[k, j] = degree_k >= degree_j``. Output layer: ``M[i, k] = degree_i >
    degree_k`` with the output degrees equal to the input ones. The strict ``>`` at the output
    is what keeps entry ``i`` from seeing itself.
    """
    masks, previous = [], in_degrees
    for degrees in hidden:
        masks.append(degrees[:, None] >= previous[None, :])
        previous = degrees
    masks.append(in_degrees[:, None] > previous[None, :])
    return masks


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015).

    ``x: (..., dim)`` and ``context: (..., context_dim)`` (broadcast against ``x``'s leading
    shape; required when ``context_dim > 0``) -> ``(..., outputs, dim)``: ``outputs`` numbers
    per entry, where those of entry ``i`` depend only on the entries before ``i`` in ``order``
    and on the context. ``depth`` hidden layers of ``hidden`` units with ``activation``; the
    context enters the first hidden layer through an unmasked linear map. ``depth=0`` is a
    masked linear map. Layers are created in the order first, context, hidden, last.
    """

    def __init__(
        self,
        dim: int,
        outputs: int = 2,
        hidden: int = 64,
        depth: int = 2,
        context_dim: int = 0,
        order: Tensor | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.dim = _check_int(dim, "MADE(dim=...)", 1)
        self.outputs = _check_int(outputs, "MADE(outputs=...)", 1)
        hidden = _check_int(hidden, "MADE(hidden=...)", 1)
        depth = _check_int(depth, "MADE(depth=...)", 0)
        self.context_dim = _check_int(context_dim, "MADE(context_dim=...)", 0)
        if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
            raise ValueError(f"MADE expects activation to be a module class, got {activation!r}")
        self.register_buffer("order", _check_order(order, self.dim, "MADE"))
        degrees = [hidden_degrees(hidden, self.dim, self.context_dim > 0) for _ in range(depth)]
        self.register_buffer("in_degrees", input_degrees(self.order))
        masks = self.masks(self.in_degrees, degrees)
        # Each output row repeats once per parameter: rows [p * dim + i] belong to entry i.
        masks[-1] = masks[-1].repeat(self.outputs, 1)
        self.first = MaskedLinear(masks[0])
        width = masks[0].shape[0]
        self.context = nn.Linear(self.context_dim, width) if self.context_dim else None
        self.hidden = nn.ModuleList(MaskedLinear(m) for m in masks[1:-1]) if depth else None
        self.last = MaskedLinear(masks[-1]) if depth else None
        self.activation = activation() if depth else None

    def masks(self, in_degrees: Tensor, hidden: list[Tensor]) -> list[Tensor]:
        """The 0/1 masks of the layers (see :func:`made_masks`)."""
        return made_masks(in_degrees, hidden)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, outputs={self.outputs}, order={self.order.tolist()}"

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.first(x)
        if self.context is not None:
            if context is None:
                raise ValueError(f"MADE needs a context of shape (..., {self.context_dim})")
            h = h + self.context(context)
        if self.last is not None:
            h = self.activation(h)
            for layer in self.hidden:
                h = self.activation(layer(h))
            h = self.last(h)
        return h.unflatten(-1, (self.outputs, self.dim))


class AffineAutoregressive(Bijection):
    """Affine autoregressive layer: a MAF step (``fast="density"``) or an IAF step.

    In its one-pass direction the layer maps ``u -> v = u * exp(s) + t`` with
    ``(t, s) = MADE(u, context)``, entry by entry, so ``log|det J| = sum_i s_i``; the other
    direction solves for ``u`` one entry at a time (``dim`` passes of the MADE).

    - ``fast="density"`` (MAF): ``inverse(x)`` is the one-pass map, data to base, written
      ``z = x * exp(s) + t`` as the course writes every density direction; ``forward``
      (sampling) takes ``dim`` passes.
    - ``fast="sampling"`` (IAF): ``forward(z)`` is the one-pass map, base to data;
      ``inverse`` takes ``dim`` passes.

    ``scale="tanh"`` bounds ``s = scale_bound * tanh(raw / scale_bound)`` (``scale_bound=None``:
    unbounded). ``scale="gate"`` is the gated update of Kingma et al. (2016):
    ``v = sigma * u + (1 - sigma) * t``, ``sigma = sigmoid(raw + forget_bias)``, ``log|det J| =
    sum log sigma``. ``zero_init=True`` starts the MADE's last layer at zero: the identity for
    ``"tanh"``, a fixed contraction ``sigmoid(forget_bias)`` for ``"gate"``.

    ``x: (batch, dim)``; with ``context_dim > 0`` every call needs ``context: (batch,
    context_dim)``, and ``x`` may also be ``(samples, batch, dim)``: several samples per row of
    the context (an amortised posterior's draws for each image), the context's share of the
    first layer computed once per row. ``hidden``, ``depth``, ``order`` and ``activation``
    configure the MADE.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        depth: int = 2,
        context_dim: int = 0,
        order: Tensor | None = None,
        fast: str = "density",
        scale: str = "tanh",
        scale_bound: float | None = 2.0,
        forget_bias: float = 1.5,
        activation: type[nn.Module] = nn.ReLU,
        zero_init: bool = True,
    ) -> None:
        super().__init__(dim)
        if fast not in ("density", "sampling"):
            raise ValueError(
                f"AffineAutoregressive expects fast='density' (MAF) or 'sampling' (IAF), "
                f"got {fast!r}"
            )
        if scale not in ("tanh", "gate"):
            raise ValueError(f"AffineAutoregressive expects scale='tanh' or 'gate', got {scale!r}")
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(
                f"AffineAutoregressive expects scale_bound > 0 or None, got {scale_bound}"
            )
        self.fast, self.scale = fast, scale
        self.scale_bound, self.forget_bias = scale_bound, float(forget_bias)
        self.made = MADE(self.dim, 2, hidden, depth, context_dim, order, activation)
        self.context_dim = self.made.context_dim
        if zero_init:
            last = self.made.last if self.made.last is not None else self.made.first
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, fast={self.fast!r}, scale={self.scale!r}, "
            f"context_dim={self.context_dim}"
        )

    def check_input(self, x: Tensor, name: str = "x") -> None:
        # (samples, batch, dim) with a context of (batch, context_dim): see the docstring.
        if isinstance(x, Tensor) and x.ndim == 3 and self.context_dim:
            x = x[0]
        super().check_input(x, name)

    def _step(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(scale, shift, log scale)`` of the one-pass map at input ``u``."""
        t, raw = self.made(u, context).unbind(-2)
        if self.scale == "gate":
            raw = raw + self.forget_bias
            sigma = torch.sigmoid(raw)
            return sigma, (1 - sigma) * t, F.logsigmoid(raw)
        s = (
            raw
            if self.scale_bound is None
            else self.scale_bound * torch.tanh(raw / self.scale_bound)
        )
        return s.exp(), t, s

    def _one_pass(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        # With the gate: u * sigma + (1 - sigma) * m, the IAF paper's form, bit for bit.
        scale, shift, log_scale = self._step(u, context)
        return u * scale + shift, log_scale.sum(-1)

    def _solve(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``u`` with ``one_pass(u) = v``, in ``dim`` passes; returns ``(u, -log-det)``.

        Pass ``k`` computes the parameters from the current guess, whose entries of rank
        ``< k`` are already exact, so the entry of rank ``k`` becomes exact; the last pass's
        parameters are all exact and give the log-det.
        """
        u = torch.zeros_like(v)
        for _ in range(self.dim):
            scale, shift, log_scale = self._step(u, context)
            u = (v - shift) / scale
        return u, -log_scale.sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        self.check_context(context, x)
        if self.fast == "sampling":
            return self._one_pass(x, context)
        return self._solve(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "y")
        self.check_context(context, y)
        if self.fast == "density":
            return self._one_pass(y, context)
        return self._solve(y, context)


def maf(
    dim: int,
    layers: int = 5,
    hidden: int = 64,
    depth: int = 2,
    context_dim: int = 0,
    scale_bound: float | None = 2.0,
    activation: type[nn.Module] = nn.ReLU,
) -> Flow:
    """A masked autoregressive flow (Papamakarios et al. 2017) on R^dim, standard normal base.

    ``layers`` :class:`AffineAutoregressive` layers (``fast="density"``) whose orders
    alternate between ``0, 1, ..., dim-1`` and its reverse, so every entry is conditioned on
    every other in some layer. Density in one pass per layer, sampling in ``dim``.
    """
    dim = _check_int(dim, "maf(dim=...)", 1)
    steps = []
    for k in range(_check_int(layers, "maf(layers=...)", 1)):
        order = torch.arange(dim) if k % 2 == 0 else torch.arange(dim).flip(0)
        steps.append(
            AffineAutoregressive(
                dim,
                hidden,
                depth,
                context_dim,
                order,
                fast="density",
                scale_bound=scale_bound,
                activation=activation,
            )
        )
    return Flow(standard_normal(dim), steps)
