"""Assignment 04: affine coupling layers and a small RealNVP (after lesson 04).

As in lesson 04, a coupling's affine map is written in the density direction: ``inverse``
(data x -> base z) is ``z = x * exp(s) + t`` on the entries the mask does not keep, with
``(s, t)`` computed from the kept entries; ``forward`` (base -> data, sampling) undoes it.
"""

from __future__ import annotations

import math
import re

import torch

from flowcourse.assignments.core import (
    Assignment,
    Fail,
    Model,
    Task,
    close,
    compare,
    expect_pair,
    expect_tensor,
    f32,
    kind_of,
    reference_value,
    t,
)
from flowcourse.assignments.kernel import Conditioner, log_standard_normal

# --- references (named after their tasks; see change_of_variables.py) -------------------------


def alternating_masks(dim, n_layers):
    return [
        ((torch.arange(dim) + k) % 2 == 0).to(torch.get_default_dtype()) for k in range(n_layers)
    ]


def coupling_inverse(x, mask, conditioner):
    s, t = conditioner(x * mask)
    s, t = s * (1 - mask), t * (1 - mask)
    return x * s.exp() + t, s.sum(-1)


def coupling_forward(z, mask, conditioner):
    s, t = conditioner(z * mask)
    s, t = s * (1 - mask), t * (1 - mask)
    return (z - t) * (-s).exp(), -s.sum(-1)


def realnvp_log_prob(x, masks, conditioners):
    z, log_det = x, x.new_zeros(x.shape[0])
    for mask, conditioner in reversed(list(zip(masks, conditioners, strict=True))):
        z, step = coupling_inverse(z, mask, conditioner)
        log_det = log_det + step
    return log_standard_normal(z) + log_det


# --- inputs -----------------------------------------------------------------------------------


def _conditioner_spec(rng, dim):
    return {
        "Ws": f32(rng.normal(0, 0.7, (dim, dim))),
        "bs": f32(rng.normal(0, 0.5, dim)),
        "Wt": f32(rng.normal(0, 1.0, (dim, dim))),
        "bt": f32(rng.normal(0, 0.5, dim)),
    }


def _random_mask(rng, dim):
    while True:
        mask = (rng.uniform(size=dim) < 0.5).astype(float)
        if 0 < mask.sum() < dim:
            return mask.tolist()


def _cases_coupling(rng, name):
    return [
        {
            name: f32(rng.normal(0, 1.5, (64, dim))),
            "mask": _random_mask(rng, dim),
            "conditioner": _conditioner_spec(rng, dim),
        }
        for dim in (2, 3, 4, 5)
    ]


def _cases_masks(rng):
    return [{"dim": d, "n_layers": k} for d, k in ((2, 4), (3, 3), (6, 2), (5, 5))]


def _cases_realnvp_log_prob(rng):
    cases = []
    for dim, k in ((2, 2), (2, 4), (3, 3)):
        masks = [[float((i + j) % 2 == 0) for i in range(dim)] for j in range(k)]
        cases.append(
            {
                "x": f32(rng.normal(0, 1.5, (64, dim))),
                "masks": masks,
                "conditioners": [_conditioner_spec(rng, dim) for _ in range(k)],
            }
        )
    return cases


MOONS_NOISE = 0.1
MOONS_GRID = [[-2.5, 3.5], [-2.0, 2.5]]  # holds all but ~1e-6 of the two-moons mass
N_TRAIN, N_TEST = 2000, 2000


def _cases_train_realnvp(rng):
    from flowcourse.data import TwoMoons

    source = TwoMoons(MOONS_NOISE)
    return [
        {
            "x_train": f32(source.sample(N_TRAIN, seed=int(rng.integers(2**31))).numpy()),
            "x_test": f32(source.sample(N_TEST, seed=int(rng.integers(2**31))).numpy()),
            "sample_seed": int(rng.integers(2**31)),
            "torch_seed": int(rng.integers(2**31)),
        }
    ]


# --- judges -----------------------------------------------------------------------------------


def _judge_masks(case, value):
    expected = alternating_masks(case["dim"], case["n_layers"])
    if not isinstance(value, list | tuple) or len(value) != case["n_layers"]:
        raise Fail(f"should return a list of {case['n_layers']} masks, got {kind_of(value)}")
    for k, (mask, want) in enumerate(zip(value, expected, strict=True)):
        mask = expect_tensor(mask, (case["dim"],), f"mask {k}")
        if not torch.equal(mask, want.double()):
            raise Fail(
                f"mask {k} is {mask.tolist()}, expected {want.tolist()}: the first mask keeps "
                "entries 0, 2, 4, ... (mask 1) and the masks alternate"
            )
    return 0.0


