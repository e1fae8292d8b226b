"""Variational autoencoders for binary images, with Gaussian or flow posteriors.

A VAE is three parts: an ``Encoder`` (image -> features ``h``), a posterior family
``q(z | x)`` whose parameters are computed from ``h``, and a ``Decoder`` (latent ``z`` ->
Bernoulli logits of every pixel). ``VAE(encoder, posterior, decoder)`` puts them together and
gives the evidence lower bound (``elbo``), the importance-weighted bound (``iwae``) and the
unnormalised log posterior (``log_joint``).

Posteriors (all amortised: their parameters are a function of ``x`` through ``h``):

- ``DiagonalPosterior``: ``q(z|x) = N(mu(x), diag(exp(log_var(x))))``; its KL to ``N(0, I)``
  has a closed form.
- ``PlanarPosterior(K)``: the diagonal Gaussian pushed through K planar maps whose
  ``u, w, b`` are computed from ``h`` for every image (Rezende & Mohamed 2015).
- ``IAFPosterior(K)``: the diagonal Gaussian pushed through K inverse autoregressive layers,
  MADE networks that also see ``h`` (Kingma et al. 2016), with the gated update
  ``z <- sigma * z + (1 - sigma) * m``.

A posterior's ``sample(h, n_samples)`` returns a :class:`PosteriorSample` with the base sample
``z0``, the final sample ``z`` (= zK), ``log q0(z0)`` and the summed log-dets of the K maps,
so ``log q(zK | x) = log q0(z0) - sum_k log|det J_k|``. ``transform(z0, h)`` applies the K
maps alone, and ``log_prob(z, h)`` evaluates ``log q(z | x)`` at given points (it inverts the
maps; plots need it, the ELBO does not).

Shapes: images ``x: (batch, data_dim)`` with 0/1 pixels; features ``h: (batch, hidden)``;
samples ``z: (n_samples, batch, latent)``; per-image bounds ``(batch,)``. Everything is in nats.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcourse.autoregressive import AffineAutoregressive
from flowcourse.bijections import planar, planar_inverse

__all__ = [
    "mlp",
    "Encoder",
    "Decoder",
    "PosteriorSample",
    "DiagonalPosterior",
    "PlanarPosterior",
    "IAFPosterior",
    "VAE",
    "gaussian_kl",
    "log_standard_normal",
    "negative_elbo",
    "elbo_loss",
    "latent_grid",
    "grid_log_marginal",
    "grid_posterior",
]

_LOG_2PI = math.log(2 * math.pi)


def _check_int(value: object, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_batch(x: object, width: int, name: str, what: str) -> Tensor:
    """``x`` must be a floating (batch, width) tensor; ``what`` describes the width."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor of shape (batch, {width}), got {type(x)}")
    if x.ndim != 2 or x.shape[1] != width or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, {width}) ({what}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def log_standard_normal(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the last dimension: ``(..., d) -> (...)``."""
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """Closed-form ``KL(N(mean, diag(exp(log_var))) || N(0, I))``: ``(..., d) -> (...)``.

    ``0.5 * sum(exp(log_var) + mean^2 - 1 - log_var)`` (Kingma & Welling 2014, appendix B).
    """
    return 0.5 * (log_var.exp() + mean**2 - 1 - log_var).sum(-1)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """``Linear -> activation -> ... -> Linear`` through ``sizes``; no activation at the end."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Image features: ``x: (batch, data_dim) -> h: (batch, hidden)``, an MLP with ``depth``
    hidden layers, each followed by the activation (so ``h`` is already non-linear)."""

    def __init__(
        self,
        data_dim: int = 64,
        hidden: int = 128,
        depth: int = 2,
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.data_dim = _check_int(data_dim, "Encoder(data_dim=...)")
        self.hidden = _check_int(hidden, "Encoder(hidden=...)")
        depth = _check_int(depth, "Encoder(depth=...)")
        self.net = nn.Sequential(mlp([data_dim] + [hidden] * depth, activation), activation())

    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x, self.data_dim, "x", "one row of pixels per image")
        return self.net(x)


class Decoder(nn.Module):
    """Bernoulli decoder: ``z: (..., latent) -> logits: (..., data_dim)``.

    ``log_prob(x, z)`` is ``log p(x | z) = sum_pixels [x * logit - softplus(logit)]``, the
    Bernoulli log-likelihood written with logits (stable for any logit), shape ``(...)``.
    """

    def __init__(
        self,
        latent_dim: int = 2,
        data_dim: int = 64,
        hidden: int = 128,
        depth: int = 2,
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.latent_dim = _check_int(latent_dim, "Decoder(latent_dim=...)")
        self.data_dim = _check_int(data_dim, "Decoder(data_dim=...)")
        depth = _check_int(depth, "Decoder(depth=...)")
        self.net = mlp([latent_dim] + [hidden] * depth + [data_dim], activation)

    def forward(self, z: Tensor) -> Tensor:
        if not isinstance(z, Tensor) or z.ndim < 1 or z.shape[-1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (..., {self.latent_dim}), got {got}")
        return self.net(z)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``x: (batch, data_dim)``, ``z: (..., batch, latent)`` -> ``(..., batch)``."""
        logits = self(z)
        return (x * logits - F.softplus(logits)).sum(-1)


class PosteriorSample(NamedTuple):
    """One draw from a (flow) posterior; leading shape ``(n_samples, batch)``.

    ``z0``: base sample; ``z``: final sample zK (``z0`` when there are no flow layers);
    ``log_q0``: ``log q0(z0 | x)``; ``log_det``: ``sum_k log|det J_k|`` of the K maps.
    ``log_q`` = ``log q(zK | x)`` = ``log_q0 - log_det``.
    """

    z0: Tensor
    z: Tensor
    log_q0: Tensor
    log_det: Tensor

    @property
    def log_q(self) -> Tensor:
        return self.log_q0 - self.log_det


class DiagonalPosterior(nn.Module):
    """``q(z|x) = N(mean(h), diag(exp(log_var(h))))``, one linear head on the features ``h``.

    The head predicts the log-variance, not the variance or the standard deviation: any real
    output is a valid (positive) variance, and ``sigma = exp(log_var / 2)``.
    """

    n_layers = 0

    def __init__(self, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.hidden = _check_int(hidden, "hidden")
        self.latent_dim = _check_int(latent_dim, "latent_dim")
        self.head = nn.Linear(self.hidden, 2 * self.latent_dim)

    def gaussian(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h: (batch, hidden) -> (mean, log_var)``, each ``(batch, latent)``."""
        _check_batch(h, self.hidden, "h", "encoder features")
        mean, log_var = self.head(h).chunk(2, dim=-1)
        return mean, log_var

    def _base_sample(self, mean: Tensor, log_var: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
        """Reparameterised ``z0 = mean + exp(log_var/2) * eps`` and ``log q0(z0)``."""
        n_samples = _check_int(n_samples, "n_samples")
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        z0 = mean + (0.5 * log_var).exp() * eps
        log_q0 = -0.5 * (eps**2 + log_var + _LOG_2PI).sum(-1)
        return z0, log_q0

    def transform(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """The K maps applied to base samples: ``z0: (..., batch, latent)`` and the features
        ``h: (batch, hidden)`` -> ``(zK, sum_k log|det J_k|: (..., batch))``. Identity here."""
        return z0, z0.new_zeros(z0.shape[:-1])

    def sample(self, h: Tensor, n_samples: int = 1) -> PosteriorSample:
        """``n_samples`` reparameterised draws per image: ``z: (n_samples, batch, latent)``."""
        z0, log_q0 = self._base_sample(*self.gaussian(h), n_samples)
        z, log_det = self.transform(z0, h)
        return PosteriorSample(z0, z, log_q0, log_det)

    def kl(self, h: Tensor) -> Tensor:
        """Closed-form ``KL(q(z|x) || N(0, I))``, ``(batch,)``."""
        return gaussian_kl(*self.gaussian(h))

    def log_prob(self, z: Tensor, h: Tensor) -> Tensor:
        """``log q(z|x)`` at given points: ``z: (batch, latent)``, ``h: (batch, hidden)``."""
        mean, log_var = self.gaussian(h)
        _check_batch(z, self.latent_dim, "z", "latent points")
        return -0.5 * ((z - mean) ** 2 * (-log_var).exp() + log_var + _LOG_2PI).sum(-1)


class PlanarPosterior(DiagonalPosterior):
    """The diagonal Gaussian pushed through ``K`` amortised planar maps.

    A second head computes, from ``h``, each image's own ``u_k, w_k: (latent,)`` and
    ``b_k: ()`` for ``k = 1..K``; ``flowcourse.bijections.planar`` applies the invertibility
    correction ``u_hat`` and returns each map's log-det (matrix determinant lemma).
    """

    def __init__(self, hidden: int, latent_dim: int, n_layers: int) -> None:
        super().__init__(hidden, latent_dim)
        self.n_layers = _check_int(n_layers, "n_layers", low=0)
        width = self.n_layers * (2 * self.latent_dim + 1)
        self.flow_head = nn.Linear(self.hidden, width) if self.n_layers else None

    def flow_parameters(self, h: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``[(u_k, w_k, b_k)]``, shapes ``(batch, latent), (batch, latent), (batch,)``."""
        if self.flow_head is None:
            return []
        d = self.latent_dim
        raw = self.flow_head(h).view(h.shape[0], self.n_layers, 2 * d + 1)
        return [(r[:, :d], r[:, d : 2 * d], r[:, 2 * d]) for r in raw.unbind(1)]

    def transform(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        z, log_det = z0, z0.new_zeros(z0.shape[:-1])
        for u, w, b in self.flow_parameters(h):
            # (..., batch, latent) against per-image (batch, latent): broadcasting.
            z, step = planar(z, u, w, b)
            log_det = log_det + step
        return z, log_det

    def log_prob(self, z: Tensor, h: Tensor) -> Tensor:
        """``log q(zK|x)`` at given points, inverting the planar maps numerically (bisection)."""
        _check_batch(z, self.latent_dim, "z", "latent points")
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for u, w, b in reversed(self.flow_parameters(h)):
            z, step = planar_inverse(z, u, w, b)
            log_det = log_det + step  # log-det of the inverse map
        return super().log_prob(z, h) + log_det


class IAFPosterior(DiagonalPosterior):
    """The diagonal Gaussian pushed through ``K`` IAF layers that read the features ``h``.

    Successive layers use reversed orders, so every entry eventually depends on every other.
    Sampling is one parallel pass per layer: each layer's shift and gate are computed from
    the sample it receives, which is already known.
    """

    def __init__(self, hidden: int, latent_dim: int, n_layers: int, made_hidden: int = 32) -> None:
        super().__init__(hidden, latent_dim)
        self.n_layers = _check_int(n_layers, "n_layers", low=0)
        forward_order = torch.arange(self.latent_dim)
        # The IAF paper's step (Kingma et al. 2016): a MADE reading z and the features h gives a
        # shift m and a gate sigma = sigmoid(s + forget_bias); z_new = sigma z + (1 - sigma) m.
        self.layers = nn.ModuleList(
            AffineAutoregressive(
                self.latent_dim,
                made_hidden,
                depth=1,
                context_dim=self.hidden,
                order=forward_order if k % 2 == 0 else forward_order.flip(0),
                fast="sampling",
                scale="gate",
                forget_bias=1.5,
                activation=nn.Tanh,
                zero_init=False,
            )
            for k in range(self.n_layers)
        )

    def transform(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        z, log_det = z0, z0.new_zeros(z0.shape[:-1])
        for layer in self.layers:
            z, step = layer(z, context=h)
            log_det = log_det + step
        return z, log_det

    def log_prob(self, z: Tensor, h: Tensor) -> Tensor:
        """``log q(zK|x)`` at given points, running the layers backwards (``inverse``)."""
        _check_batch(z, self.latent_dim, "z", "latent points")
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for layer in reversed(self.layers):
            z, step = layer.inverse(z, context=h)
            log_det = log_det + step
        return super().log_prob(z, h) + log_det


class VAE(nn.Module):
    """``VAE(encoder, posterior, decoder)`` with a standard normal prior ``p(z) = N(0, I)``.

    - ``log_joint(x, z) = log p(x|z) + log p(z)``: ``x: (batch, D)``, ``z: (..., batch, d)``.
    - ``elbo(x, n_samples)``: ``(batch,)``, mean over ``n_samples`` draws of
      ``log p(x|zK) + log p(zK) - log q0(z0) + sum_k log|det J_k|``; with a diagonal
      posterior and ``analytic_kl=True`` the KL part is the closed form.
    - ``iwae(x, k)``: ``(batch,)``, ``log (1/k) sum_i p(x, z_i) / q(z_i|x)``, z_i ~ q.
    - ``log_q(z, x)``: the approximate posterior's log-density at given points (for plots).
    """

    def __init__(self, encoder: Encoder, posterior: DiagonalPosterior, decoder: Decoder) -> None:
        super().__init__()
        if posterior.hidden != encoder.hidden:
            raise ValueError(
                f"posterior expects {posterior.hidden} encoder features, "
                f"the encoder gives {encoder.hidden}"
            )
        if posterior.latent_dim != decoder.latent_dim:
            raise ValueError(
                f"posterior has latent_dim {posterior.latent_dim}, "
                f"the decoder expects {decoder.latent_dim}"
            )
        if encoder.data_dim != decoder.data_dim:
            raise ValueError(
                f"encoder reads {encoder.data_dim} pixels, the decoder writes {decoder.data_dim}"
            )
        self.encoder, self.posterior, self.decoder = encoder, posterior, decoder

    @property
    def latent_dim(self) -> int:
        return self.posterior.latent_dim

    @property
    def data_dim(self) -> int:
        return self.encoder.data_dim

    def _check_x(self, x: Tensor) -> Tensor:
        return _check_batch(x, self.data_dim, "x", "one row of pixels per image")

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z) + log p(z)``, the unnormalised log posterior of ``z``: ``(..., batch)``."""
        self._check_x(x)
        if not isinstance(z, Tensor) or z.ndim < 2 or z.shape[-1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (..., batch, {self.latent_dim}), got {got}")
        if z.shape[-2] != x.shape[0]:
            raise ValueError(f"z has {z.shape[-2]} rows per sample but x has {x.shape[0]}")
        return self.decoder.log_prob(x, z) + log_standard_normal(z)

    def elbo(self, x: Tensor, n_samples: int = 1, analytic_kl: bool = True) -> Tensor:
        """Evidence lower bound per image, ``(batch,)``, averaged over ``n_samples`` draws."""
        self._check_x(x)
        h = self.encoder(x)
        s = self.posterior.sample(h, n_samples)
        reconstruction = self.decoder.log_prob(x, s.z)  # (n_samples, batch)
        if analytic_kl and self.posterior.n_layers == 0:
            # No flow layers: E_q[log q - log p] is the closed-form Gaussian KL.
            return reconstruction.mean(0) - self.posterior.kl(h)
        return (reconstruction + log_standard_normal(s.z) - s.log_q).mean(0)

    def log_weights(self, x: Tensor, n_samples: int) -> Tensor:
        """``log p(x, z_i) - log q(z_i | x)`` for ``n_samples`` draws: ``(n_samples, batch)``."""
        self._check_x(x)
        s = self.posterior.sample(self.encoder(x), n_samples)
        return self.log_joint(x, s.z) - s.log_q

    @torch.no_grad()
    def iwae(self, x: Tensor, k: int, chunk: int = 100) -> Tensor:
        """Importance-weighted bound ``log (1/k) sum_{i<=k} w_i`` per image, ``(batch,)``.

        Draws ``chunk`` samples at a time (memory ~ chunk * batch), without gradients.
        ``k = 1`` is the one-sample ELBO; it increases towards ``log p(x)`` with ``k``
        (Burda et al. 2016).
        """
        k = _check_int(k, "k")
        chunk = _check_int(chunk, "chunk")
        parts = [self.log_weights(x, min(chunk, k - i)) for i in range(0, k, chunk)]
        return torch.logsumexp(torch.cat(parts), dim=0) - math.log(k)

    def log_q(self, z: Tensor, x: Tensor) -> Tensor:
        """``log q(z | x)`` at given points ``z: (batch, latent)`` for ``x: (batch, D)``."""
        self._check_x(x)
        return self.posterior.log_prob(z, self.encoder(x))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Pixel probabilities ``sigmoid(decoder(z))`` of ``n`` images, ``z ~ N(0, I)``."""
        n = _check_int(n, "n")
        z = torch.randn(n, self.latent_dim, generator=generator)
        return torch.sigmoid(self.decoder(z))


def negative_elbo(model: VAE, x: Tensor, n_samples: int = 1) -> Tensor:
    """``-mean ELBO`` of a batch: the loss ``flowcourse.train.fit`` minimises."""
    return -model.elbo(x, n_samples).mean()


def elbo_loss(n_samples: int = 1):
    """``loss(model, batch)`` for ``fit`` (and ``val_loss``) with ``n_samples`` draws per image."""
    n_samples = _check_int(n_samples, "n_samples")

    def loss(model: VAE, x: Tensor) -> Tensor:
        return negative_elbo(model, x, n_samples)

    return loss


# --- exact answers in a 2-D latent space ------------------------------------------------------

Bounds = tuple[tuple[float, float], tuple[float, float]]


def latent_grid(
    bounds: Bounds = ((-5.0, 5.0), (-5.0, 5.0)), resolution: int = 400
) -> tuple[Tensor, float]:
    """Cell centres of a ``resolution x resolution`` grid over ``bounds`` and the cell area.

    Returns ``z: (resolution**2, 2)`` (row-major: the second coordinate varies slowest, as
    ``imshow`` expects after ``reshape(resolution, resolution)``) and the area of one cell.
    """
    resolution = _check_int(resolution, "resolution", low=2)
    (x0, x1), (y0, y1) = bounds
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"bounds must be ((x_min, x_max), (y_min, y_max)), got {bounds!r}")
    dx, dy = (x1 - x0) / resolution, (y1 - y0) / resolution
    xs = x0 + dx * (torch.arange(resolution) + 0.5)
    ys = y0 + dy * (torch.arange(resolution) + 0.5)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1), dx * dy


def _grid_log_joint_chunks(model: VAE, x: Tensor, z: Tensor, chunk: int):
    """Yield ``log p(x, z)`` for consecutive chunks of grid points: ``(batch, chunk)``."""
    for part in z.split(chunk):
        logits = model.decoder(part)  # (chunk, D)
        # sum_j x_j l_j - softplus(l_j) for every (image, grid point) pair at once
        log_lik = x @ logits.T - F.softplus(logits).sum(-1)
        yield log_lik + log_standard_normal(part)


@torch.no_grad()
def grid_log_marginal(
    model: VAE,
    x: Tensor,
    bounds: Bounds = ((-5.0, 5.0), (-5.0, 5.0)),
    resolution: int = 400,
    chunk: int = 8192,
) -> Tensor:
    """``log p(x) = log int p(x|z) p(z) dz`` by the midpoint rule on a grid, ``(batch,)``.

    Only for a 2-D latent space. The midpoint rule converges very fast for smooth, peaked
    integrands that vanish at the edges: a spacing below the posterior's width suffices.
    Memory is ``batch x chunk``, whatever the resolution.
    """
    if model.latent_dim != 2:
        raise ValueError(f"a grid needs a 2-D latent space, this model has {model.latent_dim}")
    model._check_x(x)
    z, area = latent_grid(bounds, resolution)
    z = z.to(x.dtype)
    running = None
    for part in _grid_log_joint_chunks(model, x, z, _check_int(chunk, "chunk")):
        part_lse = torch.logsumexp(part, dim=1)
        running = part_lse if running is None else torch.logaddexp(running, part_lse)
    return running + math.log(area)


@torch.no_grad()
def grid_posterior(
    model: VAE,
    x: Tensor,
    bounds: Bounds = ((-5.0, 5.0), (-5.0, 5.0)),
    resolution: int = 200,
) -> tuple[Tensor, Tensor]:
    """The true posterior ``p(z|x) = p(x|z) p(z) / p(x)`` on a grid, for a few images.

    Returns ``density: (batch, resolution, resolution)`` (rows follow the second latent
    coordinate, ready for ``imshow(origin="lower")``) and ``log p(x): (batch,)``, the
    normaliser from the same grid. Memory is ``batch x resolution**2``.
    """
    if model.latent_dim != 2:
        raise ValueError(f"a grid needs a 2-D latent space, this model has {model.latent_dim}")
    model._check_x(x)
    z, area = latent_grid(bounds, resolution)
    log_joint = torch.cat(list(_grid_log_joint_chunks(model, x, z.to(x.dtype), 8192)), dim=1)
    log_px = torch.logsumexp(log_joint, dim=1) + math.log(area)
    density = (log_joint - log_px[:, None]).exp()
    return density.reshape(len(x), resolution, resolution), log_px
