"""Tests for flowcourse.plot: every picture draws, is titled and has labelled axes."""

from __future__ import annotations

import logging
import warnings

import matplotlib

matplotlib.use("Agg")  # this test process only: no windows, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from flowcourse import plot  # noqa: E402
from flowcourse.data import TwoMoons, load_digits  # noqa: E402
from flowcourse.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(ax) -> bool:
    return bool(ax.get_title()) and bool(ax.get_xlabel()) and bool(ax.get_ylabel())


class StandardNormal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and not self.training
        return (-0.5 * (x / self.scale) ** 2 - 0.5 * np.log(2 * np.pi)).sum(1)


def test_density_from_function_module_and_source():
    ax = plot.density(lambda x: -0.5 * (x**2).sum(1), resolution=30, title="a bump")
    assert _labelled(ax) and ax.get_title() == "a bump"
    model = StandardNormal()
    ax = plot.density(model, resolution=30)
    assert _labelled(ax) and model.training  # eval mode only while drawing
    plot.density(model.log_prob, resolution=30, colorbar=True)
    moons = TwoMoons()
    image = plot.density(moons, bounds=moons.bounds, resolution=40).get_images()[0]
    assert image.get_array().shape == (40, 40) and image.get_array().max() > 0.5


def test_density_on_a_log_scale_clips_at_the_floor():
    # Checkerboard-like: -inf outside the unit square, where a linear scale shows nothing.
    def log_prob(x):
        inside = (x.abs() < 1).all(1)
        return torch.where(inside, -0.5 * (x**2).sum(1), torch.full((len(x),), -float("inf")))

    ax = plot.density(log_prob, resolution=40, log_floor=-10.0, colorbar=True)
    values = ax.get_images()[0].get_array()
    assert values.min() == -10.0 and values.max() <= 0.0 and np.isfinite(values).all()
    assert ax.figure.axes[-1].get_ylabel() == "log density (nats)"
    linear = plot.density(log_prob, resolution=40).get_images()[0].get_array()
    assert linear.min() == 0.0 and linear.max() <= 1.0  # the default is unchanged: exp(log p)
    for bad in (float("nan"), float("inf"), True, "low"):
        with pytest.raises(ValueError, match="log_floor must be None or a finite number"):
            plot.density(log_prob, resolution=10, log_floor=bad)


def test_density_draws_on_a_given_axis():
    fig, axes = plt.subplots(1, 2)
    assert plot.density(StandardNormal(), resolution=20, ax=axes[1]) is axes[1]


def test_density_bad_input():
    with pytest.raises(ValueError, match="nan at"):
        plot.density(lambda x: torch.full((len(x),), float("nan")), resolution=10)
    with pytest.raises(ValueError, match="bounds must be"):
        plot.density(lambda x: x.sum(1), bounds=((1, 0), (0, 1)), resolution=10)
    with pytest.raises(ValueError, match="resolution must be an integer >= 2"):
        plot.density(lambda x: x.sum(1), resolution=1)
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        plot.density(lambda x: x, resolution=10)


def test_samples():
    x, data = torch.randn(200, 2), TwoMoons().sample(300, seed=0)
    ax = plot.samples(x, data, title="flow vs data", bounds=((-3, 3), (-3, 3)))
    assert _labelled(ax) and ax.get_legend() is not None
    assert _labelled(plot.samples(x.numpy()))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        plot.samples(torch.randn(10, 3))


def test_warps_and_grid_warp():
    z = torch.randn(300, 2)
    states = [z, z * 2, torch.tanh(z) + 1]
    for colour in (None, "C2", z[:, 1]):
        fig = plot.warps(states, data_color=colour)
        assert len(fig.axes) == 3 and all(_labelled(ax) for ax in fig.axes)
    fig = plot.warps(states, titles=["z", "h", "x"])
    assert [ax.get_title() for ax in fig.axes] == ["z", "h", "x"]
    with pytest.raises(ValueError, match="one entry per state"):
        plot.warps(states, titles=["z"])
    with pytest.raises(ValueError, match="same points"):
        plot.warps([z, z[:10]])
    with pytest.raises(ValueError, match="non-empty list"):
        plot.warps(z)

    grid = plot.grid_lines(lines=5, resolution=20)
    assert grid.shape == (2 * 5 * 20, 2) and grid.dtype == torch.float32
    fig = plot.grid_warp([grid, grid**3 / 9, torch.sin(grid)], resolution=20)
    assert len(fig.axes) == 3 and all(_labelled(ax) for ax in fig.axes)
    assert len(fig.axes[0].collections) == 2
    with pytest.raises(ValueError, match="same resolution as grid_lines"):
        plot.grid_warp([grid], resolution=30)


def test_warps_wraps_onto_rows():
    z = torch.randn(50, 2)
    states = [z * (k + 1) for k in range(7)]
    fig = plot.warps(states, size=2.0, columns=4)
    assert len(fig.axes) == 7 and all(_labelled(ax) for ax in fig.axes)
    width, height = fig.get_size_inches()
    assert (width, height) == (8.0, 2 * 2.4)  # two rows of four panels; the eighth is removed
    rows = sorted({round(ax.get_position().y0, 3) for ax in fig.axes})
    assert len(rows) == 2
    assert len(plot.warps(states[:2], columns=4).axes) == 2  # never more columns than panels
    with pytest.raises(ValueError, match="columns must be"):
        plot.warps(states, columns=0)


def test_warps_keeps_given_bounds_without_warnings(caplog):
    z = torch.randn(300, 2)
    fig = plot.warps([z, 3 * z], bounds=((-2.0, 2.0), (-1.0, 1.0)))
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        fig.canvas.draw()
    # matplotlib logs "Ignoring fixed x limits ..." (stderr in a notebook) when the aspect
    # adjusts data limits that were fixed by hand.
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    for ax in fig.axes:
        assert ax.get_xlim() == (-2.0, 2.0) and ax.get_ylim() == (-1.0, 1.0)


def test_training_curves():
    h = History(steps=200, train_loss=list(np.linspace(3, 1, 200) + 0.1 * np.sin(np.arange(200))))
    h.val_steps, h.val_loss = [100, 200], [1.8, 1.2]
    ax = plot.training_curves(h, floor=1.0077)
    assert _labelled(ax) and ax.get_ylabel() == "NLL (nats)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "exact entropy = 1.0077" in labels and "validation" in labels
    assert _labelled(plot.training_curves(History(steps=1, train_loss=[2.0]), smooth=5))
    with pytest.raises(ValueError, match="no training losses"):
        plot.training_curves(History())


def test_digit_grid():
    digits = load_digits("integer")
    ax = plot.digit_grid(digits.train[:20], nrow=5, title="some digits")
    assert _labelled(ax) and ax.get_title() == "some digits"
    assert ax.get_images()[0].get_array().shape == (4 * 9 + 1, 5 * 9 + 1)
    assert _labelled(plot.digit_grid(digits.train[:7].reshape(7, 8, 8).numpy()))
    with pytest.raises(ValueError, match="not square"):
        plot.digit_grid(torch.zeros(3, 10))
    with pytest.raises(ValueError, match="nrow must be"):
        plot.digit_grid(digits.train[:4], nrow=0)
