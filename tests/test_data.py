"""Tests for flowcourse.data: exact densities, entropies, digits and the MNIST loader."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from sklearn.datasets import make_moons

from flowcourse import data
from flowcourse.data import Checkerboard, EightGaussians, Rings, TwoMoons

SOURCES = [TwoMoons(0.1), EightGaussians(), Rings(), Checkerboard()]


def _mc_check(source, n: int = 20000, seed: int = 123) -> None:
    """-mean log p(samples) must agree with entropy() within 4 standard errors."""
    log_p = source.log_prob(source.sample(n, seed=seed))
    assert torch.isfinite(log_p).all()
    estimate = -log_p.mean().item()
    stderr = log_p.std().item() / math.sqrt(n)
    assert abs(estimate - source.entropy()) < 4 * stderr + 1e-9, (estimate, source.entropy())


# --- two moons ------------------------------------------------------------------------------


def test_two_moons_samples_match_make_moons_exactly():
    x = TwoMoons(noise=0.1).sample(101, seed=3)
    expected, _ = make_moons(101, noise=0.1, random_state=3)
    assert x.dtype == torch.float32 and x.shape == (101, 2)
    assert torch.equal(x, torch.from_numpy(expected).float())


@pytest.mark.parametrize(("noise", "reference"), [(0.05, 0.2892), (0.1, 1.0076), (0.2, 1.6775)])
def test_two_moons_entropy_matches_reference_and_monte_carlo(noise, reference):
    moons = TwoMoons(noise)
    assert abs(moons.entropy() - reference) < 2e-3
    _mc_check(moons)


def _moons_log_prob_by_quad(point: np.ndarray, noise: float) -> float:
    """Independent check: adaptive quadrature of the same t-integral, done per arc."""
    arcs = [lambda t: (np.cos(t), np.sin(t)), lambda t: (1 - np.cos(t), 0.5 - np.sin(t))]
    logs = []
    for arc in arcs:

        def exponent(t, arc=arc):
            cx, cy = arc(t)
            return ((point[0] - cx) ** 2 + (point[1] - cy) ** 2) / (2 * noise**2)

        ts = np.linspace(0, np.pi, 4001)
        t_min = ts[np.argmin(exponent(ts))]
        shift = exponent(t_min)
        total = sum(
            quad(lambda t, s=shift: np.exp(s - exponent(t)), a, b, epsabs=0, epsrel=1e-12)[0]
            for a, b in [(0.0, t_min), (t_min, np.pi)]
            if b > a
        )
        logs.append(math.log(total) - shift)
    mix = np.logaddexp(*logs)
    return float(mix + math.log(0.5 / math.pi / (2 * math.pi * noise**2)))


@pytest.mark.parametrize("noise", [0.05, 0.2])
def test_two_moons_log_prob_matches_adaptive_quadrature(noise):
    points = np.array([[0.0, 1.0], [0.5, 0.25], [2.0, 0.5], [-1.2, -0.3], [1.0, 0.5], [3.0, -2]])
    got = TwoMoons(noise).log_prob(torch.from_numpy(points))
    expected = [_moons_log_prob_by_quad(p, noise) for p in points]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-9)


def test_two_moons_density_integrates_to_one():
    moons = TwoMoons(0.2)
    step = 0.05
    xs = torch.arange(-3.5, 4.5, step, dtype=torch.float64)
    ys = torch.arange(-3.0, 3.5, step, dtype=torch.float64)
    mass = moons.log_prob(torch.cartesian_prod(xs, ys)).exp().sum().item() * step**2
    assert abs(mass - 1) < 1e-8


def test_two_moons_rejects_bad_noise():
    for noise in (0, -0.1, "0.1", None):
        with pytest.raises(ValueError, match="noise"):
            TwoMoons(noise)


# --- the other toys -------------------------------------------------------------------------


def test_eight_gaussians_entropy():
    source = EightGaussians()
    assert abs(source.entropy() - 2.8319) < 5e-4
    # Overlap makes the mixture a little less spread than 8 disjoint Gaussians.
    disjoint = math.log(8) + math.log(2 * math.pi * math.e * source.std**2)
    assert disjoint - 0.01 < source.entropy() < disjoint
    _mc_check(source)


def test_rings_entropy():
    source = Rings()
    assert abs(source.entropy() - 2.6232) < 2e-3
    _mc_check(source)


def test_rings_log_prob_matches_angle_average():
    """The Bessel closed form against a direct average of the Gaussian over the angle."""
    source = Rings()
    points = torch.tensor([[3.0, 0.1], [0.0, 0.0], [1.0, -1.0], [0.3, 0.6]], dtype=torch.float64)
    angles = torch.linspace(0, 2 * math.pi, 2001, dtype=torch.float64)[:-1]
    circle = torch.stack([angles.cos(), angles.sin()], dim=1)
    s2 = source.noise**2
    per_ring = []
    for radius in source.radii:
        sq = ((points[:, None, :] - radius * circle) ** 2).sum(-1)
        per_ring.append((-sq / (2 * s2)).exp().mean(dim=1) / (2 * math.pi * s2))
    expected = torch.stack(per_ring).mean(dim=0).log()
    torch.testing.assert_close(source.log_prob(points), expected, rtol=1e-9, atol=1e-9)


def test_checkerboard_support_and_entropy():
    board = Checkerboard()
    assert board.entropy() == pytest.approx(math.log(32), abs=1e-12)
    x = board.sample(8000, seed=0)
    assert ((x >= -4) & (x < 4)).all()
    assert torch.isfinite(board.log_prob(x)).all()
    # Each of the 8 dark squares gets about 1/8 of the points.
    cells = torch.floor(x / 2).long() + 2
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    dark = [(i + j) % 2 == 0 for i in range(4) for j in range(4)]
    assert all(counts[k] == 0 for k in range(16) if not dark[k])
    assert all(abs(counts[k] - 1000) < 150 for k in range(16) if dark[k])
    light_and_outside = torch.tensor([[1.0, -1.0], [-3.0, 3.0], [5.0, 0.0], [0.0, -4.5]])
    assert torch.isneginf(board.log_prob(light_and_outside)).all()
    _mc_check(board)


# --- shared behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: type(s).__name__)
def test_sample_shapes_and_seeds(source):
    x = source.sample(50, seed=7)
    assert x.shape == (50, 2) and x.dtype == torch.float32
    assert torch.equal(x, source.sample(50, seed=7))
    a = source.sample(20, seed=torch.Generator().manual_seed(1))
    b = source.sample(20, seed=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert source.sample(3).shape == (3, 2)
    (x0, x1), (y0, y1) = source.bounds
    assert x0 < x1 and y0 < y1


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: type(s).__name__)
def test_log_prob_shapes_and_entropy_cached(source):
    x = source.sample(10, seed=0)
    out = source.log_prob(x)
    assert out.shape == (10,) and out.dtype == torch.float64
    torch.testing.assert_close(out, source.log_prob(x.double()))
    assert source.entropy() == source.entropy()


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: type(s).__name__)
def test_bad_input_raises(source):
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            source.sample(n)
    with pytest.raises(ValueError, match="seed"):
        source.sample(5, seed="abc")
    with pytest.raises(ValueError, match=r"shape \(batch, 2\), got \(4, 3\)"):
        source.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\), got \(2,\)"):
        source.log_prob(torch.zeros(2))
    with pytest.raises(ValueError, match="floating-point"):
        source.log_prob(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.Tensor"):
        source.log_prob([[0.0, 0.0]])


def test_standardise():
    x = EightGaussians().sample(500, seed=0) * torch.tensor([1.0, 3.0]) + 2
    y, mean, std = data.standardise(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(2), atol=1e-5, rtol=0)
    y2, _, _ = data.standardise(x[:10], mean, std)
    torch.testing.assert_close(y2, y[:10])
    with pytest.raises(ValueError, match="both mean and std"):
        data.standardise(x, mean=mean)
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        data.standardise(torch.zeros(5))


def test_toys_registry():
    assert set(data.TOYS) == {"moons", "8gaussians", "rings", "checkerboard"}


# --- digits ---------------------------------------------------------------------------------


def test_load_digits_split_and_values():
    integer = data.load_digits("integer")
    binary = data.load_digits("binary")
    for d in (integer, binary):
        assert [t.shape for t in (d.train, d.val, d.test)] == [(1257, 64), (270, 64), (270, 64)]
        assert d.train.dtype == torch.float32 and d.train_labels.dtype == torch.int64
        assert [len(t) for t in (d.train_labels, d.val_labels, d.test_labels)] == [1257, 270, 270]
    assert integer.levels == 17 and binary.levels == 2 and integer.side == 8
    values = torch.cat([integer.train, integer.val, integer.test]).unique()
    assert values.tolist() == [float(v) for v in range(17)]
    assert torch.equal(binary.train, (integer.train > 8).float())
    # The fixed split: same labels in the same order on every machine.
    assert integer.train_labels[:12].tolist() == [6, 6, 6, 2, 5, 6, 6, 2, 2, 1, 1, 9]
    assert integer.test_labels[:6].tolist() == [2, 5, 6, 6, 1, 9]
    all_labels = torch.cat([integer.train_labels, integer.val_labels, integer.test_labels])
    assert torch.bincount(all_labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert "1257" in repr(integer)


def test_load_digits_bad_kind():
    with pytest.raises(ValueError, match='"binary" or "integer"'):
        data.load_digits("float")


# --- MNIST, with small local fake files (no network in tests) ---------------------------------


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder, n_train: int = 12, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))


def test_mnist_missing_files_say_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download=True"):
        data.load_mnist(tmp_path)


def test_mnist_reads_local_files(tmp_path):
    _fake_mnist(tmp_path)
    d = data.load_mnist(tmp_path)
    assert d.train.shape == (10, 784) and d.val.shape == (2, 784) and d.test.shape == (4, 784)
    assert d.train.dtype == torch.float32 and d.levels == 256 and d.side == 28
    assert 0 <= d.train.min() and d.train.max() <= 255


def test_mnist_rejects_corrupt_file(tmp_path):
    _fake_mnist(tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not an idx file")
    with pytest.raises(ValueError, match="not a gzipped IDX"):
        data.load_mnist(tmp_path)


def test_mnist_download_checks_checksum(tmp_path):
    mirror, root = tmp_path / "mirror", tmp_path / "root"
    mirror.mkdir()
    _fake_mnist(mirror)  # the right names, the wrong bytes
    with pytest.raises(OSError, match="checksum mismatch") as info:
        data.load_mnist(root, download=True, url=mirror.as_uri() + "/")
    assert hashlib.md5((mirror / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest() in str(
        info.value
    )
    assert list(root.iterdir()) == []  # nothing corrupt is kept


def test_mnist_download_failure_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST_URL", (tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(ConnectionError, match="could not download") as info:
        data.load_mnist(tmp_path / "root", download=True)
    assert "by hand" in str(info.value)
    assert not any((tmp_path / "root").glob("*.part"))
