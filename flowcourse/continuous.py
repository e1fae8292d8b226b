"""Continuous-time flows: a velocity field, an ODE solver that carries the log-det, flow matching.

A continuous flow moves points along ``dx/dt = v(x, t)`` from the base at ``t = 0`` to the data
at ``t = 1``. Along a path the log-density changes by minus the divergence of the field (the
instantaneous change of variables, Chen et al. 2018):

    d/dt log p_t(x(t)) = -div v(x(t), t),     div v = trace(dv/dx),

so the log |det| of the map from time ``t0`` to ``t1`` is ``integral_{t0}^{t1} div v dt``. The
solver here carries ``(x, log_det)`` together, with fixed-step RK4. The conventions are those
of ``flowcourse.flows.Flow``: ``forward`` is base -> data (``t: 0 -> 1``, sampling), ``inverse``
is data -> base (``t: 1 -> 0``, density), and

    log p(x) = log p_base(z) + log_det,   (z, log_det) = integrate(x, from t = 1 to t = 0).

``dynamics(x, t) -> (v, div)`` is what the solver calls: :func:`exact_divergence` (``dim``
backward passes) or :func:`hutchinson_divergence` (one backward pass, an unbiased estimate
for a probe held fixed along the path; Grathwohl et al. 2019). Flow matching (Lipman et al.
2023; Liu et al. 2023) trains the field by regression on the straight conditional path
``x_t = (1 - t) x0 + t x1``, whose velocity is ``x1 - x0``: :func:`flow_matching_loss`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from flowcourse.flows import _map_tensors, standard_normal

__all__ = [
    "TimeEmbedding",
    "VelocityField",
    "LinearField",
    "exact_divergence",
    "hutchinson_divergence",
    "rk4_step",
    "integrate",
    "ContinuousFlow",
    "flow_matching_loss",
    "cnf_nll_loss",
]

Field = Callable[[Tensor, Tensor], Tensor]  # v(x: (batch, dim), t: (batch,)) -> (batch, dim)
Dynamics = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (x, t) -> (v, div)


# --- input checks -----------------------------------------------------------------------------


def _check_points(x: object, name: str = "x", dim: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point():
        got = (
            f"shape {tuple(x.shape)}, dtype {x.dtype}"
            if isinstance(x, Tensor)
            else type(x).__name__
        )
        want = "(batch, dim)" if dim is None else f"(batch, {dim})"
        raise ValueError(f"{name} must be a floating-point tensor of shape {want}, got {got}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (batch, {dim}), got {tuple(x.shape)}")


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (RK4 steps), got {steps!r}")
    return int(steps)


def _times(t: float | Tensor, x: Tensor) -> Tensor:
    """A time as a (batch,) tensor of x's dtype: a float, a 0-d tensor or a (batch,) tensor."""
    t = torch.as_tensor(t, dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(len(x))
    if t.shape != (len(x),):
        raise ValueError(
            f"t must be a number or a tensor of shape ({len(x)},), got {tuple(t.shape)}"
        )
    return t


# --- the velocity field -----------------------------------------------------------------------


class TimeEmbedding(nn.Module):
    """``t: (batch,) -> (batch, 1 + 2 * frequencies)``: ``[t, sin(2 pi k t), cos(2 pi k t)]``.

    A network fed the bare ``t`` finds it hard to change its output quickly in time; a few
    Fourier features give it smooth functions of t with several wiggles to combine.
    """

    def __init__(self, frequencies: int = 4) -> None:
        super().__init__()
        if isinstance(frequencies, bool) or not isinstance(frequencies, int) or frequencies < 0:
            raise ValueError(f"frequencies must be an integer >= 0, got {frequencies!r}")
        self.register_buffer("k", torch.arange(1, frequencies + 1, dtype=torch.float32))
        self.size = 1 + 2 * frequencies

    def forward(self, t: Tensor) -> Tensor:
        angle = 2 * math.pi * t[:, None] * self.k.to(t.dtype)
        return torch.cat([t[:, None], angle.sin(), angle.cos()], dim=1)


class VelocityField(nn.Module):
    """``v(x, t)``: an MLP on ``[x, embed(t)]``, ``x: (batch, dim)``, ``t`` a number or (batch,).

    ``depth`` hidden layers of ``hidden`` units with a smooth activation (SiLU by default: the
    exact divergence and the maximum-likelihood gradients differentiate the field twice, so a
    ReLU network would give a divergence that is piecewise constant).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        depth: int = 3,
        frequencies: int = 4,
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"VelocityField expects {name} >= {low}, got {value!r}")
        self.dim = dim
        self.embed = TimeEmbedding(frequencies)
        layers: list[nn.Module] = []
        width = dim + self.embed.size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        _check_points(x, dim=self.dim)
        return self.net(torch.cat([x, self.embed(_times(t, x))], dim=1))


class LinearField(nn.Module):
    """``v(x, t) = (a + b t) x A^T``: a linear field whose flow is known in closed form.

    Its Jacobian is ``(a + b t) A``, so ``div v = (a + b t) trace(A)`` whatever x, and the
    map from time 0 to 1 is ``x -> x expm(c A)^T`` with ``c = a + b / 2`` (the time integral
    of ``a + b t``; the matrices at different times commute). With a standard normal base,
    the density at ``t = 1`` is exact: :meth:`log_prob`. Known answer for the solver's tests.
    """

    def __init__(self, matrix: Tensor, a: float = 1.0, b: float = 0.0) -> None:
        super().__init__()
        matrix = torch.as_tensor(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"LinearField expects a square matrix, got shape {tuple(matrix.shape)}"
            )
        self.register_buffer("matrix", matrix)
        self.a, self.b = float(a), float(b)
        self.dim = matrix.shape[0]

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        _check_points(x, dim=self.dim)
        return (self.a + self.b * _times(t, x))[:, None] * (x @ self.matrix.T.to(x.dtype))

    def flow_map(self, z: Tensor) -> Tensor:
        """The exact map from t = 0 to t = 1: ``z expm(c A)^T``."""
        c = self.a + self.b / 2
        return z @ torch.linalg.matrix_exp(c * self.matrix.to(z.dtype)).T

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density at t = 1 of a standard normal pushed through the field."""
        c = self.a + self.b / 2
        m = c * self.matrix.to(x.dtype)
        z = x @ torch.linalg.matrix_exp(-m).T
        return standard_normal(self.dim, x.dtype).log_prob(z) - torch.trace(m)


# --- the divergence ---------------------------------------------------------------------------


def _with_graph(x: Tensor) -> Tensor:
    """x ready for autograd: a leaf that requires grad, unless it already is part of a graph."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def exact_divergence(field: Field, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
    """``(v: (batch, dim), div: (batch,))``, the trace of ``dv/dx`` by ``dim`` backward passes.

    Works with or without gradients outside: under ``torch.no_grad()`` it returns detached
    values; when ``x`` (or the field) needs gradients, the divergence keeps its graph, which
    maximum-likelihood training differentiates.
    """
    _check_points(x)
    outer = torch.is_grad_enabled()
    with torch.enable_grad():
        x = _with_graph(x)
        v = field(x, t)
        create_graph = outer and (v.requires_grad and _needs_graph(field, x))
        div = torch.zeros(len(x), dtype=v.dtype)
        if v.requires_grad:  # else the field ignores x (and has no parameters): div v = 0
            for i in range(x.shape[1]):
                (grad,) = torch.autograd.grad(
                    v[:, i].sum(),
                    x,
                    create_graph=create_graph,
                    retain_graph=True,
                    allow_unused=True,
                )
                if grad is not None:
                    div = div + grad[:, i]
    if not create_graph:
        return v.detach(), div.detach()
    return v, div


def _needs_graph(field: Field, x: Tensor) -> bool:
    """Gradients must flow through the divergence when the field has trainable parameters
    or the input itself came from a graph (a later solver stage during training)."""
    params = field.parameters() if isinstance(field, nn.Module) else ()
    return x.grad_fn is not None or any(p.requires_grad for p in params)


def hutchinson_divergence(
    field: Field, x: Tensor, t: float | Tensor, probe: Tensor
) -> tuple[Tensor, Tensor]:
    """``(v, probe^T (dv/dx) probe)``: one backward pass, an unbiased estimate of ``div v``.

    ``probe: (batch, dim)`` with ``E[probe probe^T] = I`` (standard normal or random signs).
    The vector-Jacobian product ``probe^T J`` is dotted with the same probe: with a vector of
    ones instead (``1^T J probe``), the expectation is 0, not the trace. Hold the probe fixed
    along a path (pass the same tensor at every stage and step): the estimate is then the
    exact solution of one ODE, which solvers and their error analysis assume.
    """
    _check_points(x)
    if not isinstance(probe, Tensor) or probe.shape != x.shape:
        got = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
        raise ValueError(f"probe must have the shape of x, {tuple(x.shape)}, got {got}")
    outer = torch.is_grad_enabled()
    with torch.enable_grad():
        x = _with_graph(x)
        v = field(x, t)
        create_graph = outer and (v.requires_grad and _needs_graph(field, x))
        estimate = torch.zeros(len(x), dtype=v.dtype)
        if v.requires_grad:  # else the field ignores x: div v = 0
            (vjp,) = torch.autograd.grad(
                v, x, grad_outputs=probe.to(v.dtype), create_graph=create_graph, allow_unused=True
            )
            if vjp is not None:
                estimate = (vjp * probe.to(v.dtype)).sum(1)
    if not create_graph:
        return v.detach(), estimate.detach()
    return v, estimate


# --- the solver -------------------------------------------------------------------------------


def rk4_step(
    dynamics: Dynamics, x: Tensor, log_det: Tensor, t: float, h: float
) -> tuple[Tensor, Tensor]:
    """One classical Runge-Kutta step of size ``h`` (negative when going back in time).

    ``dynamics(x, t) -> (v, div)``; the state is ``(x: (batch, dim), log_det: (batch,))`` with
    ``dx/dt = v`` and ``d log_det/dt = div``. The log-det is accumulated: the step ADDS
    ``h (k1 + 2 k2 + 2 k3 + k4) / 6`` to it, the same weights as for x.
    """
    v1, d1 = dynamics(x, t)
    v2, d2 = dynamics(x + (h / 2) * v1, t + h / 2)
    v3, d3 = dynamics(x + (h / 2) * v2, t + h / 2)
    v4, d4 = dynamics(x + h * v3, t + h)
    x = x + (h / 6) * (v1 + 2 * v2 + 2 * v3 + v4)
    log_det = log_det + (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4)
    return x, log_det


def integrate(
    field: Field,
    x: Tensor,
    t0: float,
    t1: float,
    steps: int,
    probe: Tensor | None = None,
    step: Callable[..., tuple[Tensor, Tensor]] = rk4_step,
) -> tuple[Tensor, Tensor]:
    """Solve ``dx/dt = v(x, t)`` from ``t0`` to ``t1`` with ``steps`` equal RK4 steps.

    Returns ``(x(t1): (batch, dim), log_det: (batch,))`` with ``log_det`` the log |det| of the
    map ``x(t0) -> x(t1)``, the time integral of ``div v`` along the path (negative time steps
    when ``t1 < t0``). ``probe=None``: exact divergence; a ``(batch, dim)`` probe: Hutchinson's
    estimate with that probe at every stage of every step.
    """
    _check_points(x)
    steps = _check_steps(steps)
    if probe is None:

        def dynamics(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
            return exact_divergence(field, y, t)
    else:

        def dynamics(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
            return hutchinson_divergence(field, y, t, probe)

    h = (t1 - t0) / steps
    log_det = torch.zeros(len(x), dtype=x.dtype)
    for k in range(steps):
        x, log_det = step(dynamics, x, log_det, t0 + k * h, h)
    return x, log_det


# --- the model --------------------------------------------------------------------------------


class ContinuousFlow(nn.Module):
    """A base distribution carried to the data by a velocity field: ``ContinuousFlow(field)``.

    ``field(x, t)`` maps ``(batch, dim)`` and a time to ``(batch, dim)``; the base is N(0, I)
    unless given. ``log_prob(x, steps)`` integrates from the data (t = 1) back to the base
    (t = 0) with the exact divergence (or a Hutchinson ``probe``); ``sample(n, steps)`` from
    the base forward. The number of solver steps is part of the model: with few steps the
    "density" no longer integrates to 1.
    """

    def __init__(self, field: nn.Module, dim: int | None = None, base: Distribution | None = None):
        super().__init__()
        if not callable(field):
            raise TypeError(f"ContinuousFlow expects a field v(x, t), got {type(field).__name__}")
        dim = dim if dim is not None else getattr(field, "dim", None)
        if dim is None:
            raise ValueError("ContinuousFlow needs dim= when the field has no .dim")
        self.field = field
        self.dim = int(dim)
        self.base = base if base is not None else standard_normal(self.dim)
        if tuple(self.base.event_shape) != (self.dim,):
            raise ValueError(
                f"the base must have event_shape ({self.dim},), got {tuple(self.base.event_shape)}"
            )

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ContinuousFlow:
        # .double() / .to() reach parameters and buffers; the base's tensors need a hand.
        super()._apply(fn, recurse)
        self.base = _map_tensors(self.base, fn)
        return self

    def forward(self, z: Tensor, steps: int = 32) -> tuple[Tensor, Tensor]:
        """Base -> data: ``(x, log_det)`` of the map from t = 0 to t = 1."""
        _check_points(z, "z", self.dim)
        return integrate(self.field, z, 0.0, 1.0, steps)

    def inverse(self, x: Tensor, steps: int = 32, probe: Tensor | None = None):
        """Data -> base: ``(z, log_det)`` of the map from t = 1 back to t = 0."""
        _check_points(x, "x", self.dim)
        return integrate(self.field, x, 1.0, 0.0, steps, probe=probe)

    def log_prob(self, x: Tensor, steps: int = 32, probe: Tensor | None = None) -> Tensor:
        """``x: (batch, dim) -> (batch,)``: ``log p_base(z) + log_det`` from data to base."""
        z, log_det = self.inverse(x, steps, probe)
        return self.base.log_prob(z) + log_det

    @torch.no_grad()
    def transport(self, z: Tensor, steps: int = 32, t0: float = 0.0, t1: float = 1.0) -> Tensor:
        """Carry points ``z: (batch, dim)`` along the field from ``t0`` to ``t1`` with RK4 and
        no divergence (the sampling map when ``t0, t1 = 0, 1``; paths for plots)."""
        _check_points(z, "z", self.dim)
        steps = _check_steps(steps)
        h = (t1 - t0) / steps

        def velocity(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
            return self.field(y, t), torch.zeros(len(y), dtype=y.dtype)

        log_det = torch.zeros(len(z), dtype=z.dtype)
        for k in range(steps):
            z, log_det = rk4_step(velocity, z, log_det, t0 + k * h, h)
        return z

    @torch.no_grad()
    def sample(self, n: int, steps: int = 32) -> Tensor:
        """``n`` samples ``(n, dim)``: base points carried from t = 0 to t = 1 (no divergence)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"sample expects a number of samples n >= 1, got {n!r}")
        return self.transport(self.base.sample((int(n),)), steps)


