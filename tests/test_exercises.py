"""Assignments: one source, both directions.

Every solution passes each of its check cells (the stored outputs, which nbval re-checks);
every exercise, executed as released, reaches each check cell and fails it with "not
implemented yet". An exercise that is accidentally solved, or that crashes before a check,
fails here.
"""

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from flowcourse import release
from flowcourse.assignments import ASSIGNMENTS, TASKS
from flowcourse.assignments.kernel import NOT_IMPLEMENTED
from flowcourse.notebooks import execute

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))
CHECK_CALL = re.compile(r'^check\("(?P<name>\w+)", (?P=name)\)$')


def _check_cells(nb) -> dict[str, nbformat.NotebookNode]:
    """task name -> its check cell."""
    found = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and (m := CHECK_CALL.match(cell.source.strip())):
            assert m["name"] not in found, f"two check cells for {m['name']}"
            found[m["name"]] = cell
    return found


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def test_every_assignment_has_a_solution_and_an_exercise():
    assert [p.stem for p in SOLUTIONS] == list(ASSIGNMENTS)
    assert [p.name for p in EXERCISES] == [p.name for p in SOLUTIONS]
    for path in SOLUTIONS:
        meta = nbformat.read(path, as_version=4).metadata
        assert meta["flowcourse"]["assignment"] == path.stem, "the grader reads this key"


def test_exercises_are_what_release_builds():
    assert release.main(check=True, source=ROOT / "solutions", target=ROOT / "exercises") == 0


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_defines_each_task_then_checks_it_and_passes(path):
    nb = nbformat.read(path, as_version=4)
    spec = ASSIGNMENTS[path.stem]
    checks = _check_cells(nb)
    assert list(checks) == [t.name for t in spec.tasks], "one check cell per task, in order"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for task in spec.tasks:
        defining = [c for c in code if re.search(rf"^def {task.name}\(", c.source, re.M)]
        assert len(defining) == 1, f"{task.name}: expected one cell defining it"
        assert "### BEGIN SOLUTION" in defining[0].source, f"{task.name}: no solution region"
        assert code.index(defining[0]) < code.index(checks[task.name])
        out = _text(checks[task.name])
        assert out.startswith(f"PASS {task.name} ({task.points}/{task.points} points)"), out
    report = next(c for c in code if c.source.strip() == f'report("{path.stem}")')
    assert f"total {spec.points}/{spec.points} points" in _text(report)


@pytest.mark.parametrize("path", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_exercise_as_released_reaches_every_check_and_fails_it(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert "### BEGIN SOLUTION" not in nbformat.writes(nb), "a solution leaked"
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    execute(copy, timeout=120)  # raises if any cell crashes: every check must be reached
    executed = nbformat.read(copy, as_version=4)
    checks = _check_cells(executed)
    assert list(checks) == [t.name for t in ASSIGNMENTS[path.stem].tasks]
    for name, cell in checks.items():
        out = _text(cell)
        assert out.startswith(f"FAIL {name} (0/{TASKS[name].points} points)"), out
        assert NOT_IMPLEMENTED in out, out
