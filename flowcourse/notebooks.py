"""Executing the course's notebooks the same way every time, and checking their hygiene.

``python -m flowcourse execute [paths]`` re-runs notebooks from a fresh kernel and stores
their outputs in place; the same hygiene rules are checked by the tests.
"""

from __future__ import annotations

import ast
import os
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

__all__ = ["Timing", "run", "execute", "find_notebooks", "hygiene_problems", "KERNEL"]

KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
WARNING_MARKERS = ("Warning:", "WARNING", "warnings.warn")


@dataclass
class Timing:
    """Wall and CPU seconds of one notebook run (CPU includes the kernel's children)."""

    path: Path
    wall: float
    cpu: float


def find_notebooks(paths: list[str | Path]) -> list[Path]:
    """Expand folders into their ``*.ipynb`` files, sorted; keep files as given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(p.glob("*.ipynb")))
        elif p.suffix == ".ipynb" and p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"expected a notebook (.ipynb) or a folder of them, got {p}")
    return found


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    nb: nbformat.NotebookNode, folder: str | Path, *, timeout: int = 600, allow_errors: bool = False
) -> Timing:
    """Execute ``nb`` in place in a fresh ``python3`` kernel started in ``folder``.

    Cells tagged ``raises-exception`` may fail; any other error stops the run unless
    ``allow_errors``. The kernel inherits this process's environment (``PYTHONHASHSEED`` is
    fixed for reproducibility). Returns wall and CPU seconds (``path`` is ``folder``).
    """
    import nbclient

    nb.metadata["kernelspec"] = dict(KERNEL)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(folder).resolve())}},
        record_timing=False,
        allow_errors=allow_errors,
    )
    cpu0, t0 = _children_cpu(), time.perf_counter()
    client.execute()
    return Timing(Path(folder), time.perf_counter() - t0, _children_cpu() - cpu0)


def execute(path: str | Path, *, timeout: int = 600, write: bool = True) -> Timing:
    """Run a notebook top to bottom from a fresh kernel (:func:`run`); store outputs in place.

    With ``write=False`` (a timing run) nothing beside the notebook changes either: the
    numbers it records in ``results/`` (:mod:`flowcourse.results`) are put back as they were,
    since a timing run's CPU seconds are not the stored outputs' own.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    results = path.parent / "results"
    before = {p: p.read_bytes() for p in results.glob("*.json")}
    try:
        timing = run(nb, path.parent, timeout=timeout)
    finally:
        if not write:
            for p in results.glob("*.json"):
                if p not in before:
                    p.unlink()
            for p, data in before.items():
                p.write_bytes(data)
    if write:
        # Progress bars replace their widget by text when they close (train.progress_bar), so
        # the widgets' state would only add size to the file.
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
    return Timing(path, timing.wall, timing.cpu)


# An absolute path (/home/..., /tmp/..., site-packages/) in what a reader of the outputs sees.
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.-]+/)+[\w.-]+|site-packages/")
MAX_ASSERT_CELLS = 0.10  # share of a lesson's code cells that may be visible bare assertions


def assertion_only(cell) -> bool:
    """A visible code cell whose every top-level statement is an ``assert``: plumbing a reader
    meets between two ideas (a cell is hidden by ``source_hidden`` or a hide/remove tag)."""
    tags = set(cell.metadata.get("tags", []))
    if cell.metadata.get("jupyter", {}).get("source_hidden") or {"hide-cell", "remove-cell"} & tags:
        return False
    try:
        body = ast.parse(cell.source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, ast.Assert) for node in body)


def _output_text(out) -> str:
    text = out.get("text", "") + out.get("data", {}).get("text/plain", "")
    text += "\n".join(out.get("traceback", []))
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def reader_problems(nb: nbformat.NotebookNode, where: str, *, lesson: bool) -> list[str]:
    """What a reader of the stored outputs (GitHub, nbviewer, the site) should not meet:
    absolute paths, progress bars stored at 0%, and (in lessons) bare assertion cells."""
    problems = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code, 1):
        for out in cell.get("outputs", []):
            text = _output_text(out)
            if ABSOLUTE_PATH.search(text):
                found = ABSOLUTE_PATH.search(text).group(0)
                problems.append(f"{where}: code cell {i} stores an absolute path ({found})")
            if out.get("output_type") == "display_data" and re.search(r"(?<!\d)0%\|", text):
                problems.append(
                    f"{where}: code cell {i} stores a progress bar at 0% (re-execute it: "
                    "flowcourse.train.progress_bar stores the final state)"
                )
    bare = sum(assertion_only(c) for c in code)
    if lesson and code and bare / len(code) > MAX_ASSERT_CELLS:
        problems.append(
            f"{where}: {bare} of {len(code)} code cells are visible assertion-only cells (at "
            f"most {MAX_ASSERT_CELLS:.0%}): fold checks into result lines with "
            "flowcourse.checks.claim, or collapse plumbing (source_hidden + hide-cell tag)"
        )
    return problems


def hygiene_problems(path: str | Path, *, executed: bool = True) -> list[str]:
    """What is wrong with a stored notebook; an empty list when nothing is.

    ``executed=True`` (notebooks/, solutions/): every code cell ran once, in order, from a
    fresh kernel; kernelspec python3; no warnings on stderr; errors only in cells tagged
    ``raises-exception``; nothing a reader should not meet (:func:`reader_problems`; the
    assertion-cell share applies to lessons, the notebooks of a ``notebooks`` folder).
    ``executed=False`` (exercises/): no outputs at all.
    """
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # a broken file is a finding, not a crash
        return [f"{path}: not a readable notebook ({exc})"]
    problems = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not executed:
        for i, cell in enumerate(code, 1):
            if cell.get("outputs") or cell.get("execution_count") is not None:
                problems.append(f"{path}: code cell {i} has stored outputs (exercises ship clean)")
        return problems
    counts = [c.get("execution_count") for c in code]
    if any(c is None for c in counts):
        never = [i for i, c in enumerate(counts, 1) if c is None]
        problems.append(f"{path}: code cells {never} were never executed")
    elif counts != list(range(1, len(counts) + 1)):
        problems.append(
            f"{path}: execution counts {counts} are not 1..{len(counts)}: "
            "re-run it from a fresh kernel with `make execute NB=...`"
        )
    if nb.metadata.get("widgets"):
        problems.append(f"{path}: stores widget state (re-execute it with `make execute NB=...`)")
    name = nb.metadata.get("kernelspec", {}).get("name")
    if name != "python3":
        problems.append(f"{path}: kernelspec is {name!r}, expected 'python3'")
    for i, cell in enumerate(code, 1):
        tags = cell.metadata.get("tags", [])
        for out in cell.get("outputs", []):
            if out.output_type == "error" and "raises-exception" not in tags:
                problems.append(
                    f"{path}: code cell {i} stored an error ({out.ename}) but is not "
                    "tagged raises-exception"
                )
            if out.output_type == "stream" and out.name == "stderr":
                if any(m in out.text for m in WARNING_MARKERS):
                    first = out.text.strip().splitlines()[0][:120]
                    problems.append(f"{path}: code cell {i} stored a warning: {first}")
        if "raises-exception" in tags and not any(
            o.output_type == "error" for o in cell.get("outputs", [])
        ):
            problems.append(f"{path}: code cell {i} is tagged raises-exception but raised nothing")
    problems += reader_problems(nb, str(path), lesson=path.parent.name == "notebooks")
    return problems
