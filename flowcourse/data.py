"""Data for the course: toy 2-D densities that know their exact answers, and small images.

Every toy source has ``sample(n, seed)``, an exact ``log_prob(x)`` and its differential entropy
``entropy()`` in nats. The entropy is the floor of the expected NLL: for data from ``p`` and any
model ``q``, ``E_p[-log q(x)] = H(p) + KL(p || q) >= H(p)``, so a training curve can be read
against it.

Images: ``load_digits`` (scikit-learn's bundled 8x8 digits, no network) and ``load_mnist``
(28x28, only when asked, from local files or a download).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Bounds",
    "TwoMoons",
    "EightGaussians",
    "Rings",
    "Checkerboard",
    "TOYS",
    "standardise",
    "Digits",
    "load_digits",
    "DIGITS_SEED",
    "load_mnist",
    "MNIST_URL",
    "MNIST_MD5",
]

Bounds = tuple[tuple[float, float], tuple[float, float]]
Seed = int | torch.Generator | None

_LOG_2PI = math.log(2 * math.pi)


# --- input checks shared by the toy sources -------------------------------------------------


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def _torch_generator(seed: Seed) -> torch.Generator | None:
    """None -> torch's global generator (seeded by ``flowcourse.setup``)."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(
            f"seed must be None, an int or a torch.Generator, got {seed!r} ({type(seed).__name__})"
        )
    return torch.Generator().manual_seed(int(seed))


def _as_points(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check ``x: (batch, 2)`` and return it as float64 for exact arithmetic."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (batch, 2), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (batch, 2), got {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def _grid_entropy(log_prob, bounds: Bounds, step: float, chunk: int = 8192) -> float:
    """``-integral p log p`` by the trapezoid rule on a square grid of spacing ``step``.

    For a smooth density that is negligible at the edges of ``bounds`` the rule converges
    faster than any power of ``step`` (it is exact for band-limited functions), so a spacing
    of a fraction of the narrowest length scale already gives ~1e-8.
    """
    (x0, x1), (y0, y1) = bounds
    xs = torch.arange(x0, x1 + step / 2, step, dtype=torch.float64)
    ys = torch.arange(y0, y1 + step / 2, step, dtype=torch.float64)
    grid = torch.cartesian_prod(xs, ys)
    total = 0.0
    for part in grid.split(chunk):
        lp = log_prob(part)
        # p log p -> 0 where p = 0; exp(-inf) * -inf would give nan
        plogp = torch.where(lp > -math.inf, lp.exp() * lp, torch.zeros_like(lp))
        total += float(plogp.sum())
    return -total * step * step


class _Toy:
    """Shared bits: a cached entropy, a short repr and the common checks."""

    dim = 2
    bounds: Bounds

    def __init__(self) -> None:
        self._entropy: float | None = None

    def entropy(self) -> float:
        """Differential entropy in nats, computed once and cached (see the class docstring)."""
        if self._entropy is None:
            self._entropy = float(self._compute_entropy())
        return self._entropy

    def _compute_entropy(self) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --- two moons ------------------------------------------------------------------------------

# Gauss-Legendre nodes on [-1, 1]; 48 nodes integrate the windowed bump below to ~1e-13.
_GL_NODES, _GL_WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(48))
# Keep the part of an arc where the exponent is within this many nats of its maximum:
# the rest adds less than pi * exp(-50) relative to the peak.
_WINDOW_NATS = 50.0


