"""The nbval harness really compares stored outputs: a tampered number must fail it."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_change_of_variables.ipynb"


def _tamper(nb: nbformat.NotebookNode) -> tuple[int, str, str]:
    """Change the first digit of the first printed number; return (cell, old, new) text."""
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "nbval-ignore-output" in cell.metadata.get("tags", []):
            continue
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stdout" and re.search(r"\d", out.text):
                old = out.text
                m = re.search(r"\d", old)
                digit = str((int(m[0]) + 1) % 10)
                out.text = old[: m.start()] + digit + old[m.end() :]
                return k, old, out.text
    raise AssertionError(f"{NOTEBOOK.name} prints no number that nbval compares")


def test_editing_one_stored_number_makes_nbval_fail(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell, old, new = _tamper(nb)
    copy = tmp_path / NOTEBOOK.name
    nbformat.write(nb, copy)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
         "--nbval-current-env", "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"),
         f"--rootdir={tmp_path}", str(copy)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    report = run.stdout + run.stderr
    assert run.returncode != 0, f"nbval passed a notebook whose cell {cell} was edited:\n{report}"
    assert "1 failed" in report, report[-2000:]
    tampered = re.search(r"-?\d[\d.]*", new)[0]
    assert tampered in report, f"the failure should show the tampered number {tampered}"
