"""The shipped solutions graded with many fresh grader seeds: no correct solution may lose points.

For every assignment, the code cells of ``solutions/<key>.ipynb`` run once in this process (check
cells are inert, as in the grader's kernel), then every task is probed and judged exactly as
``flowcourse grade`` does it (:func:`flowcourse.assignments.kernel.probe` on the inputs the
grader would draw with that seed, then :func:`flowcourse.assignments.core.judge`), without the
kernel and sandbox around it (their behaviour is covered by tests/test_grading.py). One row per
assignment, seed and task: points, and for training tasks the number their pass mark applies
to, so the marks in ``flowcourse/assignments/*.py`` can be set from the measured spread.
"""

from __future__ import annotations

import json
import os
import random
import re
import time

import nbformat

from benchmarks.common import ROOT, ResultFile, log, markdown_table, number

PART = "grading"
COLUMNS = ["assignment", "seed", "task", "points", "max_points", "metrics", "seconds", "message"]
KEY = ["assignment", "seed", "task"]
SEED_BASE = 20261130

# What a training task's pass marks apply to, read from its verdict's message:
# (task, name, pattern, what); a pattern with two groups gives their ratio.
METRICS = [
    ("train_affine", "kl", r"KL (?:= )?([\d.]+) nats", "KL to the data's Gaussian, nats"),
    ("train_realnvp", "nll", r"test NLL ([\d.]+) nats", "test NLL, nats"),
    ("train_realnvp", "off", r"samples off the moons ([\d.]+)%", "samples off the moons, %"),
    (
        "fit_flow_posterior",
        "ratio",
        r"gap (-?[\d.]+) nats with \d+ planar layers; the best diagonal Gaussian: ([\d.]+)",
        "flow gap / best Gaussian gap",
    ),
]


def seeds(count: int) -> list[int]:
    """``count`` grader seeds, reproducible, spread like the grader's own (32-bit)."""
    rng = random.Random(SEED_BASE)
    return [rng.getrandbits(32) for _ in range(count)]


def solution_namespace(key: str) -> dict:
    """The namespace a solution's code cells leave behind (check cells inert, no figures)."""
    os.environ["FLOWCOURSE_GRADING"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "solutions" / f"{key}.ipynb", as_version=4)
    namespace: dict = {"__name__": "__main__"}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            exec(compile(cell.source, f"<{key} cell {index}>", "exec"), namespace)
    return namespace


def metrics(task: str, message: str) -> dict[str, float]:
    """The numbers of ``METRICS`` that ``task``'s verdict message states."""
    found = {}
    for name_task, name, pattern, _ in METRICS:
        match = re.search(pattern, message) if name_task == task else None
        if match:
            values = [float(g) for g in match.groups()]
            found[name] = values[0] / values[1] if len(values) == 2 else values[0]
    return found


def grade_with(namespace: dict, task, seed: int, k: int):
    """The verdict the grader would give ``namespace``'s function for ``task`` with ``seed``."""
    import torch

    from flowcourse.assignments import TASKS
    from flowcourse.assignments.core import judge, make_inputs
    from flowcourse.assignments.kernel import probe

    inputs = make_inputs(task, seed + 7919 * k)  # as flowcourse.grading._run draws them
    references = {dep: TASKS[dep].reference for dep in task.depends}
    with torch.random.fork_rng(devices=[]):
        payload = probe(task.spec(), inputs, namespace, references=references)
    return judge(task, inputs, json.loads(json.dumps(payload)))


def run(results, *, count: int = 200, assignments: list[str] | None = None, resume=False):
    import torch

    from flowcourse.assignments import ASSIGNMENTS

    torch.set_num_threads(1)
    table = ResultFile(results / f"{PART}.csv", COLUMNS, KEY, resume=resume)
    for key, spec in ASSIGNMENTS.items():
        if assignments and key not in assignments:
            continue
        namespace = solution_namespace(key)
        for i, seed in enumerate(seeds(count)):
            for k, task in enumerate(spec.tasks):
                if table.done(assignment=key, seed=seed, task=task.name):
                    continue
                start = time.process_time()
                verdict = grade_with(namespace, task, seed, k)
                found = metrics(task.name, verdict.message)
                table.add(
                    {
                        "assignment": key,
                        "seed": seed,
                        "task": task.name,
                        "points": verdict.points,
                        "max_points": verdict.max_points,
                        "metrics": ";".join(f"{k}={v:.6g}" for k, v in found.items()),
                        "seconds": time.process_time() - start,
                        "message": verdict.message[:300],
                    }
                )
            if (i + 1) % 20 == 0:
                log(f"{key}: {i + 1}/{count} seeds")


def _quantile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))]


def summarise(rows: list[dict[str, str]]) -> str:
    from flowcourse.assignments import ASSIGNMENTS

    totals: dict[tuple[str, str], int] = {}
    for r in rows:
        group = (r["assignment"], r["seed"])
        totals[group] = totals.get(group, 0) + int(number(r["points"]))
    lines = []
    for key, spec in ASSIGNMENTS.items():
        scores = [v for (a, _), v in totals.items() if a == key]
        if not scores:
            continue
        failed = sorted({r["task"] for r in rows if r["assignment"] == key and r["points"] != str(
            next(t.points for t in spec.tasks if t.name == r["task"]))})  # fmt: skip
        lines.append(
            [
                key,
                len(scores),
                f"{min(scores)}/{spec.points}",
                f"{max(scores)}/{spec.points}",
                sum(s == spec.points for s in scores),
                ", ".join(failed) or "none",
            ]  # fmt: skip
        )
    metric_lines = []
    for task, name, _, what in METRICS:
        values = sorted(
            float(value)
            for r in rows
            if r["task"] == task
            for item in r["metrics"].split(";")
            if item.startswith(name + "=")
            for value in [item.partition("=")[2]]
        )
        if values:
            metric_lines.append(
                [
                    task,
                    what,
                    len(values),
                    f"{values[0]:.4f}",
                    f"{_quantile(values, 0.5):.4f}",
                    f"{_quantile(values, 0.99):.4f}",
                    f"{values[-1]:.4f}",
                ]  # fmt: skip
            )
    text = (
        "Each shipped solution graded as `flowcourse grade` grades it, with fresh grader seeds "
        "(the inputs, the training data and the training seed change with the seed; the code "
        "runs in-process, the kernel and sandbox are tested separately). A correct solution "
        "must score full marks for every seed.\n\n"
        + markdown_table(
            [
                "assignment",
                "seeds",
                "min score",
                "max score",
                "full marks",
                "tasks that lost points",
            ],
            lines,
        )
    )
    if metric_lines:
        text += (
            "\n\nWhat the pass marks of the training tasks apply to, over the same seeds "
            "(the marks live in `flowcourse/assignments/`):\n\n"
            + markdown_table(
                ["task", "measure", "seeds", "min", "median", "99%", "max"], metric_lines
            )
        )
    return text
