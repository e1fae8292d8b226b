"""Pictures for the course: densities, samples, layer-by-layer warps, training curves, digits.

Every function draws a titled plot with labelled axes. Those that draw one panel take an
optional ``ax`` and return it; the multi-panel ones return their ``Figure``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from torch import nn

__all__ = [
    "density",
    "samples",
    "warps",
    "grid_lines",
    "grid_warp",
    "training_curves",
    "digit_grid",
]

Bounds = tuple[tuple[float, float], tuple[float, float]]
ArrayLike = torch.Tensor | np.ndarray

_CHUNK = 4096  # points per log_prob call: bounds memory for big grids


def _points(x: ArrayLike, name: str) -> np.ndarray:
    """Check ``x: (n, 2)`` (tensor or array) and return it as a float64 NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(
            f"{name} must be a tensor or array of shape (n, 2), got {type(x).__name__}"
        )
    if x.ndim != 2 or x.shape[1] != 2 or len(x) == 0:
        raise ValueError(f"{name} must have shape (n, 2) with n >= 1, got {x.shape}")
    return x.astype(np.float64)


def _check_bounds(bounds: Bounds) -> Bounds:
    try:
        (x0, x1), (y0, y1) = bounds
        ok = x0 < x1 and y0 < y1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"bounds must be ((x_min, x_max), (y_min, y_max)), got {bounds!r}")
    return ((float(x0), float(x1)), (float(y0), float(y1)))