def _log_arc_integral(
    x: torch.Tensor, centre: tuple[float, float], offset: float, sigma: float
) -> torch.Tensor:
    """``log int_0^pi exp(-|x - c(t)|^2 / (2 sigma^2)) dt`` for the unit half-circle
    ``c(t) = centre + (cos(t + offset), sin(t + offset))``.  x: (batch, 2) float64 -> (batch,).

    Writing x in polar coordinates ``(r, phi)`` about the centre, the exponent is
    ``-(r^2 + 1)/(2 sigma^2) + (r / sigma^2) cos(t - phi)``: a bump of width about
    ``sigma / sqrt(r)`` around the arc point nearest to x, far sharper than sigma when x is
    far away. A fixed rule over [0, pi] would need thousands of nodes, so each point gets its
    own window, the angles whose exponent is within ``_WINDOW_NATS`` of the best one, and
    Gauss-Legendre nodes inside it. The window may wrap past -pi, so it is cut into the part
    on [0, pi] and the part on [-2 pi, -pi] (the same arc one turn earlier).
    """
    dx = x[:, 0] - centre[0]
    dy = x[:, 1] - centre[1]
    r = torch.hypot(dx, dy)
    phi = torch.remainder(torch.atan2(dy, dx) - offset + math.pi, 2 * math.pi) - math.pi
    # Angle from phi to the nearest point of the arc t in [0, pi].
    nearest = torch.where(phi >= 0, 0.0, torch.minimum(-phi, math.pi + phi))
    # r = 0 gives -inf here: the integrand is flat and the window is the whole arc.
    cos_limit = torch.cos(nearest) - _WINDOW_NATS * sigma**2 / r
    half = torch.arccos(cos_limit.clamp(-1.0, 1.0))
    low, high = phi - half, phi + half

    terms = []
    for start in (0.0, -2 * math.pi):
        a = torch.clamp(low, start, start + math.pi)
        b = torch.clamp(high, start, start + math.pi)
        mid, width = (a + b) / 2, (b - a) / 2
        t = mid[:, None] + width[:, None] * _GL_NODES  # (batch, nodes)
        # An empty piece has width 0, so log weight -inf: logsumexp ignores it.
        log_w = torch.log(width[:, None] * _GL_WEIGHTS)
        sq = (dx[:, None] - torch.cos(t + offset)) ** 2 + (dy[:, None] - torch.sin(t + offset)) ** 2
        terms.append(log_w - sq / (2 * sigma**2))
    return torch.logsumexp(torch.cat(terms, dim=1), dim=1)


