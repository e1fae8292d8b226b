"""Course run time: each notebook executed headless from a fresh kernel, on one torch thread.

Every notebook of ``notebooks/`` and ``solutions/`` is run ``repeats`` times with
``flowcourse.notebooks.execute(path, write=False)`` (the notebook file is not modified); the CSV
holds one row per run, the summary the median and the min-max of wall and CPU seconds
against the lesson's budget (from the course design; exercises in solutions/ have none).
Runs go round the notebooks once per repeat, so a slow spell of a shared machine is spread
over all of them instead of landing on one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from benchmarks.common import ROOT, ResultFile, log, markdown_table, median, number, spread

PART = "runtime"
COLUMNS = ["notebook", "budget_s", "repeat", "wall_s", "cpu_s", "status"]
KEY = ["notebook", "repeat"]

# CPU budgets of the core notebooks on one torch thread (course design), by number.
BUDGETS = {
    "01": 15,
    "02": 20,
    "03": 45,
    "04": 60,
    "05": 75,
    "06": 60,
    "07": 90,
    "08": 100,
    "09": 90,
    "10": 90,
}
FOLDERS = ("notebooks", "solutions")


def budget(path: str | Path) -> float:
    """The lesson's budget for ``notebooks/NN_*.ipynb``; nan for others (solutions/ holds the
    exercises, which have no budget of their own)."""
    path = Path(path)
    match = re.match(r"(\d\d)_", path.name)
    if not match or path.parent.name != "notebooks":
        return math.nan
    return float(BUDGETS.get(match.group(1), math.nan))


def notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks to time, relative to ``root``: notebooks/*.ipynb, then solutions/*.ipynb."""
    found = []
    for folder in FOLDERS:
        found += sorted((root / folder).glob("*.ipynb"))
    return [p.relative_to(root) for p in found]


def run(results: Path, *, repeats: int = 3, resume: bool = False, timeout: int = 1200) -> None:
    from flowcourse.notebooks import execute

    out = ResultFile(results / f"{PART}.csv", COLUMNS, KEY, resume=resume)
    paths = notebooks()
    if not paths:
        log("runtime: no notebooks found")
        return
    for repeat in range(1, repeats + 1):
        for rel in paths:
            name = rel.as_posix()
            if out.done(notebook=name, repeat=repeat):
                continue
            row = {"notebook": name, "budget_s": budget(rel), "repeat": repeat}
            try:
                t = execute(ROOT / rel, timeout=timeout, write=False)
            except Exception as exc:  # a failing notebook is a result, not a crash
                first = (str(exc).strip().splitlines() or [""])[-1][:200]
                row |= {"wall_s": math.nan, "cpu_s": math.nan, "status": f"error: {first}"}
            else:
                row |= {"wall_s": t.wall, "cpu_s": t.cpu, "status": "ok"}
            out.add(row)
            log(
                f"runtime {repeat}/{repeats} {name}: {row['wall_s']:.1f} s wall, "
                f"{row['cpu_s']:.1f} s CPU ({row['status']})"
            )


def aggregate(rows: list[dict[str, str]]) -> list[dict[str, object]]:
    """Per notebook, in first-seen order: budget, runs, median and min/max of wall and CPU."""
    order: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        order.setdefault(r["notebook"], []).append(r)
    table = []
    for name, runs in order.items():
        ok = [r for r in runs if r["status"] == "ok"]
        walls = [number(r["wall_s"]) for r in ok]
        cpus = [number(r["cpu_s"]) for r in ok]
        table.append(
            {
                "notebook": name,
                "budget_s": budget(name),
                "runs": len(ok),
                "failed": len(runs) - len(ok),
                "wall": walls,
                "cpu": cpus,
                "wall_median": median(walls),
                "cpu_median": median(cpus),
            }
        )
    return table


def summarise(rows: list[dict[str, str]]) -> str:
    table = aggregate(rows)
    lines = []
    total_wall = total_cpu = 0.0
    for t in table:
        b = t["budget_s"]

        def verdict(seconds: float, b: float = b) -> str:
            if math.isnan(b) or math.isnan(seconds):
                return ""
            return "yes" if seconds <= b else "**no**"

        if not math.isnan(t["wall_median"]):
            total_wall += t["wall_median"]
            total_cpu += t["cpu_median"]
        lines.append(
            [
                t["notebook"],
                "" if math.isnan(b) else f"{b:.0f}",
                spread(t["wall"], 1),
                spread(t["cpu"], 1),
                f"{t['runs']}" + (f" ({t['failed']} failed)" if t["failed"] else ""),
                verdict(t["wall_median"]),
                verdict(t["cpu_median"]),
            ]
        )
    lines.append(["**total**", "", f"{total_wall:.1f}", f"{total_cpu:.1f}", "", "", ""])
    header = ["notebook", "budget s", "wall s", "CPU s", "runs", "wall <= budget", "CPU <= budget"]
    return (
        "Each notebook executed headless from a fresh kernel (`flowcourse.notebooks.execute`, "
        "nothing written), one torch thread. Seconds: median (min-max) over the runs. "
        "CPU time is the kernel process's; wall time also counts starting the kernel and waiting "
        "for a CPU (on a busy machine, much more than the CPU time).\n\n"
        + markdown_table(header, lines)
    )


# --- the README's course map ----------------------------------------------------------------


def update_readme_text(text: str, rows: list[dict[str, str]]) -> str:
    """Fill the ``measured`` column of the README's course map from runtime rows.

    A course-map row links its notebook as ``(notebooks/NN_name.ipynb)``; its last cell
    becomes ``W s`` (median wall seconds). Rows without a measurement are left as they are.
    """
    measured = {t["notebook"]: t["wall_median"] for t in aggregate(rows)}
    lines = text.splitlines(keepends=True)
    header_cells = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header_cells = None
            continue
        cells = line.rstrip("\n").split("|")
        names = [c.strip() for c in cells]
        if "measured" in names and "notebook" in names:
            header_cells = names
            continue
        if header_cells is None:
            continue
        link = re.search(r"\]\(((?:notebooks|solutions)/[^)]+\.ipynb)\)", line)
        if not link or not math.isfinite(measured.get(link.group(1), math.nan)):
            continue
        col = header_cells.index("measured")
        if col >= len(cells):
            continue
        cells[col] = f" {measured[link.group(1)]:.0f} s "
        lines[i] = "|".join(cells) + ("\n" if line.endswith("\n") else "")
    return "".join(lines)
