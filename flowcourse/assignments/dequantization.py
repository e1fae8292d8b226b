"""Assignment 05: dequantization and bits per dimension (after lesson 05)."""

from __future__ import annotations

import math

import torch

from flowcourse.assignments.core import (
    Assignment,
    Task,
    compare,
    expect_pair,
    expect_tensor,
    f32,
    reference_value,
    t,
)
from flowcourse.assignments.kernel import DiagonalGaussian

# --- references (named after their tasks; see change_of_variables.py) -------------------------


def dequantize(x_int, u, levels):
    x = (x_int.to(u.dtype) + u) / levels
    return x, u.new_full((x_int.shape[0],), -x_int.shape[1] * math.log(levels))


def logit_forward(x, alpha):
    p = alpha + (1 - 2 * alpha) * x
    log_p, log_1mp = torch.log(p), torch.log1p(-p)
    return log_p - log_1mp, (math.log1p(-2 * alpha) - log_p - log_1mp).sum(-1)


def bits_per_dim(x_int, u, levels, alpha, log_prob_y):
    x, ld_dequantize = dequantize(x_int, u, levels)
    y, ld_logit = logit_forward(x, alpha)
    return -(log_prob_y(y) + ld_logit + ld_dequantize) / (x_int.shape[1] * math.log(2))


# --- inputs -----------------------------------------------------------------------------------


def _cases_dequantize(rng):
    return [
        {
            "x_int": rng.integers(0, levels, (16, dim)).tolist(),
            "u": f32(rng.uniform(0, 1, (16, dim))),
            "levels": levels,
        }
        for levels, dim in ((2, 4), (17, 16), (256, 64), (5, 3))
    ]


def _cases_logit(rng):
    return [
        {"x": f32(rng.uniform(0, 1, (32, dim))), "alpha": alpha}
        for alpha, dim in ((0.05, 3), (0.01, 16), (0.1, 64), (0.2, 2))
    ]


def _cases_bits(rng):
    cases = []
    for levels, dim, alpha in ((17, 16, 0.05), (256, 64, 0.01), (2, 8, 0.1)):
        cases.append(
            {
                "x_int": rng.integers(0, levels, (16, dim)).tolist(),
                "u": f32(rng.uniform(0, 1, (16, dim))),
                "levels": levels,
                "alpha": alpha,
                "log_prob_y": {
                    "mean": f32(rng.normal(0, 1, dim)),
                    "log_std": f32(rng.uniform(-0.5, 1.0, dim)),
                },
            }
        )
    return cases


# --- judges -----------------------------------------------------------------------------------


def _judge_dequantize(case, value):
    x_int, u, levels = t(case["x_int"]), t(case["u"]), case["levels"]
    x_ref, ld_ref = reference_value(TASKS[0], case)
    x, log_det = expect_pair(value, "x, log_det")
    x = expect_tensor(x, tuple(x_ref.shape), "x")
    compare(
        x,
        x_ref,
        "x",
        bugs=[
            (x_int / levels + u, "add the noise before dividing: x = (x_int + u) / levels"),
            (x_int + u, "divide by levels, so that x lies in [0, 1)"),
        ],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    d = x_int.shape[1]
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (
                torch.zeros_like(ld_ref),
                f"the constant is missing: dividing by levels shrinks volume by levels^D, "
                f"so log_det = -D log(levels) = {-d * math.log(levels):.4g} here",
            ),
            (-ld_ref, "it has the wrong sign: dividing by levels shrinks volume"),
            (ld_ref / d, "one -log(levels) per dimension: multiply by D"),
        ],
    )


def _judge_logit(case, value):
    x, alpha = t(case["x"]), case["alpha"]
    y_ref, ld_ref = reference_value(TASKS[1], case)
    y, log_det = expect_pair(value, "y, log_det")
    y = expect_tensor(y, tuple(y_ref.shape), "y")
    compare(
        y,
        y_ref,
        "y",
        bugs=[(torch.log(x) - torch.log1p(-x), "squeeze first: p = alpha + (1 - 2 alpha) x")],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    const = x.shape[1] * math.log1p(-2 * alpha)
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (ld_ref - const, f"the constant D log(1 - 2 alpha) = {const:.4g} is missing"),
            (-ld_ref, "it has the wrong sign"),
        ],
    )


