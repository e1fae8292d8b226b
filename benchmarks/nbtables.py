"""Tables a notebook computes, re-measured over seeds (see :mod:`benchmarks.nbseed`).

Each part names a notebook and the variables that hold its results. For every seed, a copy of
the notebook runs with ``flowcourse.setup(seed=k)`` and the variables are read back. The CSV is
long (``seed, row, metric, value``) so that it does not depend on the table's columns; the
summary pivots it back: one line per row of the notebook's table, one column per metric,
``mean ± sd (min-max)`` over the seeds.

How a variable becomes rows and metrics:

- a DataFrame (or a list of dicts): one row per record, labelled by its first text column
  (e.g. the posterior's name); its numeric columns are the metrics;
- a dict of dicts: the outer keys are rows, the inner numeric values metrics;
- a number, or a dict of numbers (metrics ``name[key]``): metrics of a row named ``-``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ROOT, ResultFile, finite, log, markdown_table, mean_sd, number

COLUMNS = ["seed", "row", "metric", "value", "status"]
KEY = ["seed", "row", "metric"]


@dataclass(frozen=True)
class NotebookTable:
    part: str
    notebook: str  # relative to the repository root
    variables: list[str]
    description: str
    # Metrics in the order to show them (others follow); the rest of the notebook's names.
    metric_order: list[str] = field(default_factory=list)


# Notebook 07's tables. posterior_table: one row per posterior (diagonal, planar, IAF) with its
# test ELBO, IWAE(1000), exact log p(x) from the latent grid, and the variational gap
# log p(x) - ELBO >= 0 with log p(x) from IWAE (gap_iwae) or the grid (gap_exact).
# gap_decomposition: for the diagonal VAE's decoder, the gap of the encoder's q, of the best
# diagonal Gaussian per image and of a flow per image (Cremer, Li & Duvenaud 2018).
VAE_NOTEBOOK = "notebooks/07_vae_flow_posterior.ipynb"
VAE_VARIABLES: list[str] = ["posterior_table"]
VAE_GAP_VARIABLES: list[str] = ["gap_decomposition"]

# Notebook 04's gap table: one row per 2-D dataset (test NLL, exact NLL, gap).
REALNVP_NOTEBOOK = "notebooks/04_realnvp_2d.ipynb"
REALNVP_VARIABLES: list[str] = ["gap_table"]

# Notebook 05's table: one row per model of the digits (nats per image, bits per dim), and
# section 12's: one row per novel group (unseen 1s, 7s) with its AUROC from the NLL of a flow
# trained without them, alone and corrected for complexity.
DIGITS_NOTEBOOK = "notebooks/05_realnvp_digits.ipynb"
DIGITS_VARIABLES: list[str] = ["bpd_table", "ood_table"]

# Notebook 09's table: flow matching and maximum likelihood on two moons (gap at 32 RK4 steps,
# its standard error, grid mass), and the adaptive solver's gap for the flow-matching field.
CONTINUOUS_NOTEBOOK = "notebooks/09_continuous_flows.ipynb"
CONTINUOUS_VARIABLES: list[str] = ["summary_table", "adaptive_gap"]

# Notebook 10's score: flow matching on the 17-level digits (test nats per image, its standard
# error, bits per dimension), its lead over notebook 05's RealNVP in nats per image and in
# combined standard errors, and the CPU seconds of training and scoring.
CAPSTONE_NOTEBOOK = "notebooks/10_flow_matching_digits.ipynb"
CAPSTONE_VARIABLES: list[str] = [
    "fm_nats",
    "fm_se",
    "fm_bits",
    "lead",
    "lead_se",
    "train_cpu",
    "score_cpu",
]

TABLES = {
    "vae": NotebookTable(
        "vae",
        VAE_NOTEBOOK,
        VAE_VARIABLES,
        "Notebook 07's posterior table on binarised 8x8 digits, nats per test image: test ELBO, "
        "IWAE with k = 1000, exact log p(x) on the latent grid, and the variational gap "
        "log p(x) - ELBO (>= 0) with log p(x) from IWAE(1000) (`gap_iwae`) or the grid "
        "(`gap_exact`). Each seed runs a copy of the notebook with `flowcourse.setup(seed=k)`.",
        metric_order=["elbo", "iwae", "exact", "gap_iwae", "gap_exact"],
    ),
    "vae_gap": NotebookTable(
        "vae_gap",
        VAE_NOTEBOOK,
        VAE_GAP_VARIABLES,
        "Notebook 07's gap decomposition (Cremer, Li & Duvenaud 2018) for the decoder of the "
        "diagonal VAE, on the first 48 test images, nats per image: ELBO and gap "
        "log p(x) - ELBO (exact log p(x) on the grid) of the encoder's diagonal Gaussian, of "
        "the best diagonal Gaussian per image (its approximation gap; the difference is the "
        "amortisation gap) and of a flow per image (4 affine couplings); the share of the "
        "Gaussian's approximation gap that the flow removes (target: at least 40%). The same "
        "runs of the notebook as the `vae` part.",
        metric_order=["elbo", "gap", "amortisation_gap", "approx_gap_removed_pct"],
    ),
    "nb04": NotebookTable(
        "nb04",
        REALNVP_NOTEBOOK,
        REALNVP_VARIABLES,
        "Notebook 04's RealNVP on two moons and its second dataset, over seeds: each seed runs "
        "a copy of the notebook with `flowcourse.setup(seed=k)`.",
    ),
    "nb05": NotebookTable(
        "nb05",
        DIGITS_NOTEBOOK,
        DIGITS_VARIABLES,
        "Notebook 05's models of the 17-level 8x8 digits (test nats per image and bits per "
        "dimension), and the AUROC with which a flow trained without 1s and 7s tells them from "
        "its own test digits (from the NLL alone, and corrected for complexity with zlib), over "
        "seeds: each seed runs a copy of the notebook with `flowcourse.setup(seed=k)`.",
    ),
    "nb09": NotebookTable(
        "nb09",
        CONTINUOUS_NOTEBOOK,
        CONTINUOUS_VARIABLES,
        "Notebook 09's flow-matching and maximum-likelihood continuous flows on two moons (gap "
        "to the exact density in nats, RK4 with 32 steps, and the mass on a grid), over seeds: "
        "each seed runs a copy of the notebook with `flowcourse.setup(seed=k)`.",
    ),
    "nb10": NotebookTable(
        "nb10",
        CAPSTONE_NOTEBOOK,
        CAPSTONE_VARIABLES,
        "Notebook 10's flow matching on the 17-level 8x8 digits (test nats per image under "
        "notebook 05's bound with one noise draw inside the log, its standard error over "
        "images, bits per dimension), its lead over notebook 05's RealNVP (nats per image; "
        "`lead_se` combines both standard errors, RealNVP's recorded by notebook 05), "
        "and the CPU seconds of training and of scoring the test images, over seeds: each "
        "seed runs a copy of the notebook with `flowcourse.setup(seed=k)`.",
    ),
}


def flatten(results: dict) -> list[tuple[str, str, float]]:
    """``{variable: value}`` -> ``[(row, metric, value)]`` (see the module docstring)."""
    out: list[tuple[str, str, float]] = []
    for name, value in results.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) or value is None:
            out.append(("-", name, _float(value)))
        elif isinstance(value, dict):
            if all(isinstance(v, dict) for v in value.values()):
                for row, inner in value.items():
                    out += [(str(row), m, _float(v)) for m, v in inner.items() if _numeric(v)]
            else:
                out += [("-", f"{name}[{k}]", _float(v)) for k, v in value.items() if _numeric(v)]
        elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            for i, record in enumerate(value):
                labels = [str(v) for v in record.values() if isinstance(v, str)]
                row = labels[0] if labels else f"{name}[{i}]"
                out += [(row, m, _float(v)) for m, v in record.items() if _numeric(v)]
        else:
            raise ValueError(
                f"variable {name!r} is a {type(value).__name__}; expected a number, a dict or "
                "a table (DataFrame / list of dicts)"
            )
    return out


def _numeric(v: object) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _float(v: object) -> float:
    return math.nan if v is None else float(v)


# Within one command, a notebook runs once per seed for every part that reads it (07 holds
# the `vae` and `vae_gap` tables): the first part asks for all of their variables.
_RUNS: dict[tuple[str, int], tuple[dict, list[str]]] = {}


def _variables(table: NotebookTable, path: Path, seed: int) -> tuple[dict, list[str]]:
    """``table``'s variables from a seeded run of its notebook, and the run's failed cells."""
    from benchmarks.nbseed import notebook_results

    key = (str(path.resolve()), seed)
    if key not in _RUNS:
        names = [v for t in TABLES.values() if t.notebook == table.notebook for v in t.variables]
        names = list(dict.fromkeys(names + table.variables))
        failures: list[str] = []
        values = notebook_results(path, seed, names, failures=failures)
        _RUNS[key] = (values, failures)
    values, failures = _RUNS[key]
    return {name: values[name] for name in table.variables}, list(failures)


def run(table: NotebookTable, results: Path, *, seeds: list[int], resume: bool = False) -> None:
    path = ROOT / table.notebook
    if not table.variables:
        log(
            f"{table.part}: skipped: no result variables configured for {table.notebook} "
            f"(set them in benchmarks/nbtables.py)"
        )
        return
    if not path.exists():
        log(f"{table.part}: skipped: {table.notebook} does not exist yet")
        return
    out = ResultFile(results / f"{table.part}.csv", COLUMNS, KEY, resume=resume)
    for seed in seeds:
        if out.done(seed=seed):
            continue
        try:
            values, failures = _variables(table, path, seed)
            # Values are kept when a check cell failed (a tolerance this seed misses), and
            # the failure is reported with them.
            status = "ok" if not failures else "ok, but " + "; ".join(failures)
            rows = [
                {"seed": seed, "row": r, "metric": m, "value": v, "status": status}
                for r, m, v in flatten(values)
            ]
        except Exception as exc:  # a failing run is a result
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
            rows = [
                {
                    "seed": seed,
                    "row": "-",
                    "metric": "-",
                    "value": math.nan,
                    "status": f"error: {last}",
                }
            ]
        out.add(*rows)
        log(f"{table.part} seed {seed}: {len(rows)} values ({rows[0]['status']})")


def summarise(table: NotebookTable, rows: list[dict[str, str]]) -> str:
    ok = [r for r in rows if r["status"].startswith("ok")]
    seeds = sorted({r["seed"] for r in ok}, key=int)
    metrics: list[str] = []
    for m in table.metric_order + [r["metric"] for r in ok]:
        if m not in metrics and any(r["metric"] == m for r in ok):
            metrics.append(m)
    row_names: list[str] = list(dict.fromkeys(r["row"] for r in ok))
    values: dict[tuple[str, str], list[float]] = {}
    for r in ok:
        values.setdefault((r["row"], r["metric"]), []).append(number(r["value"]))
    lines = []
    for name in row_names:
        cells = [name]
        for m in metrics:
            v = finite(values.get((name, m), []))
            cells.append(
                f"{mean_sd(v, 3)} ({min(v):.3f} to {max(v):.3f})" if len(v) > 1 else mean_sd(v, 3)
            )
        lines.append(cells)
    text = (
        f"{table.description} Seeds: {', '.join(seeds) or 'none'}. "
        "Cells: mean ± sd (min to max) over the seeds.\n\n"
        + markdown_table(["row", *metrics], lines)
    )
    failures = list(
        dict.fromkeys(f"seed {r['seed']}: {r['status']}" for r in rows if r["status"] != "ok")
    )
    if failures:
        text += "\n\nFailures (cells that raised; values of a run that went on are kept): " + (
            "; ".join(failures) + "."
        )
    return text
