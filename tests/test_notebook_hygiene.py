"""Stored notebooks are what the code printed: executed in order, clean, no stray errors.

nbval skips cells without an execution count, so a notebook saved without outputs would
pass whatever its code does; these tests close that hole.
"""

from pathlib import Path

import nbformat
import pytest

from flowcourse.notebooks import hygiene_problems

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (ROOT / "solutions").glob("*.ipynb")
)
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def _ids(paths):
    return [f"{p.parent.name}/{p.name}" for p in paths]


def test_course_has_notebooks():
    assert (ROOT / "notebooks" / "01_change_of_variables.ipynb") in EXECUTED


@pytest.mark.parametrize("path", EXECUTED, ids=_ids(EXECUTED))
def test_executed_notebook_is_clean(path):
    problems = hygiene_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", EXECUTED, ids=_ids(EXECUTED))
def test_notebook_opens_with_goals_and_ends_with_summary(path):
    nb = nbformat.read(path, as_version=4)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "learn" in first.source.lower(), f"{path.name}: first cell should say what you learn"
    assert last.cell_type == "markdown", f"{path.name}: should close with a summary"
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert "flowcourse.setup(" in setup.source, f"{path.name}: first code cell must call setup()"


@pytest.mark.parametrize("path", EXERCISES, ids=_ids(EXERCISES))
def test_exercise_is_stored_without_outputs(path):
    problems = hygiene_problems(path, executed=False)
    assert not problems, "\n".join(problems)


def _notebook(tmp_path, cells, counts, tags=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i, (src, count) in enumerate(zip(cells, counts, strict=True)):
        cell = nbformat.v4.new_code_cell(src)
        cell.execution_count = count
        if tags and i in tags:
            cell.metadata["tags"] = tags[i]
        nb.cells.append(cell)
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path, nb


def test_hygiene_catches_an_unexecuted_cell(tmp_path):
    path, _ = _notebook(tmp_path, ["1", "2"], [1, None])
    assert any("never executed" in p for p in hygiene_problems(path))


def test_hygiene_catches_out_of_order_execution(tmp_path):
    path, _ = _notebook(tmp_path, ["1", "2"], [2, 1])
    assert any("not 1..2" in p for p in hygiene_problems(path))


def test_hygiene_catches_a_stored_warning_and_an_untagged_error(tmp_path):
    path, nb = _notebook(tmp_path, ["1", "2"], [1, 2])
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: careful\n")
    ]
    nb.cells[1].outputs = [
        nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])
    ]
    nbformat.write(nb, path)
    problems = hygiene_problems(path)
    assert any("stored a warning" in p for p in problems)
    assert any("not tagged raises-exception" in p for p in problems)


def test_hygiene_catches_a_tagged_cell_that_raised_nothing_and_a_foreign_kernel(tmp_path):
    path, nb = _notebook(tmp_path, ["1"], [1], tags={0: ["raises-exception"]})
    nb.metadata["kernelspec"]["name"] = "myenv"
    nbformat.write(nb, path)
    problems = hygiene_problems(path)
    assert any("raised nothing" in p for p in problems)
    assert any("kernelspec" in p for p in problems)


def test_hygiene_catches_outputs_in_an_exercise(tmp_path):
    path, _ = _notebook(tmp_path, ["1"], [1])
    assert hygiene_problems(path, executed=False)


def test_hygiene_catches_what_a_reader_should_not_meet(tmp_path):
    lesson = tmp_path / "notebooks"
    lesson.mkdir()
    cells = ["x = 1", "assert x == 1\nassert x > 0", "print(x)", "assert x"]
    path, nb = _notebook(lesson, cells, [1, 2, 3, 4])
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="saved in /home/me/work/x.pt\n")
    ]
    bar = nbformat.v4.new_output("display_data", data={"text/plain": "fit:   0%|  | 0/300"})
    nb.cells[2].outputs = [bar]
    nbformat.write(nb, path)
    problems = hygiene_problems(path)
    assert any("absolute path (/home/me/work/x.pt)" in p for p in problems), problems
    assert any("progress bar at 0%" in p for p in problems), problems
    assert any("2 of 4 code cells are visible assertion-only" in p for p in problems), problems
    # Collapsed plumbing is fine, and so are finished bars, relative paths and units.
    nb.cells[1].metadata["jupyter"] = {"source_hidden": True}
    nb.cells[3].metadata["tags"] = ["hide-cell"]
    nb.cells[0].outputs[0].text = "gap 0.035 nats/point, saved in results/04.json\n"
    bar.data["text/plain"] = "fit: 100%|#####| 300/300 [00:02<00:00]"
    nbformat.write(nb, path)
    assert hygiene_problems(path) == []
