"""Assignment 02: the corrected affine flow (after lesson 02)."""

from __future__ import annotations

import torch

from flowcourse.assignments.core import (
    Assignment,
    Fail,
    Task,
    compare,
    expect_pair,
    expect_tensor,
    f32,
    kind_of,
    reference_value,
    t,
    values_text,
)
from flowcourse.assignments.kernel import LOG_2PI, log_standard_normal

# --- references (named after their tasks; see change_of_variables.py) -------------------------


def affine_forward(x, log_scale, shift):
    return x * log_scale.exp() + shift, x.new_zeros(x.shape[0]) + log_scale.sum()


def affine_inverse(y, log_scale, shift):
    return (y - shift) * (-log_scale).exp(), y.new_zeros(y.shape[0]) - log_scale.sum()


def compose_forward(x, layers):
    log_det = x.new_zeros(x.shape[0])
    for log_scale, shift in layers:
        x, step = affine_forward(x, log_scale, shift)
        log_det = log_det + step
    return x, log_det


def compose_inverse(y, layers):
    log_det = y.new_zeros(y.shape[0])
    for log_scale, shift in reversed(list(layers)):
        y, step = affine_inverse(y, log_scale, shift)
        log_det = log_det + step
    return y, log_det


def affine_nll(x, layers):
    z, log_det = compose_inverse(x, layers)
    return -(log_standard_normal(z) + log_det).mean()


def train_affine(x):
    dim = x.shape[1]
    layers = [(torch.zeros(dim, requires_grad=True), torch.zeros(dim, requires_grad=True))]
    optimizer = torch.optim.Adam([p for layer in layers for p in layer], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = affine_nll(x, layers)
        loss.backward()
        optimizer.step()
    return [(a.detach(), b.detach()) for a, b in layers]


# --- inputs -----------------------------------------------------------------------------------


def _log_scale(rng, dim):
    ls = rng.uniform(-1.5, 1.5, dim)
    ls[rng.integers(dim)] = -rng.uniform(0.2, 1.5)  # at least one scale below 1
    return ls


def _cases_affine(rng, name):
    cases = []
    for dim in (1, 2, 3, 5):
        cases.append(
            {
                name: f32(rng.normal(0, 1.5, (64, dim))),
                "log_scale": f32(_log_scale(rng, dim)),
                "shift": f32(rng.normal(0, 1, dim)),
            }
        )
    return cases


def _random_layers(rng, k, dim):
    return [[f32(_log_scale(rng, dim)), f32(rng.normal(0, 1, dim))] for _ in range(k)]


def _cases_compose(rng, name):
    return [
        {name: f32(rng.normal(0, 1.5, (64, dim))), "layers": _random_layers(rng, k, dim)}
        for k, dim in ((2, 1), (3, 2), (4, 3))
    ]


def _cases_nll(rng):
    cases = []
    for k, dim in ((1, 1), (2, 2), (3, 3)):
        x = rng.normal(rng.normal(0, 2, dim), rng.uniform(0.3, 3, dim), (128, dim))
        cases.append({"x": f32(x), "layers": _random_layers(rng, k, dim)})
    return cases


def _cases_train_affine(rng):
    mean, std = rng.uniform(-3, 3, 2), rng.uniform(0.4, 2.5, 2)
    x = rng.normal(mean, std, (1000, 2))
    return [
        {
            "x": f32(x),
            "true_mean": f32(mean),
            "true_std": f32(std),
            "torch_seed": int(rng.integers(2**31)),
        }
    ]


# --- judges -----------------------------------------------------------------------------------


def _judge_affine_forward(case, value):
    x, log_scale, shift = (t(case[k]) for k in ("x", "log_scale", "shift"))
    y_ref, ld_ref = reference_value(TASKS[0], case)
    y, log_det = expect_pair(value, "y, log_det")
    y = expect_tensor(y, tuple(y_ref.shape), "y")
    compare(
        y,
        y_ref,
        "y",
        bugs=[
            (
                x * log_scale + shift,
                "you used log_scale as the scale itself, an unconstrained scale that can be "
                "negative or zero: the scale is exp(log_scale), positive whatever log_scale is",
            )
        ],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    d = x.shape[1]
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (-ld_ref, "it has the wrong sign: forward's log-det is +sum(log_scale)"),
            (ld_ref / d, "that is the mean of log_scale; the log-det is the sum"),
            (ld_ref.exp(), "that is the product of the scales; the log-det is its log"),
        ],
        nan_hint="log of a negative number: log_scale is already the log of the scale. Treating "
        "it as the scale itself (an unconstrained scale) breaks as soon as it is negative",
    )