def _judge_coupling(inverse: bool):
    def judge(case, value):
        key, out_name = ("x", "z") if inverse else ("z", "x")
        v, mask = t(case[key]), t(case["mask"])
        conditioner = Conditioner(case["conditioner"], torch.float64)
        task = TASKS[1] if inverse else TASKS[2]
        out_ref, ld_ref = reference_value(task, case)
        out, log_det = expect_pair(value, f"{out_name}, log_det")
        out = expect_tensor(out, tuple(out_ref.shape), out_name)
        kept = mask.bool()
        if not close(out[:, kept], v[:, kept], 1e-5, 1e-5):
            raise Fail(
                f"{out_name} changes entries where mask is 1 (mask = {mask.int().tolist()}): "
                "those must pass through unchanged; multiply s and t by (1 - mask)"
            )
        s_all, t_all = conditioner(v * mask)
        s_full, t_full = conditioner(v)
        s, t_ = s_all * (1 - mask), t_all * (1 - mask)
        if inverse:
            bugs = [
                (v * s_full.exp() + t_full, "the conditioner must only see x * mask"),
                (
                    v * mask + (1 - mask) * (v * s_full.exp() + t_full),
                    "the conditioner sees x * mask only",
                ),
                ((v + t_) * s.exp(), "scale first, then shift: z = x * exp(s) + t"),
                (v * (-s).exp() + t_, "multiply by exp(s) (the density direction scales up)"),
            ]
        else:
            bugs = [
                (
                    v * (-s).exp() - t_,
                    "subtract t before dividing by exp(s): x = (z - t) * exp(-s)",
                ),
                ((v - t_) * s.exp(), "divide by exp(s) (multiply by exp(-s)); do not multiply"),
                (
                    v * mask + (1 - mask) * (v - t_full) * (-s_full).exp(),
                    "the conditioner sees z * mask only",
                ),
                (v * s.exp() + t_, "that is the inverse map (data to base), not its undoing"),
            ]
        compare(out, out_ref, out_name, bugs=bugs)
        log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
        sign = 1 if inverse else -1
        return compare(
            log_det,
            ld_ref,
            "log_det",
            bugs=[
                (
                    sign * s_all.sum(-1),
                    "it also sums s over the kept entries (mask 1): mask s first",
                ),
                (
                    -ld_ref,
                    "it has the wrong sign: the inverse's log-det is +sum(s), the forward's "
                    "-sum(s)",
                ),
            ],
        )

    return judge


def _judge_realnvp_log_prob(case, value):
    x = t(case["x"])
    masks = [t(m) for m in case["masks"]]
    conditioners = [Conditioner(c, torch.float64) for c in case["conditioners"]]
    expected = reference_value(TASKS[3], case)
    got = expect_tensor(value, tuple(expected.shape), "log_prob")
    z, lds = x, x.new_zeros(x.shape[0])
    for mask, cond in zip(masks, conditioners, strict=True):  # wrong order: first layer first
        z, step = coupling_inverse(z, mask, cond)
        lds = lds + step
    z_ok, ld_ok = x, x.new_zeros(x.shape[0])
    for mask, cond in reversed(list(zip(masks, conditioners, strict=True))):
        z_ok, step = coupling_inverse(z_ok, mask, cond)
        ld_ok = ld_ok + step
    return compare(
        got,
        expected,
        "log_prob",
        bugs=[
            (log_standard_normal(z) + lds, "undo the layers from the last to the first"),
            (log_standard_normal(z_ok) - ld_ok, "add the inverse log-dets; do not subtract them"),
            (ld_ok, "the base log-density log N(z; 0, I) is missing"),
        ],
    )


# --- train_realnvp: the returned model is judged as a member of the notebook's RealNVP family