class TwoMoons(_Toy):
    """Two interleaved half-circles with Gaussian noise, as scikit-learn's ``make_moons``.

    Density: a point t uniform on [0, pi] picks the outer arc ``(cos t, sin t)`` or the inner
    arc ``(1 - cos t, 0.5 - sin t)`` with probability 1/2 each, plus ``N(0, noise^2 I)``:

        p(x) = 1/2 sum_arcs (1/pi) int_0^pi N(x; c(t), noise^2 I) dt.

    ``log_prob`` does the t-integral by Gauss-Legendre quadrature on a window around the
    nearest arc point (see ``_log_arc_integral``), accurate to ~1e-12 in log p.
    ``entropy()`` integrates ``-p log p`` on a grid of spacing noise/3 (trapezoid rule,
    converged to ~1e-8). ``sample`` returns exactly ``make_moons(n, noise=noise,
    random_state=seed)``, which puts the points at evenly spaced t (then shuffles them and
    adds the noise) instead of drawing t at random: averages over its samples still
    estimate expectations under p, with a little less variance than i.i.d. draws.
    """

    _CENTRES = ((0.0, 0.0), (1.0, 0.5))  # outer, inner arc
    _OFFSETS = (0.0, math.pi)  # inner arc: (1, 0.5) + (cos(t + pi), sin(t + pi))

    def __init__(self, noise: float = 0.05) -> None:
        super().__init__()
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise > 0:
            raise ValueError(f"noise must be a positive number, got {noise!r}")
        self.noise = float(noise)
        pad = 0.25 + 3 * self.noise
        self.bounds = ((-1.0 - pad, 2.0 + pad), (-0.5 - pad, 1.0 + pad))

    def __repr__(self) -> str:
        return f"TwoMoons(noise={self.noise})"

    def sample(self, n: int, seed: Seed = None) -> torch.Tensor:
        """(n, 2) float32. ``seed``: int (as make_moons' random_state), a torch.Generator
        (draws the random_state from it) or None (NumPy's global generator)."""
        from sklearn.datasets import make_moons

        n = _check_n(n)
        if isinstance(seed, torch.Generator):
            state = int(torch.randint(0, 2**31 - 1, (1,), generator=seed))
        else:
            _torch_generator(seed)  # same checks as the other sources
            state = None if seed is None else int(seed)
        x, _ = make_moons(n, noise=self.noise, random_state=state)
        return torch.from_numpy(x).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, 2) -> (batch,) float64, exact up to quadrature error ~1e-12."""
        x = _as_points(x)
        out = []
        # Chunks bound the (batch, 2 * 48) work arrays.
        for part in x.split(4096):
            logs = [
                _log_arc_integral(part, c, o, self.noise)
                for c, o in zip(self._CENTRES, self._OFFSETS, strict=True)
            ]
            out.append(torch.logsumexp(torch.stack(logs, dim=1), dim=1))
        # 1/2 per arc, density 1/pi for t, Gaussian normaliser 1/(2 pi noise^2)
        const = -math.log(2 * math.pi) - _LOG_2PI - 2 * math.log(self.noise)
        return torch.cat(out) + const

    def _compute_entropy(self) -> float:
        margin = 12 * self.noise  # exp(-72) beyond: nothing left to integrate
        bounds = ((-1.0 - margin, 2.0 + margin), (-0.5 - margin, 1.0 + margin))
        return _grid_entropy(self.log_prob, bounds, self.noise / 3)


# --- eight Gaussians ------------------------------------------------------------------------


class EightGaussians(_Toy):
    """Equal mixture of 8 isotropic Gaussians, centres at radius 4/1.414 and angles
    k pi/4, standard deviation 0.5/1.414 (the toy of Grathwohl et al. 2019, FFJORD, whose
    constants divide by 1.414 rather than sqrt(2); we keep theirs so numbers compare).

    ``entropy()``: trapezoid rule for ``-p log p`` on a grid of spacing std/4 (converged to
    ~1e-10): 2.8319 nats. It is a little below ``log 8 + log(2 pi e std^2)`` because
    neighbours overlap.
    """

    radius = 4 / 1.414
    std = 0.5 / 1.414
    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0))

    @property
    def centres(self) -> torch.Tensor:
        """(8, 2) float64."""
        angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
        return self.radius * torch.stack([angles.cos(), angles.sin()], dim=1)

    def sample(self, n: int, seed: Seed = None) -> torch.Tensor:
        """(n, 2) float32; ``seed``: int, torch.Generator or None (torch's global generator)."""
        n, gen = _check_n(n), _torch_generator(seed)
        k = torch.randint(0, 8, (n,), generator=gen)
        noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        return (self.centres[k] + self.std * noise).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, 2) -> (batch,) float64, exact."""
        x = _as_points(x)
        sq = ((x[:, None, :] - self.centres) ** 2).sum(-1)  # (batch, 8)
        log_normal = -sq / (2 * self.std**2) - _LOG_2PI - 2 * math.log(self.std)
        return torch.logsumexp(log_normal, dim=1) - math.log(8)

    def _compute_entropy(self) -> float:
        edge = self.radius + 12 * self.std
        return _grid_entropy(self.log_prob, ((-edge, edge), (-edge, edge)), self.std / 4)


# --- rings ----------------------------------------------------------------------------------


class Rings(_Toy):
    """Four concentric rings, radii 3, 2.25, 1.5, 0.75, each picked with probability 1/4,
    uniform angle, plus isotropic ``N(0, 0.08^2 I)`` noise (the FFJORD "rings" toy).

    Averaging the Gaussian over the angle gives a closed form with the Bessel function I0:

        p_ring(x) = exp(-(rho - R)^2 / (2 s^2)) * I0e(rho R / s^2) / (2 pi s^2),  rho = |x|,

    with ``I0e(z) = exp(-z) I0(z)`` (torch.special.i0e) to avoid overflow. ``entropy()``
    integrates ``-p log p`` over the radius, ``int 2 pi rho (-p log p) d rho``, with
    composite Gauss-Legendre (converged to ~1e-12): 2.6232 nats. FFJORD's generator puts
    equal numbers of points on the rings at evenly spaced angles; drawing ring and angle at
    random, as here, samples the same density.
    """

    radii = (3.0, 2.25, 1.5, 0.75)
    noise = 0.08
    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0))

    def sample(self, n: int, seed: Seed = None) -> torch.Tensor:
        """(n, 2) float32; ``seed``: int, torch.Generator or None (torch's global generator)."""
        n, gen = _check_n(n), _torch_generator(seed)
        which = torch.randint(0, len(self.radii), (n,), generator=gen)
        radius = torch.tensor(self.radii, dtype=torch.float64)[which]
        angle = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
        on_ring = radius[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
        noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        return (on_ring + self.noise * noise).float()

    def _log_prob_radius(self, rho: torch.Tensor) -> torch.Tensor:
        """rho: (batch,) float64 distances from the origin -> (batch,) log density at them."""
        s2 = self.noise**2
        radii = torch.tensor(self.radii, dtype=torch.float64)
        per_ring = (
            -((rho[:, None] - radii) ** 2) / (2 * s2)
            + torch.log(torch.special.i0e(rho[:, None] * radii / s2))
            - math.log(2 * math.pi * s2)
        )
        return torch.logsumexp(per_ring, dim=1) - math.log(len(self.radii))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, 2) -> (batch,) float64, exact."""
        x = _as_points(x)
        return self._log_prob_radius(torch.hypot(x[:, 0], x[:, 1]))

    def _compute_entropy(self) -> float:
        top = max(self.radii) + 12 * self.noise
        # 400 panels of 16 Gauss-Legendre nodes: each panel is a fraction of the noise wide.
        edges = torch.linspace(0.0, top, 401, dtype=torch.float64)
        mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
        nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(16))
        rho = (mid[:, None] + half[:, None] * nodes).flatten()
        w = (half[:, None] * weights).flatten()
        lp = self._log_prob_radius(rho)
        return float(-(w * 2 * math.pi * rho * lp.exp() * lp).sum())


# --- checkerboard ---------------------------------------------------------------------------


class Checkerboard(_Toy):
    """Uniform on the 8 dark squares of a 4x4 checkerboard of side-2 squares on [-4, 4]^2:
    square (i, j), with i = floor(x1 / 2) and j = floor(x2 / 2), is dark when i + j is even.

    The density is 1/32 on its support (area 32), so ``entropy() = log 32`` exactly.
    ``log_prob`` is ``-inf`` outside the support (light squares and outside [-4, 4)^2); a
    flow never reaches -inf, so its NLL on these samples is finite but can only approach
    log 32 from above. Squares are half-open, [a, a + 2), which only matters on edges.
    """

    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0))

    def sample(self, n: int, seed: Seed = None) -> torch.Tensor:
        """(n, 2) float32; ``seed``: int, torch.Generator or None (torch's global generator)."""
        n, gen = _check_n(n), _torch_generator(seed)
        i = torch.randint(-2, 2, (n,), generator=gen)
        # For each column i two rows are dark; pick one, then keep the parity i + j even.
        j = 2 * torch.randint(-1, 1, (n,), generator=gen) + torch.remainder(i, 2)
        corner = 2 * torch.stack([i, j], dim=1).double()
        return (corner + 2 * torch.rand(n, 2, generator=gen, dtype=torch.float64)).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, 2) -> (batch,) float64: -log 32 on the dark squares, -inf elsewhere."""
        x = _as_points(x)
        cell = torch.floor(x / 2)
        inside = ((x >= -4) & (x < 4)).all(dim=1)
        dark = torch.remainder(cell.sum(dim=1), 2) == 0
        out = torch.full((len(x),), -math.inf, dtype=torch.float64)
        return out.masked_fill(inside & dark, -math.log(32))

    def _compute_entropy(self) -> float:
        return math.log(32)


TOYS: dict[str, type[_Toy]] = {
    "moons": TwoMoons,
    "8gaussians": EightGaussians,
    "rings": Rings,
    "checkerboard": Checkerboard,
}


def standardise(
    x: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift and scale each column to mean 0, std 1.  x: (batch, dim) -> (y, mean, std).

    Pass the training set's ``mean`` and ``std`` when standardising validation or test data.
    Densities change with coordinates: ``log p_x(x) = log p_y(y) - sum_i log std_i``, so an
    NLL measured on standardised data is converted back to raw units by adding
    ``sum(log std_i)``, and only then compares with ``entropy()``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor of shape (batch, dim), got {got}")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")
    if mean is None:
        if len(x) < 2:
            raise ValueError(f"need at least 2 rows to estimate a std, got {len(x)}")
        mean, std = x.mean(dim=0), x.std(dim=0)
    return (x - mean) / std, mean, std


# --- digits ---------------------------------------------------------------------------------

DIGITS_SEED = 0  # numpy.random.default_rng(DIGITS_SEED).permutation(1797) fixes the split
_SPLIT = (1257, 270, 270)


@dataclass(repr=False)
class Digits:
    """Images as float32 rows ``(n, side * side)`` and int64 labels, split three ways.

    ``levels``: number of distinct pixel values, 0..levels-1 (2 binary, 17 for 8x8 digits,
    256 for MNIST): a discrete model of pixels has ``levels`` outcomes per pixel.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    kind: str
    levels: int
    side: int

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(getattr(self, k).shape)}" for k in ("train", "val", "test"))
        return f"Digits(kind={self.kind!r}, {shapes}, levels={self.levels}, side={self.side})"


