"""Exercises are built from solutions: stubs replace the marked code, nothing else changes."""

import nbformat
import pytest

from flowcourse.assignments import ASSIGNMENTS
from flowcourse.release import main, release_notebook, strip_solutions, task_problems

SOLVED = """def log_det(x):
    ### BEGIN SOLUTION
    ### HINT: sum over dimensions
    return x.sum(-1)
    ### END SOLUTION

print("kept")"""


def test_stub_replaces_the_region_keeps_indent_hint_and_the_rest():
    out = strip_solutions(SOLVED)
    assert "x.sum(-1)" not in out and "BEGIN SOLUTION" not in out
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in out
    assert "Hint: sum over dimensions" in out
    assert out.startswith("def log_det(x):") and out.endswith('print("kept")')
    namespace = {}
    exec(out, namespace)  # the stub is valid Python and fails with the agreed message
    with pytest.raises(NotImplementedError, match="not implemented yet"):
        namespace["log_det"](1)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("### BEGIN SOLUTION\nx = 1", "never ended"),
        ("x = 1\n### END SOLUTION", "without a BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
    ],
)
def test_unbalanced_markers_are_refused_so_no_solution_leaks(source, problem):
    with pytest.raises(ValueError, match=problem):
        strip_solutions(source, "nb.ipynb")


KEY = "01_change_of_variables"


def _headers(key: str = KEY) -> str:
    tasks = ASSIGNMENTS[key].tasks
    return "\n\n".join(
        f"### Task {k} ({t.points} points): `{t.signature}`" for k, t in enumerate(tasks, 1)
    )


def _solution_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"state": {}}
    nb.metadata["flowcourse"] = {"assignment": KEY}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Task\n\n" + _headers()),
        nbformat.v4.new_code_cell(SOLVED, execution_count=1),
        nbformat.v4.new_code_cell("print(2)", execution_count=2),
    ]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    return nb


def test_release_clears_outputs_and_keeps_everything_else():
    solution = _solution_notebook()
    exercise = release_notebook(solution)
    assert [c.cell_type for c in exercise.cells] == [c.cell_type for c in solution.cells]
    assert [c.get("id") for c in exercise.cells] == [c.get("id") for c in solution.cells]
    assert all(c.outputs == [] and c.execution_count is None for c in exercise.cells[1:])
    assert exercise.cells[2].source == "print(2)" and "widgets" not in exercise.metadata
    assert solution.cells[2].outputs, "the solution notebook itself must not be modified"


def test_check_reports_stale_and_orphan_exercises(tmp_path, capsys):
    src, dst = tmp_path / "solutions", tmp_path / "exercises"
    src.mkdir()
    nbformat.write(_solution_notebook(), src / f"{KEY}.ipynb")
    assert main(check=True, source=str(src), target=str(dst)) == 1
    assert "stale" in capsys.readouterr().out
    assert main(source=str(src), target=str(dst)) == 0
    assert main(check=True, source=str(src), target=str(dst)) == 0
    written = dst / f"{KEY}.ipynb"
    written.write_text(written.read_text().replace("kept", "edit"))
    (dst / "99_orphan.ipynb").write_text("{}")
    assert main(check=True, source=str(src), target=str(dst)) == 1
    out = capsys.readouterr().out
    assert "stale: " in out and "orphan: " in out


def test_a_long_stub_stays_within_the_line_length_and_keeps_its_message():
    hint = " ".join(["a long hint about what to remember"] * 6)
    source = "\n".join(
        ["def f(x):", "    ### BEGIN SOLUTION", f"    ### HINT: {hint}", "    return x"]
        + ["    ### END SOLUTION"]
    )
    out = strip_solutions(source)
    assert all(len(line) <= 100 for line in out.splitlines()), out
    assert "raise NotImplementedError(\n" in out and "'" not in out  # double quotes, as ruff
    namespace = {}
    exec(out, namespace)
    with pytest.raises(NotImplementedError) as info:
        namespace["f"](1)
    assert str(info.value) == (
        "This task is not implemented yet: replace this line with your code. Hint: " + hint
    )


def test_task_headers_must_match_the_assignment_module(tmp_path, capsys):
    nb = _solution_notebook()
    assert task_problems(nb, "nb") == []
    first = ASSIGNMENTS[KEY].tasks[0]
    for old, new, fragment in [
        (f"({first.points} points)", f"({first.points + 1} points)", "should be"),
        (first.signature, first.signature.replace("edges", "bins"), "should be"),
        ("### Task 2 ", "### Step 2 ", "3 task header(s)"),
    ]:
        broken = _solution_notebook()
        broken.cells[0].source = broken.cells[0].source.replace(old, new, 1)
        problems = task_problems(broken, "nb")
        assert problems and fragment in problems[0], problems
    src = tmp_path / "solutions"
    src.mkdir()
    nbformat.write(broken, src / f"{KEY}.ipynb")
    assert main(source=str(src), target=str(tmp_path / "exercises")) == 1
    assert "must agree; nothing was written" in capsys.readouterr().out
    assert not (tmp_path / "exercises").exists()
    old = _solution_notebook()
    old.metadata["flowcourse"]["assignment"] = "06_flow_elbo"  # an earlier key
    assert "an old key" in task_problems(old, "nb")[0]