def _judge_affine_inverse(case, value):
    y_in, log_scale, shift = (t(case[k]) for k in ("y", "log_scale", "shift"))
    x_ref, ld_ref = reference_value(TASKS[1], case)
    x, log_det = expect_pair(value, "x, log_det")
    x = expect_tensor(x, tuple(x_ref.shape), "x")
    compare(
        x,
        x_ref,
        "x",
        bugs=[
            ((y_in - shift) * log_scale.exp(), "divide by the scale: multiply by exp(-log_scale)"),
            (y_in * (-log_scale).exp() - shift, "subtract the shift first, then divide"),
            (y_in * log_scale.exp() + shift, "that is the forward map, not its inverse"),
        ],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[(-ld_ref, "the inverse's log-det is minus the forward one: -sum(log_scale)")],
    )


def _judge_compose(forward: bool):
    def judge(case, value):
        v = t(case["x" if forward else "y"])
        layers = [(t(a), t(b)) for a, b in case["layers"]]
        out_ref, ld_ref = (compose_forward if forward else compose_inverse)(v, layers)
        out_name = "y" if forward else "x"
        out, log_det = expect_pair(value, f"{out_name}, log_det")
        out = expect_tensor(out, tuple(out_ref.shape), out_name)
        step = affine_forward if forward else affine_inverse
        order = layers if forward else list(reversed(layers))
        wrong = v
        for log_scale, shift in reversed(order):
            wrong, _ = step(wrong, log_scale, shift)
        lds = [step(v, ls, sh)[1] for ls, sh in order]
        order_message = (
            "apply the layers in the order of the list"
            if forward
            else "undo the layers in reverse order: the last layer first"
        )
        compare(out, out_ref, out_name, bugs=[(wrong, order_message)])
        log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
        return compare(
            log_det,
            ld_ref,
            "log_det",
            bugs=[
                (lds[-1], "only the last layer's log-det is there: add up the log-dets of all"),
                (lds[0], "only one layer's log-det is there: add up the log-dets of all layers"),
                (-ld_ref, "it has the wrong sign"),
            ],
        )

    return judge


def _judge_nll(case, value):
    x = t(case["x"])
    layers = [(t(a), t(b)) for a, b in case["layers"]]
    expected = affine_nll(x, layers)
    got = expect_tensor(value, (), "the NLL")
    z, log_det = compose_inverse(x, layers)
    per_sample = log_standard_normal(z) + log_det
    d = x.shape[1]
    bugs = [
        (-(log_standard_normal(z) - log_det).mean(), "the log-det has the wrong sign"),
        (-per_sample.mean() - 0.5 * d * LOG_2PI, "the constant 0.5 D log(2 pi) is missing"),
        (-per_sample.sum(), "that is the sum over samples; take the mean"),
        (per_sample.mean(), "that is the log-likelihood; the NLL is its negative"),
        (-log_standard_normal(z).mean(), "the log-det term is missing"),
    ]
    return compare(got, expected, "the NLL", bugs=bugs)


def _layers_value(value) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not isinstance(value, list | tuple) or not value:
        raise Fail(
            f"should return a non-empty list of (log_scale, shift) pairs, got {kind_of(value)}"
        )
    layers = []
    for k, layer in enumerate(value):
        if not (isinstance(layer, list | tuple) and len(layer) == 2):
            raise Fail(f"layer {k} should be a pair (log_scale, shift), got {kind_of(layer)}")
        layers.append(
            tuple(
                expect_tensor(p, (2,), f"layer {k}'s {n}")
                for p, n in zip(layer, ("log_scale", "shift"), strict=True)
            )
        )
    return layers


def _fitted_gaussian(layers):
    scale, shift = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for log_scale, sh in layers:
        scale, shift = scale * log_scale.exp(), shift * log_scale.exp() + sh
    return scale, shift


TRAIN_AFFINE_MAX_KL = 0.05  # nats; the reference's spread is in benchmarks/results/grading.csv


