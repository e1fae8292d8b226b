"""The site's own pages, written from what the repository holds: nothing here is retyped.

The landing page's course map lists every notebook of ``notebooks/`` (title from its first
heading), its budget (``benchmarks.runtime.BUDGETS``), its measured CPU time
(``benchmarks/results/runtime.csv``) and its headline numbers, read from the numbers the
notebook recorded (``notebooks/results/NN_name.json``, written by ``flowcourse.results.record``)
and from the benchmarks over seeds (``benchmarks/results/*.csv``). Which numbers are headlines is
an editorial choice, made once in ``HEADLINES`` below; a notebook with none gets none.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = "https://github.com/flowcourse/flowcourse"
BRANCH = "main"


@dataclass(frozen=True)
class Bench:
    """A number measured by ``make bench``: ``column`` of the rows of ``file`` that match
    ``where`` (status ok), one per seed or repeat, shown as mean ± sd."""

    file: str
    where: dict[str, str]
    column: str = "value"


@dataclass(frozen=True)
class Headline:
    label: str
    unit: str
    result: str | None = None  # a key of notebooks/results/<notebook>.json
    bench: Bench | None = None
    digits: int = 3


# Notebook (file stem) -> its headline numbers, in the order shown.
HEADLINES: dict[str, list[Headline]] = {
    "04_realnvp_2d": [
        Headline(
            "RealNVP's gap to the data, two moons",
            "nats",
            result="moons_gap",
            bench=Bench("nb04.csv", {"row": "two moons (noise 0.05)", "metric": "gap"}),
        ),
        Headline(
            "eight Gaussians",
            "nats",
            result="eight_gaussians_gap",
            bench=Bench("nb04.csv", {"row": "eight Gaussians", "metric": "gap"}),
        ),
    ],
    "05_realnvp_digits": [
        Headline(
            "RealNVP on 8x8 digits",
            "bits/dim",
            bench=Bench(
                "nb05.csv",
                {"row": "RealNVP, 8 checkerboard couplings", "metric": "bits_per_dim"},
            ),
        ),
        Headline(
            "independent categorical pixels",
            "bits/dim",
            bench=Bench(
                "nb05.csv",
                {"row": "independent categorical (add-one)", "metric": "bits_per_dim"},
            ),
        ),
    ],
    "08_autoregressive_spline_flows": [
        Headline(
            "spline flow's gap to the data, eight Gaussians",
            "nats",
            result="spline_eight_gaussians_gap",
        ),
        Headline("MAF, two moons", "nats", result="maf_moons_gap"),
    ],
    "09_continuous_flows": [
        Headline("flow matching's gap to the data", "nats", result="fm_gap"),
        Headline("maximum-likelihood CNF in the same time", "nats", result="ml_gap"),
    ],
    "10_flow_matching_digits": [
        Headline("flow matching on 8x8 digits", "bits/dim", result="fm_bits_per_dim"),
    ],
    "07_vae_flow_posterior": [
        Headline(
            "test ELBO, diagonal posterior",
            "nats",
            bench=Bench("vae.csv", {"row": "diagonal", "metric": "elbo"}),
            digits=2,
        ),
        Headline(
            "IAF posterior",
            "nats",
            bench=Bench("vae.csv", {"row": "IAF (K=4)", "metric": "elbo"}),
            digits=2,
        ),
    ],
}


@dataclass
class Notebook:
    path: Path  # relative to the repository root
    title: str
    lead: str  # the first paragraph after the title

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def short_title(self) -> str:
        """The title up to its colon: '04 · RealNVP in 2D'."""
        return self.title.split(":")[0].strip()

    @property
    def number(self) -> str:
        match = re.match(r"(\d+)", self.stem)
        return match.group(1) if match else ""


def read_notebook(root: Path, path: Path) -> Notebook:
    """Title and first paragraph of a notebook, from its first markdown cell."""
    nb = json.loads((root / path).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        lines = "".join(cell.get("source", "")).strip().splitlines()
        if not lines or not lines[0].startswith("# "):
            break
        title = lines[0][2:].strip()
        paragraph: list[str] = []
        for line in lines[1:]:
            if line.strip():
                if line.startswith("#"):
                    break
                paragraph.append(line.strip())
            elif paragraph:
                break
        return Notebook(path, title, " ".join(paragraph))
    raise ValueError(f"{path}: the first cell should be markdown starting with '# title'")


def _rows(root: Path, name: str) -> list[dict[str, str]]:
    path = root / "benchmarks" / "results" / name
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def bench_values(root: Path, bench: Bench) -> list[float]:
    """The matching values (one per seed or repeat), status ok."""
    values = []
    for row in _rows(root, bench.file):
        if row.get("status", "ok") != "ok":
            continue
        if all(row.get(k) == v for k, v in bench.where.items()):
            value = float(row[bench.column])
            if math.isfinite(value):
                values.append(value)
    return values


def recorded(root: Path, stem: str) -> dict[str, float] | None:
    """What a notebook recorded with ``flowcourse.results.record``; None if nothing yet."""
    path = root / "notebooks" / "results" / f"{stem}.json"
    if not path.exists():
        return None
    return {k: float(v) for k, v in json.loads(path.read_text()).items()}


def fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".replace("-", "−")


def headline_text(root: Path, stem: str, problems: list[str]) -> str:
    """The headline cell of a notebook's row in the course map (empty when it has none)."""
    parts = []
    numbers = recorded(root, stem)
    for h in HEADLINES.get(stem, []):
        shown = []
        if h.result is not None and numbers is not None:
            if h.result in numbers:
                shown.append(f"{fmt(numbers[h.result], h.digits)} {h.unit}")
            else:
                problems.append(
                    f"notebooks/results/{stem}.json has no '{h.result}' (website/pages.py "
                    "HEADLINES names it): record it in the notebook or update HEADLINES"
                )
        if h.bench is not None:
            values = bench_values(root, h.bench)
            if len(values) >= 2:
                mean, sd = statistics.fmean(values), statistics.stdev(values)
                if fmt(sd, h.digits) == fmt(0.0, h.digits):  # a baseline no seed changes
                    text = f"{fmt(mean, h.digits)} {h.unit} on each of {len(values)} seeds"
                else:
                    spread = f"{fmt(mean, h.digits)} ± {fmt(sd, h.digits)} {h.unit}"
                    text = f"{spread} over {len(values)} seeds"
                shown.append(f"({text})" if shown else text)
            elif len(values) == 1:
                shown.append(f"{fmt(values[0], h.digits)} {h.unit}" + (" (bench)" if shown else ""))
            else:
                problems.append(
                    f"benchmarks/results/{h.bench.file} has no row {h.bench.where} "
                    "(website/pages.py HEADLINES names it): re-run make bench or update HEADLINES"
                )
        if shown:
            parts.append(f"{h.label}: " + " ".join(shown))
    return "<br>".join(parts)


