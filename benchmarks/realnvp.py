"""The course's RealNVP against zuko's and normflows' on the same data, in the same run.

Same for every model: two moons (noise 0.05) from ``flowcourse.data.TwoMoons``, 10k training
points (``TRAIN_SEED``) and 20k test points (``TEST_SEED``) in raw coordinates; 8 affine
coupling layers with alternating masks, conditioners of 2 hidden layers of 64 units; a
standard normal base; Adam, lr 1e-3, batch 256, 2000 steps; the same training loop
(:func:`train_steps`: the steps and minibatches of ``flowcourse.train.fit``, without its
per-step NaN guard, skipping a step whose loss is not finite); one torch thread. The seed sets
the initial weights and the minibatch order.

What the libraries do differently (their defaults, kept on purpose):

- course (``flowcourse.flows.realnvp``): conditioner sees ``x * mask`` (2 inputs), ReLU, last
  layer zero-initialised (starts as the identity), log-scale ``2 tanh(raw / 2)``, the affine
  map written data to base (``z = x * exp(s) + t``) as in the paper and in zuko.
- zuko (``zuko.flows.RealNVP``): conditioner sees the kept coordinate only (1 input), ReLU,
  default (random) init of the last layer, log-scale ``a / (1 + |a| / 6.9)``, i.e. soft-bounded
  by log(1e3).
- normflows (``AffineCouplingBlock`` + ``Permute(swap)``, as in its README): 1 input, ReLU,
  last layer zero-initialised, unbounded ``exp`` scale; its base is made fixed (not trainable)
  to match the others.

Measured per run: test NLL (nats, raw coordinates), gap = NLL - exact NLL on the same test
points (paired: the exact log-density comes from ``TwoMoons.log_prob``), CPU ms per step
(``time.process_time`` over the whole training loop, divided by the steps), wall ms per step,
parameter count, steps skipped because the loss was not finite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (
    ResultFile,
    finite,
    log,
    markdown_table,
    mean_sd,
    number,
    spread,
)

PART = "realnvp"
COLUMNS = [
    "model",
    "seed",
    "steps",
    "params",
    "test_nll",
    "exact_nll",
    "gap",
    "cpu_ms_per_step",
    "wall_ms_per_step",
    "final_train_loss",
    "skipped_steps",
    "status",
]
KEY = ["model", "seed", "steps"]

NOISE = 0.05
N_TRAIN, N_TEST = 10_000, 20_000
TRAIN_SEED, TEST_SEED = 1, 2
LAYERS, HIDDEN, DEPTH = 8, 64, 2
LR, BATCH = 1e-3, 256

# Course design, reference figures at 2000 steps (test NLL, nats); exact entropy 0.2892.
REFERENCE = {"course": 0.38, "zuko": 0.366, "normflows": 0.387}
REFERENCE_NOTE = {
    "course": "claim: <= 0.38 (issue 3)",
    "zuko": "course design: 0.366",
    "normflows": "course design: 0.387",
}


# --- the models, each a module with log_prob(x: (batch, 2)) -> (batch,) ----------------------


def course_model() -> nn.Module:
    from flowcourse.flows import realnvp

    return realnvp(2, layers=LAYERS, hidden=HIDDEN, depth=DEPTH)


class _Zuko(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import zuko

        self.flow = zuko.flows.RealNVP(2, transforms=LAYERS, hidden_features=[HIDDEN] * DEPTH)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(x)


def zuko_model() -> nn.Module:
    return _Zuko()


def normflows_model() -> nn.Module:
    import normflows as nf

    flows = []
    for k in range(LAYERS):
        net = nf.nets.MLP([1] + [HIDDEN] * DEPTH + [2], init_zeros=True)
        flows.append(nf.flows.AffineCouplingBlock(net))
        if k < LAYERS - 1:
            flows.append(nf.flows.Permute(2, mode="swap"))
    base = nf.distributions.DiagGaussian(2, trainable=False)
    return nf.NormalizingFlow(base, flows)


# Diagnostic variants of the course's model, one change each (not run by default; ask for
# them with --models): which of the course's choices costs or gains NLL at 2000 steps.
def course_silu() -> nn.Module:
    """SiLU instead of ReLU in the conditioners (smooth, the course's first choice)."""
    from flowcourse.flows import realnvp

    return realnvp(2, layers=LAYERS, hidden=HIDDEN, depth=DEPTH, activation=nn.SiLU)


def course_sampling_direction() -> nn.Module:
    """The affine map written base to data, ``x = z * exp(s) + t`` (the course: data to base)."""
    # The same family of maps as the course's (s -> -s, t -> -t * exp(-s)), parametrised the
    # other way round: a pure question of optimisation.
    from flowcourse.bijections import AffineCoupling

    class SamplingDirection(AffineCoupling):
        forward = AffineCoupling.inverse
        inverse = AffineCoupling.forward

    model = course_model()
    for coupling in model.bijections:
        coupling.__class__ = SamplingDirection
    return model


def course_unbounded() -> nn.Module:
    """No clamp on the log-scale (``scale_bound=None``), as normflows."""
    from flowcourse.flows import realnvp

    return realnvp(2, layers=LAYERS, hidden=HIDDEN, depth=DEPTH, scale_bound=None)


def course_random_init() -> nn.Module:
    """The conditioners' last layer initialised as torch's default, not zero (as zuko)."""
    model = course_model()
    for coupling in model.bijections:
        coupling.conditioner[-1].reset_parameters()
    return model


MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "course": (course_model, "flowcourse"),
    "zuko": (zuko_model, "zuko"),
    "normflows": (normflows_model, "normflows"),
    "course-silu": (course_silu, "flowcourse"),
    "course-sampling-direction": (course_sampling_direction, "flowcourse"),
    "course-unbounded": (course_unbounded, "flowcourse"),
    "course-random-init": (course_random_init, "flowcourse"),
}
DEFAULT_MODELS = ["course", "zuko", "normflows"]