def _judge_train_affine(case, value):
    scale, shift = _fitted_gaussian(_layers_value(value))
    if not (scale.isfinite().all() and shift.isfinite().all()):
        raise Fail("the trained parameters hold NaN or inf: the training diverged (learning rate?)")
    mean, std = t(case["true_mean"]), t(case["true_std"])
    # KL(N(mean, std^2) || N(shift, scale^2)), summed over the two dimensions
    kl = (torch.log(scale / std) + (std**2 + (mean - shift) ** 2) / (2 * scale**2) - 0.5).sum()
    if kl > TRAIN_AFFINE_MAX_KL:
        raise Fail(
            f"the trained flow is N(mean={values_text(shift)}, std={values_text(scale)}) but the "
            f"data come from N(mean={values_text(mean)}, std={values_text(std)}): KL = "
            f"{kl.item():.3f} nats > {TRAIN_AFFINE_MAX_KL}. Train longer or with a larger "
            "learning rate, and minimise the NLL"
        )
    return (
        f"trained flow within KL {kl.item():.4f} nats of the data's Gaussian (pass mark "
        f"{TRAIN_AFFINE_MAX_KL})"
    )


def _plot_train_affine(obj, cases, values):
    import matplotlib.pyplot as plt

    case = cases[0]
    x = torch.tensor(case["x"])
    scale, shift = _fitted_gaussian(_layers_value(values[0]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for d, ax in enumerate(axes):
        grid = torch.linspace(float(x[:, d].min()) - 1, float(x[:, d].max()) + 1, 300)
        fitted = torch.distributions.Normal(shift[d], scale[d]).log_prob(grid.double()).exp()
        ax.hist(x[:, d].numpy(), bins=40, density=True, alpha=0.4, label="training data")
        ax.plot(grid, fitted, color="C1", label="trained affine flow")
        ax.set(
            title=f"dimension {d + 1}: scale {scale[d].item():.3f}, shift {shift[d].item():.3f}",
            xlabel=f"$x_{d + 1}$",
            ylabel="density",
        )
        ax.legend(fontsize=8)
    fig.suptitle("The trained affine flow is a Gaussian fitted by maximum likelihood")
    fig.tight_layout()


TASKS = (
    Task(
        "affine_forward",
        2,
        "affine_forward(x, log_scale, shift) -> (y, log_det)",
        affine_forward,
        (("tensor", "x"), ("tensor", "log_scale"), ("tensor", "shift")),
        lambda rng: _cases_affine(rng, "x"),
        _judge_affine_forward,
    ),
    Task(
        "affine_inverse",
        2,
        "affine_inverse(y, log_scale, shift) -> (x, log_det)",
        affine_inverse,
        (("tensor", "y"), ("tensor", "log_scale"), ("tensor", "shift")),
        lambda rng: _cases_affine(rng, "y"),
        _judge_affine_inverse,
    ),
    Task(
        "compose_forward",
        1,
        "compose_forward(x, layers) -> (y, log_det)",
        compose_forward,
        (("tensor", "x"), ("layers", "layers")),
        lambda rng: _cases_compose(rng, "x"),
        _judge_compose(forward=True),
        depends=("affine_forward",),
    ),
    Task(
        "compose_inverse",
        2,
        "compose_inverse(y, layers) -> (x, log_det)",
        compose_inverse,
        (("tensor", "y"), ("layers", "layers")),
        lambda rng: _cases_compose(rng, "y"),
        _judge_compose(forward=False),
        depends=("affine_inverse",),
    ),
    Task(
        "affine_nll",
        2,
        "affine_nll(x, layers) -> nll",
        affine_nll,
        (("tensor", "x"), ("layers", "layers")),
        _cases_nll,
        _judge_nll,
        depends=("affine_inverse", "compose_inverse"),
    ),
    Task(
        "train_affine",
        3,
        "train_affine(x) -> layers",
        train_affine,
        (("tensor", "x"),),
        _cases_train_affine,
        _judge_train_affine,
        depends=(
            "affine_forward",
            "affine_inverse",
            "compose_forward",
            "compose_inverse",
            "affine_nll",
        ),
        timeout=60.0,
        plot=_plot_train_affine,
    ),
)

ASSIGNMENT = Assignment("02_affine_flow", "The corrected affine flow", TASKS)