def load_digits(kind: str = "binary") -> Digits:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, pixels 0..16), no network.

    ``kind="binary"``: a pixel is 1 if its value is > 8, else 0. ``kind="integer"``: the raw
    values 0..16 (17 levels). The split is fixed, 1257 train / 270 val / 270 test, by
    ``numpy.random.default_rng(DIGITS_SEED).permutation(1797)`` with ``DIGITS_SEED = 0``.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if kind not in ("binary", "integer"):
        raise ValueError(f'kind must be "binary" or "integer", got {kind!r}')
    bunch = sklearn_digits()
    images, labels = bunch.data, bunch.target  # (1797, 64) float64 in 0..16, (1797,)
    if kind == "binary":
        images = (images > 8).astype(np.float64)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(images))
    a, b = _SPLIT[0], _SPLIT[0] + _SPLIT[1]
    parts = np.split(order, [a, b])
    x = [torch.from_numpy(images[p]).float() for p in parts]
    y = [torch.from_numpy(labels[p]).long() for p in parts]
    return Digits(*x, *y, kind=kind, levels=2 if kind == "binary" else 17, side=8)


# --- MNIST ----------------------------------------------------------------------------------

# Read at call time, so ``flowcourse.data.MNIST_URL = ...`` (or ``url=``) picks a mirror.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# MD5 of the standard gzipped IDX files (LeCun, Cortes & Burges), as torchvision checks them.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` via a temporary file, keeping it only if the MD5 matches."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise ConnectionError(
            f"could not download {url} ({err}). Without network access, copy the four MNIST "
            f"files ({', '.join(MNIST_MD5)}) into {dest.parent} by hand, or set "
            f"flowcourse.data.MNIST_URL (or url=) to a mirror you can reach."
        ) from err
    got = _md5(part)
    if got != md5:
        part.unlink()
        raise OSError(
            f"checksum mismatch for {url}: expected MD5 {md5}, got {got}. The download is "
            f"corrupt or the mirror serves another file; nothing was kept in {dest.parent}."
        )
    part.replace(dest)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format): magic 0 0 8 ndim, sizes, data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(
            f"{path} is not a gzipped IDX file of unsigned bytes with {ndim} dimension(s); "
            "delete it and download again"
        )
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes of data")
    return data.reshape(shape)