def _new_ax(ax: Axes | None, figsize: tuple[float, float] | None = None) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def density(
    log_prob_fn: Callable[[torch.Tensor], torch.Tensor] | Any,
    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0)),
    resolution: int = 200,
    ax: Axes | None = None,
    title: str = "density",
    cmap: str = "viridis",
    colorbar: bool = False,
    log_floor: float | None = None,
) -> Axes:
    """Heat map of ``exp(log_prob)`` on a ``resolution x resolution`` grid over ``bounds``.

    ``log_prob_fn`` maps (batch, 2) float32 points to (batch,) log-densities: a function, or
    any object with a ``log_prob`` method (a flow, a toy source). It is called in chunks
    under ``torch.no_grad()``, and an ``nn.Module`` is put in eval mode meanwhile.
    ``log_floor``: draw ``log_prob`` itself (nats), clipped below at this value, instead of
    the density; a log scale shows thin regions of low density (e.g. the bridges a flow
    leaves between separated modes) that a linear scale hides.
    """
    fn = getattr(log_prob_fn, "log_prob", log_prob_fn)
    if not callable(fn):
        raise ValueError(f"log_prob_fn must be callable or have .log_prob, got {log_prob_fn!r}")
    (x0, x1), (y0, y1) = _check_bounds(bounds)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    if log_floor is not None and (
        isinstance(log_floor, bool)
        or not isinstance(log_floor, int | float)
        or not math.isfinite(log_floor)
    ):
        raise ValueError(f"log_floor must be None or a finite number, got {log_floor!r}")

    xs = torch.linspace(x0, x1, resolution)
    ys = torch.linspace(y0, y1, resolution)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")  # rows follow y, as imshow expects
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)

    module = log_prob_fn if isinstance(log_prob_fn, nn.Module) else getattr(fn, "__self__", None)
    module = module if isinstance(module, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            parts = [torch.as_tensor(fn(chunk)).detach().double() for chunk in grid.split(_CHUNK)]
    finally:
        if module is not None:
            module.train(was_training)
    log_p = torch.cat(parts)
    if log_p.shape != (len(grid),):
        raise ValueError(f"log_prob must return shape (batch,), got {tuple(parts[0].shape)}")
    if torch.isnan(log_p).any():
        raise ValueError(f"log_prob returned nan at {int(torch.isnan(log_p).sum())} grid points")
    values = log_p.exp() if log_floor is None else log_p.clamp_min(float(log_floor))
    p = values.reshape(resolution, resolution).cpu().numpy()

    ax = _new_ax(ax)
    image = ax.imshow(p, origin="lower", extent=(x0, x1, y0, y1), cmap=cmap, aspect="equal")
    ax.grid(False)
    if colorbar:
        label = "density" if log_floor is None else "log density (nats)"
        ax.figure.colorbar(image, ax=ax, label=label)
    ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$")
    return ax


def samples(
    x: ArrayLike,
    data: ArrayLike | None = None,
    ax: Axes | None = None,
    title: str = "samples",
    bounds: Bounds | None = None,
    labels: tuple[str, str] = ("model", "data"),
    size: float = 4.0,
) -> Axes:
    """Scatter of model samples ``x: (n, 2)`` over the data ``(m, 2)`` drawn in grey."""
    points = _points(x, "x")
    ax = _new_ax(ax)
    if data is not None:
        ref = _points(data, "data")
        ax.scatter(ref[:, 0], ref[:, 1], s=size, color="0.6", alpha=0.4, label=labels[1], lw=0)
    colour = sns.color_palette()[0]
    ax.scatter(points[:, 0], points[:, 1], s=size, color=colour, alpha=0.6, label=labels[0], lw=0)
    if data is not None:
        ax.legend(loc="upper right", markerscale=3)
    if bounds is not None:
        (x0, x1), (y0, y1) = _check_bounds(bounds)
        ax.set(xlim=(x0, x1), ylim=(y0, y1))
    ax.set_aspect("equal")
    ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$")
    return ax


def _panel_titles(titles: Sequence[str] | None, count: int) -> list[str]:
    if titles is None:
        return ["input"] + [f"after layer {i}" for i in range(1, count)]
    if len(titles) != count:
        raise ValueError(f"titles must have one entry per state ({count}), got {len(titles)}")
    return list(titles)


def _check_states(states: Sequence[ArrayLike]) -> list[np.ndarray]:
    if isinstance(states, torch.Tensor | np.ndarray) or len(states) == 0:
        raise ValueError("states must be a non-empty list of (n, 2) tensors, e.g. flow.trace(z)")
    arrays = [_points(s, f"states[{i}]") for i, s in enumerate(states)]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(
            f"all states must hold the same points, got sizes {[len(a) for a in arrays]}"
        )
    return arrays


def warps(
    states: Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    data_color: str | ArrayLike | None = None,
    bounds: Bounds | None = None,
    size: float = 2.6,
    suptitle: str = "how the points move, layer by layer",
    columns: int | None = None,
) -> Figure:
    """One small scatter panel per state, e.g. ``flow.trace(z)``: a list of (n, 2) tensors.

    Each point keeps its colour across panels, so one can follow where it goes.
    ``data_color``: None colours points by their first coordinate in the first state;
    a colour name paints them all; an (n,) array gives each point a value on a colour map.
    ``size``: inches per panel. ``columns``: panels per row (default: all in one row); more
    states than columns wrap onto further rows, so many panels can stay large enough to read.
    """
    arrays = _check_states(states)
    names = _panel_titles(titles, len(arrays))
    if columns is None:
        columns = len(arrays)
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be None or an integer >= 1, got {columns!r}")
    columns = min(columns, len(arrays))
    rows = math.ceil(len(arrays) / columns)
    n = len(arrays[0])
    if data_color is None:
        colour_kw: dict[str, Any] = {"c": arrays[0][:, 0], "cmap": "coolwarm"}
    elif isinstance(data_color, str):
        colour_kw = {"color": data_color}
    else:
        values = np.asarray(torch.as_tensor(data_color).detach().cpu(), dtype=np.float64)
        if values.shape != (n,):
            raise ValueError(f"data_color must be a colour or shape ({n},), got {values.shape}")
        colour_kw = {"c": values, "cmap": "viridis"}

    fig, axes = plt.subplots(
        rows, columns, figsize=(size * columns, (size + 0.4) * rows), squeeze=False
    )
    for ax in axes.flat[len(arrays) :]:  # the unused end of the last row
        fig.delaxes(ax)
    for ax, points, name in zip(axes.flat, arrays, names, strict=False):
        ax.scatter(points[:, 0], points[:, 1], s=2, lw=0, alpha=0.7, **colour_kw)
        if bounds is not None:
            (x0, x1), (y0, y1) = _check_bounds(bounds)
            ax.set(xlim=(x0, x1), ylim=(y0, y1))
            # Fixed limits: the box adapts. Adapting the data limits instead would override
            # them and make matplotlib warn ("Ignoring fixed x limits ...") when drawing.
            ax.set_aspect("equal", adjustable="box")
        else:
            ax.set_aspect("equal", adjustable="datalim")
        ax.set(title=name, xlabel="dim 1", ylabel="dim 2")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def grid_lines(
    bounds: Bounds = ((-3.0, 3.0), (-3.0, 3.0)), lines: int = 9, resolution: int = 100
) -> torch.Tensor:
    """Points along a regular grid: ``lines`` horizontal then ``lines`` vertical lines, each
    of ``resolution`` points. Returns (2 * lines * resolution, 2) float32, to push through a
    flow and draw with ``grid_warp(states, resolution)``."""
    (x0, x1), (y0, y1) = _check_bounds(bounds)
    for name, v, low in (("lines", lines, 2), ("resolution", resolution, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    along_x = torch.linspace(x0, x1, resolution)
    along_y = torch.linspace(y0, y1, resolution)
    horizontal = [
        torch.stack([along_x, torch.full_like(along_x, float(y))], dim=1)
        for y in torch.linspace(y0, y1, lines)
    ]
    vertical = [
        torch.stack([torch.full_like(along_y, float(x)), along_y], dim=1)
        for x in torch.linspace(x0, x1, lines)
    ]
    return torch.cat(horizontal + vertical)


def grid_warp(
    states: Sequence[ArrayLike],
    resolution: int = 100,
    titles: Sequence[str] | None = None,
    size: float = 2.6,
    suptitle: str = "how the grid is bent, layer by layer",
) -> Figure:
    """Draw the images of the lines from ``grid_lines`` after each layer, as lines.

    ``states``: list of (m, 2) tensors, the grid points pushed through the flow layer by
    layer (e.g. ``flow.trace(grid_lines())``); consecutive runs of ``resolution`` points are
    one line. Horizontal lines are drawn in one colour, vertical ones in another.
    """
    arrays = _check_states(states)
    names = _panel_titles(titles, len(arrays))
    m = len(arrays[0])
    if m % (2 * resolution) != 0:
        raise ValueError(
            f"states hold {m} points, not a whole number of horizontal + vertical line pairs "
            f"of {resolution} points each; use the same resolution as grid_lines"
        )
    first, second = sns.color_palette()[:2]
    fig, axes = plt.subplots(
        1, len(arrays), figsize=(size * len(arrays), size + 0.4), squeeze=False
    )
    for ax, points, name in zip(axes[0], arrays, names, strict=True):
        line_pts = points.reshape(-1, resolution, 2)
        half = len(line_pts) // 2
        ax.add_collection(LineCollection(line_pts[:half], colors=[first], linewidths=0.8))
        ax.add_collection(LineCollection(line_pts[half:], colors=[second], linewidths=0.8))
        ax.autoscale_view()
        ax.set_aspect("equal", adjustable="datalim")
        ax.set(title=name, xlabel="dim 1", ylabel="dim 2")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def training_curves(
    history: Any,
    ax: Axes | None = None,
    ylabel: str = "NLL (nats)",
    floor: float | None = None,
    floor_label: str = "exact entropy",
    title: str = "training curves",
    smooth: int | None = None,
) -> Axes:
    """Training loss (faint per step, plus a moving average) and validation loss by step.

    ``history``: a ``flowcourse.train.History`` (anything with ``train_loss``, ``val_steps``,
    ``val_loss``). ``floor``: a reference drawn as a dashed line, e.g. the data's exact
    entropy, below which no model's expected NLL can go. ``smooth``: moving-average window
    in steps, default 2% of the run.
    """
    train = np.asarray(getattr(history, "train_loss", None) or [], dtype=np.float64)
    if train.size == 0:
        raise ValueError("history has no training losses to plot (train_loss is empty)")
    window = smooth if smooth is not None else max(1, len(train) // 50)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"smooth must be None or an integer >= 1, got {smooth!r}")
    window = min(window, len(train))
    steps = np.arange(1, len(train) + 1)
    palette = sns.color_palette()

    ax = _new_ax(ax)
    if window > 1:
        ax.plot(steps, train, color=palette[0], alpha=0.25, lw=0.8)
    label = "train" if window == 1 else f"train (mean of {window} steps)"
    ax.plot(steps[window - 1 :], _moving_average(train, window), color=palette[0], label=label)
    val_steps = list(getattr(history, "val_steps", []) or [])
    val_loss = list(getattr(history, "val_loss", []) or [])
    if val_loss:
        ax.plot(val_steps, val_loss, "o-", color=palette[1], ms=3, label="validation")
    if floor is not None:
        ax.axhline(floor, color="0.2", ls="--", lw=1, label=f"{floor_label} = {floor:.4f}")
    ax.legend(loc="upper right")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    return ax


def digit_grid(
    images: ArrayLike,
    nrow: int | None = None,
    title: str = "digits",
    ax: Axes | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "gray_r",
) -> Axes:
    """Square images in a grid, ``nrow`` per row (default: about square).

    ``images``: (n, side * side) rows such as ``load_digits().train[:32]``, or (n, side, side).
    Pixel values are mapped from ``vmin`` (white) to ``vmax`` (black), default their range.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().double().numpy()
    if not isinstance(images, np.ndarray) or images.ndim not in (2, 3) or len(images) == 0:
        got = images.shape if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must have shape (n, side*side) or (n, side, side), got {got}")
    n = len(images)
    if images.ndim == 2:
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise ValueError(f"rows of {images.shape[1]} pixels are not square images")
        images = images.reshape(n, side, side)
    side = images.shape[1]
    if images.shape[2] != side:
        raise ValueError(f"images must be square, got {images.shape[1]}x{images.shape[2]}")
    per_row = nrow if nrow is not None else math.ceil(math.sqrt(n))
    if isinstance(per_row, bool) or not isinstance(per_row, int) or per_row < 1:
        raise ValueError(f"nrow must be None or an integer >= 1, got {nrow!r}")
    rows = math.ceil(n / per_row)

    # One pixel of gap (nan, drawn white) between images.
    cell = side + 1
    canvas = np.full((rows * cell + 1, per_row * cell + 1), np.nan)
    for k, image in enumerate(images.astype(np.float64)):
        r, c = divmod(k, per_row)
        canvas[1 + r * cell : 1 + r * cell + side, 1 + c * cell : 1 + c * cell + side] = image
    colours = plt.get_cmap(cmap).with_extremes(bad="white")
    low = float(np.nanmin(images)) if vmin is None else vmin
    high = float(np.nanmax(images)) if vmax is None else vmax

    ax = _new_ax(ax, figsize=(0.45 * per_row + 1, 0.45 * rows + 0.8))
    ax.imshow(canvas, cmap=colours, vmin=low, vmax=high if high > low else low + 1)
    ax.grid(False)
    ax.set(xticks=[], yticks=[])
    ax.set(title=title, xlabel=f"{n} images of {side}x{side} pixels", ylabel=f"{rows} rows")
    return ax
