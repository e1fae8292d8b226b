"""The check cells of the assignment notebooks: ``check("name", name)`` and ``report(key)``.

After each task of an assignment (``exercises/NN_name.ipynb``) a check cell calls
``check("name", name)``: it calls the student's function on fixed inputs, compares what comes
back with the reference in float64 and prints a verdict (what passed, what failed, for which
input, the likely cause), exactly as the grader (:mod:`flowcourse.grading`) does with fresh
inputs. The tasks themselves live in :mod:`flowcourse.assignments`, one module per assignment.

While a submission is graded, the kernel imports a stand-in for this module whose ``check``
and ``report`` do nothing, and the references are not there at all (:mod:`flowcourse.sandbox`).
"""

from __future__ import annotations

import json
import os
import textwrap
import zlib
from typing import Any

import torch

from flowcourse.assignments import ASSIGNMENTS, TASKS, find
from flowcourse.assignments.core import Verdict, decode, judge, make_inputs
from flowcourse.assignments.kernel import NOT_IMPLEMENTED, probe

__all__ = ["check", "report", "NOT_IMPLEMENTED", "GRADING_ENV"]

GRADING_ENV = "FLOWCOURSE_GRADING"
_RESULTS: dict[str, Verdict] = {}


def _grading() -> bool:
    return os.environ.get(GRADING_ENV, "") not in ("", "0")


def check(name: str, obj: Any, seed: int = 0, plot: bool = True) -> None:
    """Check the function ``obj`` for the task ``name`` and print a verdict; never raises.

    The inputs are fixed by ``seed`` (the grader draws fresh ones), so the verdict is
    reproducible. Earlier tasks that ``name`` calls are replaced by reference versions while it
    runs, so each task is checked on its own. Some tasks draw a figure when they pass.
    """
    if _grading():
        print(f"(check of {name} skipped while grading)")
        return
    if name not in TASKS:
        print(f"FAIL {name}: no such task; the tasks are {', '.join(TASKS)}")
        return
    task = TASKS[name]
    inputs = make_inputs(task, zlib.crc32(name.encode()) + seed)
    namespace = getattr(obj, "__globals__", None)
    if not isinstance(namespace, dict):
        namespace = {}
    references = {dep: TASKS[dep].reference for dep in task.depends}
    with torch.random.fork_rng(devices=[]):
        payload = probe(task.spec(), inputs, namespace, obj=obj, references=references)
    # The verdict is computed from plain data, exactly as the grader does it.
    payload = json.loads(json.dumps(payload))
    verdict = judge(task, inputs, payload)
    _RESULTS[name] = verdict
    lines = [textwrap.fill(str(verdict), 100, subsequent_indent="    ")]
    if verdict.passed and task.depends:
        note = f"(checked with the reference {', '.join(task.depends)}: each task counts once)"
        lines.append(textwrap.fill(note, 100, initial_indent="    ", subsequent_indent="    "))
    print("\n".join(lines), flush=True)
    if plot and verdict.passed and task.plot is not None:
        import matplotlib.pyplot as plt

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            task.plot(obj, inputs["cases"], [decode(c["value"]) for c in payload["cases"]])
        plt.show()


def report(assignment: str) -> None:
    """Print the verdicts of this session's check cells for ``assignment`` and the total."""
    if _grading():
        print("(report skipped while grading)")
        return
    spec = find(assignment)
    if spec is None:
        print(f"no assignment {assignment!r}; the assignments are {', '.join(ASSIGNMENTS)}")
        return
    width = max(len(t.name) for t in spec.tasks)
    total = 0
    print(f"{spec.title}: verdicts of the check cells run in this session")
    for task in spec.tasks:
        verdict = _RESULTS.get(task.name)
        status = verdict.status if verdict else "----"
        points = verdict.points if verdict else 0
        total += points
        note = "" if verdict else "  (its check cell has not run)"
        print(f"  {status}  {task.name:<{width}}  {points}/{task.points}{note}")
    print(f"  total {total}/{spec.points} points. The grader re-checks with fresh inputs.")