class FamilyRealNVP:
    """The notebook's ``RealNVP`` rebuilt in float64 from a state dict: masks ``(K, D)``, and
    per layer a ReLU MLP ``net.0 -> net.2 -> net.4`` whose output ``(raw, t)`` gives
    ``s = 2 tanh(raw / 2)``. Evaluated with the reference couplings."""

    _KEY = re.compile(r"^conditioners\.(\d+)\.net\.(0|2|4)\.(weight|bias)$")

    def __init__(self, state: dict) -> None:
        masks = state.get("masks")
        if not isinstance(masks, torch.Tensor) or masks.ndim != 2:
            raise Fail("its state has no `masks` buffer of shape (K, D): is it this notebook's "
                       "RealNVP?")  # fmt: skip
        self.masks = list(masks)
        layers: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key == "masks":
                continue
            match = self._KEY.match(key)
            if not match or not isinstance(value, torch.Tensor):
                raise Fail(
                    f"its state holds `{key}`, which the notebook's RealNVP does not have: keep "
                    "the given RealNVP and Conditioner classes"
                )
            layers.setdefault(int(match[1]), {})[f"{match[2]}.{match[3]}"] = value
        if sorted(layers) != list(range(len(self.masks))) or any(
            len(p) != 6 for p in layers.values()
        ):
            raise Fail("its conditioners do not match its masks: keep the given classes")
        self.nets = [layers[k] for k in range(len(self.masks))]

    def _conditioner(self, p):
        def conditioner(x):
            h = torch.relu(x @ p["0.weight"].T + p["0.bias"])
            h = torch.relu(h @ p["2.weight"].T + p["2.bias"])
            raw, shift = (h @ p["4.weight"].T + p["4.bias"]).chunk(2, dim=-1)
            return 2 * torch.tanh(raw / 2), shift

        return conditioner

    def log_prob(self, x):
        return realnvp_log_prob(x, self.masks, [self._conditioner(p) for p in self.nets])

    def sample(self, n: int, seed: int):
        z = torch.randn(n, self.masks[0].shape[0], dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
        for mask, p in zip(self.masks, self.nets, strict=True):
            z, _ = coupling_forward(z, mask, self._conditioner(p))
        return z


# Pass marks, set from the reference solution's spread over 200 fresh grader seeds (make bench,
# part `grading`, benchmarks/results/summary.md): its test NLL ranged 1.146-1.425 nats (median
# 1.233; the data's entropy is 1.008, one Gaussian about 1.91) and its share of samples off the
# moons 1.6%-11.8% (median 4.3%; a 4-layer flow leaves bridges between the arcs).
TRAIN_REALNVP_MAX_NLL = 1.55  # nats
MAX_OFF_MOONS = 0.25  # share of samples where the data's density is below its 0.1% quantile


def _family(value) -> FamilyRealNVP:
    if not isinstance(value, Model):
        raise Fail(
            f"train_realnvp should return the trained RealNVP of this notebook, got "
            f"{kind_of(value)}"
        )
    if value.kind != "RealNVP" or value.module != "__main__" or not value.is_module:
        where = f" from {value.module}" if value.module not in ("", "__main__") else ""
        raise Fail(
            f"train_realnvp returned a {value.kind}{where}, not the RealNVP class of this "
            "notebook built from your coupling layers: train and return `RealNVP()` (a data "
            "source or the package's own flow is not a model you trained)"
        )
    return FamilyRealNVP(value.state)


def _judge_train_realnvp(case, value):
    from flowcourse.data import TwoMoons

    model = _family(value)
    x_test = t(case["x_test"])
    with torch.no_grad():
        log_q = model.log_prob(x_test)
    if not log_q.isfinite().all():
        raise Fail("the model's log_prob holds NaN or inf: the training diverged")
    own = value.log_prob_test
    if isinstance(own, torch.Tensor) and own.shape == log_q.shape:
        if not close(own, log_q, 1e-2, 1e-3):
            raise Fail(
                "the model's own log_prob differs from a RealNVP with its parameters: keep the "
                "given RealNVP, Conditioner and log_prob (ReLU conditioners, s = 2 tanh(raw / 2))"
            )
    source = TwoMoons(MOONS_NOISE)
    log_p = source.log_prob(x_test)
    nll, exact = -log_q.mean().item(), -log_p.mean().item()
    diff = log_p - log_q
    se = (diff.std() / math.sqrt(len(diff))).item()
    facts = (
        f"test NLL {nll:.3f} nats (pass mark {TRAIN_REALNVP_MAX_NLL}; exact NLL of these points "
        f"{exact:.3f}, one Gaussian ~1.91)"
    )
    if nll - exact < -4 * se:
        raise Fail(
            f"{facts}: below the exact NLL by more than 4 standard errors ({se:.3f}), which no "
            "normalised density can do: the returned object is not a density of x"
        )
    (x0, x1), (y0, y1) = MOONS_GRID
    res = 100
    xs = x0 + (torch.arange(res, dtype=torch.float64) + 0.5) * (x1 - x0) / res
    ys = y0 + (torch.arange(res, dtype=torch.float64) + 0.5) * (y1 - y0) / res
    with torch.no_grad():
        grid = model.log_prob(torch.cartesian_prod(xs, ys))
    mass = (torch.logsumexp(grid, 0) + math.log((x1 - x0) * (y1 - y0) / res**2)).exp().item()
    if abs(mass - 1) > 0.05:
        raise Fail(
            f"{facts}, but exp(log_prob) integrates to {mass:.3f} over the box, not 1: the "
            "log-det has the wrong sign or a term is missing"
        )
    if nll > TRAIN_REALNVP_MAX_NLL:
        raise Fail(f"{facts}: above the pass mark; train longer or with a larger learning rate")
    with torch.no_grad():
        samples = model.sample(2000, case["sample_seed"])
    # Samples off the moons: where the data's density is below its 0.1% quantile on the data
    # (a robust count; a mean of -log p_data is ruled by a few far-off samples).
    floor = torch.quantile(log_p, 0.001)
    off = (source.log_prob(samples.clamp(-50, 50)) < floor).double().mean().item()
    if off > MAX_OFF_MOONS:
        raise Fail(
            f"{facts}, but {off:.1%} of its samples fall off the moons (data: 0.1%; pass mark "
            f"{MAX_OFF_MOONS:.0%})"
        )
    return f"{facts}; integral {mass:.3f}; samples off the moons {off:.1%} (data: 0.1%)"


def _plot_train_realnvp(obj, cases, values):
    import matplotlib.pyplot as plt

    case = cases[0]
    model = _family(values[0])
    (x0, x1), (y0, y1) = MOONS_GRID
    res = 120
    xs, ys = torch.linspace(x0, x1, res).double(), torch.linspace(y0, y1, res).double()
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        density = model.log_prob(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).exp()
        samples = model.sample(1000, 0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].imshow(density.reshape(res, res).numpy(), origin="lower", extent=(x0, x1, y0, y1),
                   cmap="viridis")  # fmt: skip
    axes[0].grid(False)
    axes[0].set(title="density of your trained RealNVP", xlabel="$x_1$", ylabel="$x_2$")
    data = torch.tensor(case["x_train"])
    axes[1].scatter(data[:1000, 0], data[:1000, 1], s=3, color="0.6", alpha=0.5, label="data")
    axes[1].scatter(samples[:, 0], samples[:, 1], s=3, color="C0", alpha=0.6, label="samples")
    axes[1].set(
        title="1000 samples over 1000 training points",
        xlabel="$x_1$",
        ylabel="$x_2$",
        xlim=(x0, x1),
        ylim=(y0, y1),
    )
    axes[1].set_aspect("equal")
    axes[1].legend(loc="upper right", markerscale=4)
    fig.tight_layout()


TASKS = (
    Task(
        "alternating_masks",
        1,
        "alternating_masks(dim, n_layers) -> masks",
        alternating_masks,
        (("number", "dim"), ("number", "n_layers")),
        _cases_masks,
        _judge_masks,
    ),
    Task(
        "coupling_inverse",
        3,
        "coupling_inverse(x, mask, conditioner) -> (z, log_det)",
        coupling_inverse,
        (("tensor", "x"), ("tensor", "mask"), ("conditioner", "conditioner")),
        lambda rng: _cases_coupling(rng, "x"),
        _judge_coupling(inverse=True),
    ),
    Task(
        "coupling_forward",
        3,
        "coupling_forward(z, mask, conditioner) -> (x, log_det)",
        coupling_forward,
        (("tensor", "z"), ("tensor", "mask"), ("conditioner", "conditioner")),
        lambda rng: _cases_coupling(rng, "z"),
        _judge_coupling(inverse=False),
    ),
    Task(
        "realnvp_log_prob",
        2,
        "realnvp_log_prob(x, masks, conditioners) -> log_p",
        realnvp_log_prob,
        (("tensor", "x"), ("tensors", "masks"), ("conditioners", "conditioners")),
        _cases_realnvp_log_prob,
        _judge_realnvp_log_prob,
        depends=("coupling_inverse",),
    ),
    Task(
        "train_realnvp",
        3,
        "train_realnvp(x_train) -> model",
        None,  # judged as a member of the notebook's RealNVP family (FamilyRealNVP)
        (("tensor", "x_train"),),
        _cases_train_realnvp,
        _judge_train_realnvp,
        depends=("alternating_masks", "coupling_inverse", "coupling_forward", "realnvp_log_prob"),
        returns="model",
        timeout=120.0,
        plot=_plot_train_realnvp,
    ),
)

ASSIGNMENT = Assignment("04_coupling_layers", "Affine coupling layers and a small RealNVP", TASKS)