def runtimes(root: Path) -> dict[str, float]:
    """Median CPU seconds per notebook path, from benchmarks/results/runtime.csv."""
    by_nb: dict[str, list[float]] = {}
    for row in _rows(root, "runtime.csv"):
        if row.get("status", "ok") == "ok":
            by_nb.setdefault(row["notebook"], []).append(float(row["cpu_s"]))
    return {nb: statistics.median(v) for nb, v in by_nb.items()}


def budgets() -> dict[str, float]:
    """CPU budget (s) by lesson number, from benchmarks.runtime (the one place they live)."""
    try:
        from benchmarks.runtime import BUDGETS
    except ImportError:
        return {}
    return {str(k): float(v) for k, v in BUDGETS.items()}


def _machine(root: Path, part: str) -> dict[str, str]:
    path = root / "benchmarks" / "results" / "machine.json"
    return json.loads(path.read_text()).get(part, {}) if path.exists() else {}


def binder_url(path: str) -> str:
    gh = REPOSITORY.removeprefix("https://github.com/")
    return f"https://mybinder.org/v2/gh/{gh}/{BRANCH}?urlpath=lab/tree/{path}"


def _total(seconds: float, known: int, lessons: int) -> str:
    if known == lessons:
        return f"{seconds:.0f} s"
    return f"{seconds:.0f} s for {known} of {lessons} lessons" if known else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def landing_page(
    root: Path, lessons: list[Notebook], exercises: list[Notebook]
) -> tuple[str, list[str]]:
    """The landing page (MyST markdown) and the problems met reading its numbers."""
    problems: list[str] = []
    cpu = runtimes(root)
    budget = budgets()
    machine = _machine(root, "runtime")
    rows = []
    total_budget = total_cpu = 0.0
    n_budget = n_cpu = 0
    for nb in lessons:
        b = budget.get(nb.number)
        c = cpu.get(nb.path.as_posix())
        total_budget, n_budget = total_budget + (b or 0.0), n_budget + (b is not None)
        total_cpu, n_cpu = total_cpu + (c or 0.0), n_cpu + (c is not None)
        rows.append(
            f"| [{_cell(nb.short_title)}]({nb.path.as_posix()}) "
            f"| {f'{b:.0f} s' if b else '—'} | {f'{c:.0f} s' if c is not None else '—'} "
            f"| {_cell(headline_text(root, nb.stem, problems)) or '—'} |"
        )
    n = len(lessons)
    totals = f"{_total(total_budget, n_budget, n)} | {_total(total_cpu, n_cpu, n)}"
    when = ""
    if machine:
        when = (
            f" Measured {machine.get('date', '')[:10]} on {machine.get('cores', '?')} cores "
            f"({machine.get('cpu', '?')}), torch {machine.get('torch', '?')}, one torch thread."
        )
    first = lessons[0].path.as_posix() if lessons else "notebooks/"
    text = f"""# flowcourse: normalizing flows from first principles

A course that builds normalizing flows up from the change-of-variables formula, in PyTorch, on
a laptop CPU: from an affine flow whose published versions go wrong in a dozen ways, through
planar flows and RealNVP, to a variational autoencoder whose posterior is a flow. Every claim is
checked by a number, and every number by a test.

**Who it is for.** Students and engineers who know basic probability, calculus and PyTorch and
want to understand flows well enough to write and debug one; instructors who want graded
assignments; and readers who want to see what each step computes. This site shows every lesson
with the outputs stored when it last ran: nothing is re-run to build it, and the tests check
that those outputs are what the code prints.

## The course map

Read the lessons in order. *Budget* is the CPU time a lesson may take on one torch thread;
*measured* is the median CPU time of three runs (`make bench`).{when} Headline numbers come from
the notebooks' own recorded results and from the benchmarks over seeds
([benchmarks](benchmarks/summary.md)).

| lesson | budget | measured | headline numbers |
|---|---|---|---|
{chr(10).join(rows)}
| **the whole course** | {totals} | |

After the lessons: [{len(exercises)} graded assignments](assignments.md) (the student
versions; each follows the lesson with its number) and [the benchmarks](benchmarks/summary.md)
(run times, the course's RealNVP against zuko and normflows, the notebooks' tables over seeds).

## How to run it

- **In the browser, nothing to install:** [open the course on Binder]({binder_url(first)})
  (1 CPU and 1-2 GB of memory; the first start builds the environment and takes minutes). Every
  lesson page has its own Binder link and a link to download the notebook.
- **On your machine** (Linux or macOS, Python 3.11 with venv, `make`; no GPU):

  ```
  git clone {REPOSITORY}
  cd flowcourse
  make lab
  ```

  `make lab` creates a virtual environment in `.venv` with the pinned versions (the first time
  only) and opens the course in JupyterLab. After that it runs offline. On Linux, add
  `TORCH_INDEX=cpu` (`make lab TORCH_INDEX=cpu`) to install the CPU build of PyTorch, a much
  smaller download than PyPI's default CUDA build; the README gives the sizes.
- **Check everything:** `make test` runs every test, re-runs every notebook and compares its
  outputs with the stored ones, builds this site and checks it in a browser.
"""
    return text, problems


def assignments_page(exercises: list[Notebook], lessons: list[Notebook]) -> str:
    by_number = {nb.number: nb for nb in lessons}
    items = []
    for ex in exercises:
        lesson = by_number.get(ex.number)
        after = f" (after lesson [{ex.number}]({lesson.path.as_posix()}))" if lesson else ""
        items.append(f"- [{_cell(ex.title)}]({ex.path.as_posix()}){after}")
    return f"""# Assignments

Graded assignments, in the versions students get: each task is a function to write, whose stub
raises `NotImplementedError` with a hint, and after each task a check cell prints `PASS`, or
`FAIL` with what failed and the likely cause. The pages here show the notebooks as handed out
(no outputs, no solutions). To work on one, open it in the course's environment, where the check
cells can run: `make lab` on your machine, or the Binder link at the top of each page.

{chr(10).join(items)}

Instructors: the README says how to edit, release and grade them (`python -m flowcourse grade`).
"""