def available(name: str) -> str | None:
    """None if the model's library imports, else why not."""
    module = MODELS[name][1]
    try:
        __import__(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}); pip install -r requirements-bench.txt"
    return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("zuko", "normflows"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


# --- one run --------------------------------------------------------------------------------


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training points, test points and the exact log-density of the test points (float64)."""
    from flowcourse.data import TwoMoons

    moons = TwoMoons(NOISE)
    train = moons.sample(N_TRAIN, seed=TRAIN_SEED)
    test = moons.sample(N_TEST, seed=TEST_SEED)
    return train, test, moons.log_prob(test)


def train_steps(
    model: nn.Module,
    train: torch.Tensor,
    steps: int,
    seed: int,
    *,
    lr: float = LR,
    cosine: bool = False,
) -> tuple[list[float], int]:
    """Adam on the mean NLL for ``steps`` minibatches; returns (losses, skipped steps).

    ``lr`` and ``cosine`` (the learning rate decays to 0 along a cosine, as ``fit``'s
    ``schedule="cosine"``) serve other parts; this part trains at the constant ``LR``.

    The minibatches are those ``flowcourse.train.fit(..., generator=Generator().manual_seed(
    seed))`` draws, and a step is the same computation, so for a model whose loss stays finite
    the weights end up exactly as ``fit`` leaves them (tests/test_benchmarks.py checks it).
    What differs from ``fit``: no per-step NaN guard (which costs the same for every model);
    a step whose loss is not finite is skipped, as normflows' README loop does, and counted,
    instead of stopping the run.
    """
    from flowcourse.train import _minibatches  # the batches fit draws

    batches = _minibatches(train, BATCH, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None
    losses: list[float] = []
    skipped = 0
    model.train()
    for _ in range(steps):
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = -model.log_prob(batch).mean()
        value = loss.item()
        if not math.isfinite(value):
            skipped += 1
        else:
            loss.backward()
            optimizer.step()
            losses.append(value)
        if scheduler is not None:
            scheduler.step()
    return losses, skipped


def timed_training(
    model: nn.Module, train: torch.Tensor, test: torch.Tensor, steps: int, seed: int, **options
) -> tuple[list[float], dict[str, float], torch.Tensor]:
    """:func:`train_steps` timed, then the test points' log-densities in float64.

    Returns (losses, ``{"cpu_ms_per_step", "wall_ms_per_step", "skipped_steps"}``,
    ``log_q: (n_test,)``); ``options`` go to :func:`train_steps`.
    """
    cpu0, wall0 = time.process_time(), time.perf_counter()
    losses, skipped = train_steps(model, train, steps, seed, **options)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    timing = {
        "cpu_ms_per_step": 1000 * cpu / steps,
        "wall_ms_per_step": 1000 * wall / steps,
        "skipped_steps": skipped,
    }
    model.eval()
    with torch.no_grad():
        log_q = torch.cat([model.log_prob(chunk) for chunk in test.split(4096)]).double()
    return losses, timing, log_q


def train_and_test(
    name: str,
    seed: int,
    steps: int,
    train: torch.Tensor,
    test: torch.Tensor,
    exact_log_prob: torch.Tensor,
) -> dict[str, object]:
    torch.manual_seed(seed)
    model = MODELS[name][0]()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row: dict[str, object] = {"model": name, "seed": seed, "steps": steps, "params": params}
    losses, timing, log_q = timed_training(model, train, test, steps, seed)
    row |= timing
    tail = losses[-max(1, steps // 20) :]
    row["final_train_loss"] = sum(tail) / len(tail) if tail else math.nan
    if not bool(torch.isfinite(log_q).all()):
        bad = int((~torch.isfinite(log_q)).sum())
        return row | {
            "test_nll": math.nan,
            "exact_nll": math.nan,
            "gap": math.nan,
            "status": f"diverged: {bad} test points without a finite density",
        }
    return row | {
        "test_nll": float(-log_q.mean()),
        "exact_nll": float(-exact_log_prob.mean()),
        "gap": float((exact_log_prob - log_q).mean()),
        "status": "ok",
    }


def run(
    results: Path,
    *,
    seeds: list[int],
    steps: int = 2000,
    models: list[str] | None = None,
    resume: bool = False,
) -> None:
    out = ResultFile(results / f"{PART}.csv", COLUMNS, KEY, resume=resume)
    names = []
    for name in models or DEFAULT_MODELS:
        why = available(name)
        if why:
            log(f"realnvp: skipping {name}: {why}")
        else:
            names.append(name)
    train, test, exact = data()
    # Warm-up, untimed: the first model trained in a process pays one-off costs (lazy
    # initialisation, allocator growth) that would otherwise land on whichever model is first.
    for name in names:
        train_and_test(name, 0, 20, train, test[:256], exact[:256])
    # Seed-major: the models of one seed run back to back, under the same machine load, and
    # each seed starts with another model.
    for i, seed in enumerate(seeds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if out.done(model=name, seed=seed, steps=steps):
                continue
            row = train_and_test(name, seed, steps, train, test, exact)
            out.add(row)
            log(
                f"realnvp {name} seed {seed}: test NLL {row['test_nll']:.4f}, gap "
                f"{row['gap']:.4f}, {row['cpu_ms_per_step']:.2f} CPU ms/step, "
                f"{row['params']} params, {row['skipped_steps']} steps skipped ({row['status']})"
            )


def summarise(rows: list[dict[str, str]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["steps"]), []).append(r)
    lines = []
    course_ms = {
        steps: [number(r["cpu_ms_per_step"]) for r in g if r["status"] == "ok"]
        for (m, steps), g in groups.items()
        if m == "course"
    }
    for (model, steps), g in groups.items():
        ok = [r for r in g if r["status"] == "ok"]
        nll = [number(r["test_nll"]) for r in ok]
        gap = [number(r["gap"]) for r in ok]
        ms = [number(r["cpu_ms_per_step"]) for r in ok]
        by_seed = " / ".join(
            f"{number(r['test_nll']):.3f}" if r["status"] == "ok" else "failed"
            for r in sorted(g, key=lambda r: int(r["seed"]))
        )
        skipped = sum(int(number(r["skipped_steps"]) or 0) for r in g if r["skipped_steps"])
        ratio = ""
        base = finite(course_ms.get(steps, []))
        if base and finite(ms):
            ratio = f"{_median(ms) / _median(base):.2f}"
        lines.append(
            [
                model,
                steps,
                f"{len(ok)}/{len(g)}",
                mean_sd(nll, 3),
                by_seed,
                mean_sd(gap, 3) + (f" ({min(gap):.3f}-{max(gap):.3f})" if len(gap) > 1 else ""),
                spread(ms, 2),
                ratio,
                g[0]["params"],
                skipped,
                REFERENCE_NOTE.get(model, "") if steps == "2000" else "",
            ]
        )
    failures = [
        f"{r['model']} seed {r['seed']}: {r['status']}" for r in rows if r["status"] != "ok"
    ]
    exact = finite(number(r["exact_nll"]) for r in rows)
    header = [
        "model",
        "steps",
        "runs ok",
        "test NLL mean ± sd",
        "test NLL by seed",
        "gap mean ± sd (min-max)",
        "CPU ms/step median (min-max)",
        "ms/step vs course",
        "params",
        "skipped steps",
        "reference",
    ]
    text = (
        f"Two moons (noise {NOISE}), {N_TRAIN} training points (seed {TRAIN_SEED}), {N_TEST} test "
        f"points (seed {TEST_SEED}), raw coordinates; {LAYERS} affine couplings, conditioner "
        f"{DEPTH}x{HIDDEN}; Adam lr {LR:g}, batch {BATCH}; the same loop for every model "
        "(the steps and minibatches of `flowcourse.train.fit`, whose weights it reproduces "
        "exactly, minus its NaN guard; a step with a non-finite loss is skipped and counted, "
        "as normflows' own loop does); one torch thread. Seeds set the initial weights and "
        "the minibatch order. Gap = test NLL minus the exact NLL of the same test points"
        + (f" ({exact[0]:.4f} nats; the entropy is 0.2892)" if exact else "")
        + ". Differences between the libraries' layers are listed in `benchmarks/realnvp.py`."
        "\n\n" + markdown_table(header, lines)
    )
    variants = [m for m, _ in groups if m not in DEFAULT_MODELS and m in MODELS]
    if variants:
        text += (
            "\n\nDiagnostic variants of the course's model, one change each: "
            + "; ".join(
                f"{m}: {(MODELS[m][0].__doc__ or '').strip().rstrip('.')}"
                for m in dict.fromkeys(variants)
            )
            + "."
        )
    if failures:
        text += "\n\nFailed runs: " + "; ".join(failures) + "."
    return text


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(finite(values))
