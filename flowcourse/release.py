"""Build student exercises from the solution notebooks: one source, never drifting.

In ``solutions/NN_name.ipynb`` the code a student writes sits between the nbgrader markers::

    ### BEGIN SOLUTION
    ### HINT: what to remember (optional, shown in the stub)
    ...the solution...
    ### END SOLUTION

``python -m flowcourse release`` writes ``exercises/NN_name.ipynb`` with each region replaced
by a stub that raises ``NotImplementedError``, all outputs cleared and everything else
identical. ``--check`` exits 1 when ``exercises/`` differs from what would be written.

Both also compare each solution's task headers (``### Task 2 (3 points): `name(args) -> out` ``)
with the tasks of its assignment in :mod:`flowcourse.assignments` (name, points, signature,
order), so the notebook and the grader never disagree about a task.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import nbformat

__all__ = ["NOT_IMPLEMENTED", "strip_solutions", "release_notebook", "task_problems", "main"]

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
HINT = re.compile(r"^[ \t]*### HINT:[ \t]*(?P<text>.*)$")
NOT_IMPLEMENTED = "not implemented yet"
TASK_HEADER = re.compile(
    r"^###\s+Task\s+(?P<number>\d+)\s+\((?P<points>\d+)\s+points?\):\s+`(?P<signature>[^`]+)`\s*$",
    re.M,
)


def task_problems(nb: nbformat.NotebookNode, where: str = "") -> list[str]:
    """How the notebook's task headers disagree with its assignment's tasks (empty: none)."""
    from flowcourse.assignments import find

    key = nb.metadata.get("flowcourse", {}).get("assignment")
    spec = find(key)
    if spec is None:
        return [f"{where}: metadata.flowcourse.assignment is {key!r}, not a known assignment"]
    if spec.key != key:
        return [f"{where}: metadata names {key!r}, an old key of {spec.key!r}: update it"]
    headers = [
        m for c in nb.cells if c.cell_type == "markdown" for m in TASK_HEADER.finditer(c.source)
    ]
    problems = []
    if len(headers) != len(spec.tasks):
        problems.append(
            f"{where}: {len(headers)} task header(s), but {spec.key} has {len(spec.tasks)} tasks"
        )
    for k, (header, task) in enumerate(zip(headers, spec.tasks, strict=False)):
        shown = (int(header["number"]), int(header["points"]), header["signature"])
        wanted = (k + 1, task.points, task.signature)
        if shown != wanted:
            problems.append(
                f"{where}: header 'Task {shown[0]} ({shown[1]} points): {shown[2]}' should be "
                f"'Task {wanted[0]} ({wanted[1]} points): {wanted[2]}' (flowcourse/assignments)"
            )
    return problems


def strip_solutions(source: str, where: str = "") -> str:
    """Replace every marked solution region of one cell's source by a stub.

    Raises ValueError on unbalanced markers, so a typo never leaks a solution.
    """
    out: list[str] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        begin = BEGIN.match(lines[i])
        if END.match(lines[i]):
            raise ValueError(f"{where}: '### END SOLUTION' without a BEGIN (line {i + 1})")
        if not begin:
            out.append(lines[i])
            i += 1
            continue
        indent, hints = begin["indent"], []
        j = i + 1
        while j < len(lines) and not END.match(lines[j]):
            if BEGIN.match(lines[j]):
                raise ValueError(f"{where}: nested '### BEGIN SOLUTION' (line {j + 1})")
            hint = HINT.match(lines[j])
            if hint:
                hints.append(hint["text"].strip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{where}: '### BEGIN SOLUTION' (line {i + 1}) is never ended")
        message = f"This task is {NOT_IMPLEMENTED}: replace this line with your code"
        if hints:
            message += ". Hint: " + " ".join(hints)
        out.append(f"{indent}# YOUR CODE HERE")
        out.extend(_raise_stub(indent, message))
        i = j + 1
    return "\n".join(out)


def _raise_stub(indent: str, message: str, width: int = 100) -> list[str]:
    """``raise NotImplementedError("...")`` laid out as ruff format would, within ``width``.

    A long message becomes implicitly concatenated string parts, one per line, so a released
    notebook passes ``ruff check`` (line length) and ``ruff format --check`` unchanged.
    """
    one_line = f"{indent}raise NotImplementedError({json.dumps(message, ensure_ascii=False)})"
    if len(one_line) <= width:
        return [one_line]
    inner = indent + " " * 4
    room = width - len(inner)
    parts = []
    # The sentence and the hint start on lines of their own; long ones wrap between words.
    for segment in re.split(r"(?<=\. )(?=Hint: )", message):
        current = ""
        for word in re.split(r"(?<= )", segment):  # words keep their trailing space
            if current and len(json.dumps(current + word, ensure_ascii=False)) > room:
                parts.append(current)
                current = word
            else:
                current += word
        parts.append(current)
    quoted = [inner + json.dumps(part, ensure_ascii=False) for part in parts]
    return [f"{indent}raise NotImplementedError(", *quoted, f"{indent})"]


def release_notebook(solution: nbformat.NotebookNode, where: str = "") -> nbformat.NotebookNode:
    """The student version of a solution notebook: stubs in, outputs out."""
    nb = copy.deepcopy(solution)
    nb.metadata.pop("widgets", None)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{where} cell {k}")
            cell.outputs = []
            cell.execution_count = None
        elif "### BEGIN SOLUTION" in cell.source:
            cell.source = strip_solutions(cell.source, f"{where} cell {k}")
    return nb


def _expected(source: Path, target: Path) -> dict[Path, str]:
    files = {}
    for path in sorted(source.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        files[target / path.name] = nbformat.writes(release_notebook(nb, str(path))) + "\n"
    return files


def main(check: bool = False, source: str = "solutions", target: str = "exercises") -> int:
    """Write (or with ``check``, compare) ``target/`` from ``source/``. Returns an exit code."""
    src, dst = Path(source), Path(target)
    problems = [
        problem
        for path in sorted(src.glob("*.ipynb"))
        for problem in task_problems(nbformat.read(path, as_version=4), str(path))
    ]
    for problem in problems:
        print(problem)
    if problems:
        print("The task headers and flowcourse/assignments must agree; nothing was written.")
        return 1
    expected = _expected(src, dst)
    stale = [p for p, text in expected.items() if not p.exists() or p.read_text() != text]
    orphans = [p for p in sorted(dst.glob("*.ipynb")) if p not in expected]
    if check:
        for p in stale:
            print(f"stale: {p} differs from what `flowcourse release` builds from {src / p.name}")
        for p in orphans:
            print(f"orphan: {p} has no solution notebook in {src}/")
        if stale or orphans:
            print("Run `make release` (python -m flowcourse release) and commit exercises/.")
            return 1
        print(f"exercises up to date: {len(expected)} notebook(s) built from {src}/")
        return 0
    dst.mkdir(parents=True, exist_ok=True)
    for p, text in expected.items():
        p.write_text(text)
    for p in orphans:
        p.unlink()
    print(f"wrote {len(expected)} exercise notebook(s) to {dst}/, removed {len(orphans)} orphan(s)")
    return 0
