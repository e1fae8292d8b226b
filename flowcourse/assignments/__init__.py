"""The course's graded assignments: one module per assignment, each holding its tasks.

A task's name, points, signature, reference, input generator, judge and figure live together
in its assignment's module; ``flowcourse release --check`` compares name, points and
signature with the task header in ``solutions/<key>.ipynb``. Adding a task means editing
one module and one notebook (and, for a new kind of argument, ``kernel.BUILDERS``).

- :mod:`.kernel` is the only part that runs inside a student's kernel (and the only part of
  this package a sandboxed kernel can import);
- :mod:`.core` judges what the kernel returns, in the grader's process.
"""

from __future__ import annotations

from flowcourse.assignments import (
    affine_flow,
    change_of_variables,
    continuous_flows,
    coupling_layers,
    dequantization,
    flow_elbo,
    planar_flow,
    spline_flows,
)
from flowcourse.assignments.core import Assignment, Task, Verdict

__all__ = ["ASSIGNMENTS", "TASKS", "Assignment", "Task", "Verdict", "find", "assignment_of"]

ASSIGNMENTS: dict[str, Assignment] = {
    module.ASSIGNMENT.key: module.ASSIGNMENT
    for module in (
        change_of_variables,
        affine_flow,
        planar_flow,
        coupling_layers,
        dequantization,
        flow_elbo,
        spline_flows,
        continuous_flows,
    )
}
TASKS: dict[str, Task] = {task.name: task for a in ASSIGNMENTS.values() for task in a.tasks}
_ALIASES = {alias: a.key for a in ASSIGNMENTS.values() for alias in a.aliases}


def find(key: object) -> Assignment | None:
    """The assignment with this key (or an earlier key of it), else None."""
    if not isinstance(key, str):
        return None
    return ASSIGNMENTS.get(key) or ASSIGNMENTS.get(_ALIASES.get(key, ""))


def assignment_of(task_name: str) -> Assignment:
    for assignment in ASSIGNMENTS.values():
        if any(task.name == task_name for task in assignment.tasks):
            return assignment
    raise KeyError(f"no task {task_name!r}; the tasks are {', '.join(TASKS)}")