# --- training objectives ----------------------------------------------------------------------


def flow_matching_loss(
    field: Field, x1: Tensor, x0: Tensor | None = None, t: Tensor | None = None
) -> Tensor:
    """Conditional flow matching: ``mean ||v(x_t, t) - (x1 - x0)||^2`` over the batch.

    ``x1: (batch, dim)`` data; ``x0`` base draws (default N(0, I)); ``t: (batch,)`` times
    (default uniform on [0, 1)). ``x_t = (1 - t) x0 + t x1`` is the straight path from base to
    data; its velocity ``x1 - x0`` is the regression target. The loss is summed over
    dimensions and averaged over the batch.
    """
    _check_points(x1, "x1")
    if x0 is None:
        x0 = torch.randn_like(x1)
    elif not isinstance(x0, Tensor) or x0.shape != x1.shape:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must have the shape of x1, {tuple(x1.shape)}, got {got}")
    if t is None:
        t = torch.rand(len(x1), dtype=x1.dtype)
    elif not isinstance(t, Tensor) or t.shape != (len(x1),):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must be a tensor of shape ({len(x1)},), got {got}")
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return ((field(xt, t) - (x1 - x0)) ** 2).sum(1).mean()


def cnf_nll_loss(steps: int, probe: bool = False) -> Callable[[ContinuousFlow, Tensor], Tensor]:
    """A ``loss(model, batch)`` for ``flowcourse.train.fit``: the NLL by backpropagating
    through ``steps`` RK4 steps (maximum likelihood, the way CNFs were trained before flow
    matching). ``probe=True`` uses one Gaussian Hutchinson probe per point, drawn once per
    batch and held fixed along the path, instead of the exact divergence."""
    steps = _check_steps(steps)

    def loss(model: ContinuousFlow, batch: Tensor) -> Tensor:
        eps = torch.randn_like(batch) if probe else None
        return -model.log_prob(batch, steps=steps, probe=eps).mean()

    return loss