def _judge_bits(case, value):
    x_int, u = t(case["x_int"]), t(case["u"])
    levels, alpha = case["levels"], case["alpha"]
    expected = reference_value(TASKS[2], case)
    got = expect_tensor(value, tuple(expected.shape), "bits per dim", log_det=True)
    d = x_int.shape[1]
    ln2 = math.log(2)
    x, _ = dequantize(x_int, u, levels)
    y, _ = logit_forward(x, alpha)
    log_p_y = DiagonalGaussian(case["log_prob_y"], torch.float64)(y)
    bugs = [
        (
            expected - math.log2(levels),
            f"the dequantization constant -D log(levels) is missing: every value is "
            f"log2({levels}) = {math.log2(levels):.4g} bits/dim too low",
        ),
        (expected * ln2, "those are nats per dimension: divide by ln 2 for bits"),
        (expected * d, "divide by the number of dimensions D"),
        (expected * d * ln2, "those are nats per image: divide by D ln 2"),
        (-expected, "bits/dim is the negative log-likelihood: flip the sign"),
        (-(log_p_y - d * math.log(levels)) / (d * ln2), "the logit's log-det is missing"),
    ]
    return compare(got, expected, "bits per dim", bugs=bugs)


def _plot_bits(obj, cases, values):
    import matplotlib.pyplot as plt

    from flowcourse.data import load_digits
    from flowcourse.results import course_results

    digits, alpha = load_digits("integer"), 0.05
    levels, dim = digits.levels, digits.train.shape[1]
    gen = torch.Generator().manual_seed(0)
    train_int, test_int = digits.train.long(), digits.test.long()
    u_train = torch.rand(train_int.shape, generator=gen)
    u_test = torch.rand(test_int.shape, generator=gen)
    y_train, _ = logit_forward(dequantize(train_int, u_train, levels)[0], alpha)
    gaussian = DiagonalGaussian({"mean": y_train.mean(0), "log_std": y_train.std(0).log()})
    bits = obj(test_int, u_test, levels, alpha, gaussian).detach().mean().item()
    per_dim = dim * math.log(2)
    names, heights = (
        ["uniform\n(log2 17)", "diagonal Gaussian\nin logit space\n(yours)"],
        [
            math.log2(levels),
            bits,
        ],
    )
    lesson = course_results("05_realnvp_digits")  # what lesson 05 measured, if it is here
    for label, key in (("categorical", "categorical_nats"), ("RealNVP", "realnvp_nats")):
        if key in lesson:
            names.append(f"{label}\n(lesson 05:\n{lesson[key]:.1f} nats)")
            heights.append(lesson[key] / per_dim)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bars = ax.bar(names, heights, color=["0.6", "C0"] + ["0.75"] * (len(names) - 2))
    ax.bar_label(bars, fmt="%.2f")
    ax.set(
        title="8x8 digits, 270 test images: bits per dimension (lower is better)",
        ylabel="bits / dim",
        ylim=(0, 5),
    )
    ax.tick_params(axis="x", labelsize=8)


TASKS = (
    Task(
        "dequantize",
        2,
        "dequantize(x_int, u, levels) -> (x, log_det)",
        dequantize,
        (("long", "x_int"), ("tensor", "u"), ("number", "levels")),
        _cases_dequantize,
        _judge_dequantize,
        library=("dequantize",),
    ),
    Task(
        "logit_forward",
        3,
        "logit_forward(x, alpha) -> (y, log_det)",
        logit_forward,
        (("tensor", "x"), ("number", "alpha")),
        _cases_logit,
        _judge_logit,
        library=("Logit",),
    ),
    Task(
        "bits_per_dim",
        3,
        "bits_per_dim(x_int, u, levels, alpha, log_prob_y) -> bits",
        bits_per_dim,
        (
            ("long", "x_int"),
            ("tensor", "u"),
            ("number", "levels"),
            ("number", "alpha"),
            ("diagonal_gaussian", "log_prob_y"),
        ),
        _cases_bits,
        _judge_bits,
        depends=("dequantize", "logit_forward"),
        plot=_plot_bits,
    ),
)

ASSIGNMENT = Assignment("05_dequantization", "Dequantization and bits per dimension", TASKS)
