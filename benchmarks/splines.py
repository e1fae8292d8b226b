"""Notebook 08's flows over seeds, against RealNVP and against zuko's neural spline flow.

Data as in notebooks 04 and 08: two moons (noise 0.05) and eight Gaussians from
``flowcourse.data``, 10k training points (seed 1) and 20k test points (seed 2), raw
coordinates. Every model trains with the same loop (:func:`benchmarks.realnvp.train_steps`:
``fit``'s minibatches and steps, Adam, batch 256, the learning rate decaying to 0 along a
cosine), each with the recipe of the notebook it comes from; the seed sets the initial weights
and the minibatch order. One torch thread.

- ``spline``: the package's ``spline_flow(2, layers=4, bins=8, bound=4)``, conditioners 2x64,
  1500 steps at lr 5e-3 (notebook 08).
- ``zuko-nsf``: ``zuko.flows.NSF(2, bins=8, transforms=4, hidden_features=(64, 64))``, zuko's
  defaults otherwise (autoregressive transforms, splines on [-5, 5]); the spline's recipe.
- ``maf``: the package's ``maf(2, layers=5)``, MADE 2x64, 2000 steps at lr 5e-3 (notebook 08).
- ``realnvp``: ``realnvp(2, layers=8)``, conditioners 2x64, notebook 04's recipes: 3000 steps
  at lr 3e-3 on two moons, 1000 steps at lr 1e-2 on eight Gaussians.
- ``spline-04``: the spline flow trained with RealNVP's recipes, so that the two families also
  meet at equal steps and learning rates.

Measured per run: test NLL, gap = test NLL - exact NLL on the same test points with its
standard error, CPU and wall ms per training step, parameters. Pairs trained in the same run
are also compared point by point on the same test points: ``paired_diff`` is the model's gap
minus its partner's (spline against RealNVP, zuko's NSF against the spline), with the standard
error of the per-point differences of the two log-densities.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import ResultFile, log, markdown_table, mean_sd, number, spread
from benchmarks.realnvp import timed_training

PART = "splines"
COLUMNS = [
    "model",
    "data",
    "seed",
    "steps",
    "lr",
    "params",
    "test_nll",
    "exact_nll",
    "gap",
    "gap_se",
    "paired_with",
    "paired_diff",
    "paired_diff_se",
    "cpu_ms_per_step",
    "wall_ms_per_step",
    "skipped_steps",
    "status",
]
KEY = ["model", "data", "seed", "steps"]

N_TRAIN, N_TEST = 10_000, 20_000
TRAIN_SEED, TEST_SEED = 1, 2
DATASETS = ["moons", "8gaussians"]


def _spline() -> nn.Module:
    from flowcourse.splines import spline_flow

    return spline_flow(2, layers=4, bins=8, bound=4.0, hidden=64, depth=2)


class _ZukoNSF(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import zuko

        self.flow = zuko.flows.NSF(2, bins=8, transforms=4, hidden_features=(64, 64))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(x)


def _maf() -> nn.Module:
    from flowcourse.autoregressive import maf

    return maf(2, layers=5, hidden=64, depth=2)


def _realnvp() -> nn.Module:
    from flowcourse.flows import realnvp

    return realnvp(2, layers=8, hidden=64, depth=2)


# name -> (factory, {data: (steps, lr)}, library)
MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, tuple[int, float]], str]] = {
    "spline": (_spline, {"moons": (1500, 5e-3), "8gaussians": (1500, 5e-3)}, "flowcourse"),
    "zuko-nsf": (_ZukoNSF, {"moons": (1500, 5e-3), "8gaussians": (1500, 5e-3)}, "zuko"),
    "maf": (_maf, {"moons": (2000, 5e-3), "8gaussians": (2000, 5e-3)}, "flowcourse"),
    "realnvp": (_realnvp, {"moons": (3000, 3e-3), "8gaussians": (1000, 1e-2)}, "flowcourse"),
    "spline-04": (_spline, {"moons": (3000, 3e-3), "8gaussians": (1000, 1e-2)}, "flowcourse"),
}
# model -> the model it is compared with point by point (both trained in the same run)
PAIRS = {"spline": "realnvp", "spline-04": "realnvp", "zuko-nsf": "spline"}


def data(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training points, test points and the exact log-density of the test points (float64)."""
    from flowcourse.data import EightGaussians, TwoMoons

    source = TwoMoons(0.05) if name == "moons" else EightGaussians()
    train = source.sample(N_TRAIN, seed=TRAIN_SEED)
    test = source.sample(N_TEST, seed=TEST_SEED)
    return train, test, source.log_prob(test)