def load_mnist(
    root: str | os.PathLike, download: bool = False, *, url: str | None = None
) -> Digits:
    """MNIST from the four standard gzipped IDX files in ``root``.

    Returns ``Digits`` with rows of 784 float32 pixels in 0..255 (``levels=256``): train is
    the first 50,000 training images, val the last 10,000, test the official 10,000.
    Missing files raise FileNotFoundError unless ``download=True``, which fetches them from
    ``url`` (default ``MNIST_URL``) and checks their MD5 against ``MNIST_MD5``.
    """
    root = Path(root)
    missing = [name for name in MNIST_MD5 if not (root / name).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"MNIST files missing in {root}: {', '.join(missing)}. Call "
            f"load_mnist({str(root)!r}, download=True) on a machine with network access, or "
            f"copy the files from {MNIST_URL} into that folder."
        )
    base = url if url is not None else MNIST_URL
    if missing:
        root.mkdir(parents=True, exist_ok=True)
        for name in missing:
            _download(base.rstrip("/") + "/" + name, root / name, MNIST_MD5[name])

    train_x = _read_idx(root / "train-images-idx3-ubyte.gz", 3)
    train_y = _read_idx(root / "train-labels-idx1-ubyte.gz", 1)
    test_x = _read_idx(root / "t10k-images-idx3-ubyte.gz", 3)
    test_y = _read_idx(root / "t10k-labels-idx1-ubyte.gz", 1)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"MNIST files in {root} disagree on the number of images and labels")
    side = train_x.shape[1]
    n_train = len(train_x) - len(train_x) // 6  # 50,000 of 60,000

    def rows(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(len(a), -1).astype(np.float32))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Digits(
        rows(train_x[:n_train]),
        rows(train_x[n_train:]),
        rows(test_x),
        labels(train_y[:n_train]),
        labels(train_y[n_train:]),
        labels(test_y),
        kind="integer",
        levels=256,
        side=side,
    )