def available(name: str) -> str | None:
    library = MODELS[name][2]
    try:
        __import__(library)
    except ImportError as exc:
        return f"{library} is not installed ({exc}); pip install -r requirements.txt"
    return None


def train_and_test(
    name: str, data_name: str, seed: int, train: torch.Tensor, test: torch.Tensor
) -> tuple[dict[str, object], torch.Tensor | None]:
    """One run: the CSV row (without the exact density's columns) and log q at the test points."""
    factory, recipes, _ = MODELS[name]
    steps, lr = recipes[data_name]
    torch.manual_seed(seed)
    model = factory()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row: dict[str, object] = {
        "model": name,
        "data": data_name,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "params": params,
    }
    _, timing, log_q = timed_training(model, train, test, steps, seed, lr=lr, cosine=True)
    row |= timing
    if not bool(torch.isfinite(log_q).all()):
        bad = int((~torch.isfinite(log_q)).sum())
        return row | {"status": f"diverged: {bad} test points without a finite density"}, None
    return row | {"status": "ok"}, log_q


def _scores(row: dict[str, object], log_q: torch.Tensor | None, exact: torch.Tensor) -> None:
    row["exact_nll"] = float(-exact.mean())
    for key in ("test_nll", "gap", "gap_se", "paired_with", "paired_diff", "paired_diff_se"):
        row.setdefault(key, math.nan if key != "paired_with" else "")
    if log_q is not None:
        diff = exact - log_q
        row["test_nll"] = float(-log_q.mean())
        row["gap"] = float(diff.mean())
        row["gap_se"] = float(diff.std() / math.sqrt(len(diff)))


def run(
    results: Path,
    *,
    seeds: list[int],
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    resume: bool = False,
) -> None:
    out = ResultFile(results / f"{PART}.csv", COLUMNS, KEY, resume=resume)
    names = []
    for name in models or list(MODELS):
        why = available(name)
        if why:
            log(f"splines: skipping {name}: {why}")
        else:
            names.append(name)
    for data_name in datasets or DATASETS:
        train, test, exact = data(data_name)
        for seed in seeds:
            # Pairs are compared point by point, so a seed's models run together, or not at all.
            if all(
                out.done(model=n, data=data_name, seed=seed, steps=MODELS[n][1][data_name][0])
                for n in names
            ):
                continue
            rows, log_qs = {}, {}
            for name in names:
                row, log_q = train_and_test(name, data_name, seed, train, test)
                _scores(row, log_q, exact)
                rows[name], log_qs[name] = row, log_q
                log(
                    f"splines {name} on {data_name}, seed {seed}: gap {row['gap']:.4f} ± "
                    f"{row['gap_se']:.4f}, {row['cpu_ms_per_step']:.2f} CPU ms/step "
                    f"({row['status']})"
                )
            for name, partner in PAIRS.items():
                if log_qs.get(name) is None or log_qs.get(partner) is None:
                    continue
                diff = log_qs[partner] - log_qs[name]  # = this gap - partner's gap, per point
                rows[name] |= {
                    "paired_with": partner,
                    "paired_diff": float(diff.mean()),
                    "paired_diff_se": float(diff.std() / math.sqrt(len(diff))),
                }
            out.add(*rows.values())


def summarise(rows: list[dict[str, str]]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = []
    ms_of = {(r["data"], r["model"], r["seed"]): number(r["cpu_ms_per_step"]) for r in ok}
    for data_name in DATASETS:
        for name in MODELS:
            group = [r for r in rows if r["data"] == data_name and r["model"] == name]
            if not group:
                continue
            good = [r for r in group if r["status"] == "ok"]
            gaps = [number(r["gap"]) for r in good]
            ms = [number(r["cpu_ms_per_step"]) for r in good]
            by_seed = " / ".join(
                f"{number(r['gap']):.3f} ± {number(r['gap_se']):.3f}"
                if r["status"] == "ok"
                else "failed"
                for r in sorted(group, key=lambda r: int(r["seed"]))
            )
            # Time relative to the spline flow's, seed by seed (same data, same machine load).
            ratios = [
                ms_of[(data_name, name, r["seed"])] / ms_of[(data_name, "spline", r["seed"])]
                for r in good
                if (data_name, "spline", r["seed"]) in ms_of
            ]
            lines.append(
                [
                    data_name,
                    name,
                    f"{group[0]['steps']} at {number(group[0]['lr']):g}",
                    f"{len(good)}/{len(group)}",
                    mean_sd(gaps, 3)
                    + (f" ({min(gaps):.3f}-{max(gaps):.3f})" if len(gaps) > 1 else ""),
                    by_seed,
                    spread(ms, 2),
                    f"{statistics.median(ratios):.2f}" if ratios else "",
                    group[0]["params"],
                ]
            )
    header = [
        "data",
        "model",
        "steps at lr (cosine)",
        "runs ok",
        "gap mean ± sd (min-max)",
        "gap ± se by seed",
        "CPU ms/step median (min-max)",
        "ms/step vs spline",
        "params",
    ]
    text = (
        f"Two moons (noise 0.05) and eight Gaussians, {N_TRAIN} training points (seed "
        f"{TRAIN_SEED}), {N_TEST} test points (seed {TEST_SEED}), raw coordinates; each model "
        "with its notebook's recipe (the spline flow's for zuko's NSF), Adam, batch 256, the "
        "learning rate decaying to 0 along a cosine; the same loop for every model; one torch "
        "thread. Seeds set the initial weights and the minibatch order. Gap = test NLL minus "
        "the exact NLL of the same test points, in nats. Models and recipes: "
        "`benchmarks/splines.py`.\n\n" + markdown_table(header, lines)
    )
    paired = []
    for data_name in DATASETS:
        for name, partner in PAIRS.items():
            group = [
                r
                for r in ok
                if r["data"] == data_name and r["model"] == name and r["paired_with"] == partner
            ]
            if not group:
                continue
            group.sort(key=lambda r: int(r["seed"]))
            diffs = [(number(r["paired_diff"]), number(r["paired_diff_se"])) for r in group]
            below = sum(d < -3 * se for d, se in diffs)
            not_worse = sum(d <= 3 * se for d, se in diffs)
            paired.append(
                [
                    data_name,
                    f"{name} - {partner}",
                    " / ".join(f"{d:+.4f} ± {se:.4f}" for d, se in diffs),
                    f"{below}/{len(diffs)}",
                    f"{not_worse}/{len(diffs)}",
                ]
            )
    if paired:
        text += (
            "\n\nPaired on the same test points, seed by seed: the difference of the two gaps "
            "(nats; negative: the first model is closer to the exact density) and the standard "
            "error of the per-point differences.\n\n"
            + markdown_table(
                [
                    "data",
                    "gap difference",
                    "by seed",
                    "seeds below by > 3 se",
                    "seeds not worse by > 3 se",
                ],
                paired,
            )
        )
    failures = [
        f"{r['model']} on {r['data']} seed {r['seed']}: {r['status']}"
        for r in rows
        if r["status"] != "ok"
    ]
    if failures:
        text += "\n\nFailed runs: " + "; ".join(failures) + "."
    exact = {r["data"]: number(r["exact_nll"]) for r in rows}
    if exact:
        text += (
            "\n\nExact NLL of the test points: "
            + ", ".join(f"{d} {v:.4f} nats" for d, v in exact.items() if not math.isnan(v))
            + "."
        )
    return text
