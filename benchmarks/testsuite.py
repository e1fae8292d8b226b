"""The test suite from a fresh clone: ``make venv`` (the install) then ``make test``.

The repository is cloned (``git clone``: committed files only) into a temporary folder, and the
two commands a newcomer would run are timed there, wall and CPU seconds (CPU of all child
processes). The clone is deleted afterwards. pip's cache is whatever the machine has: a
first install on a machine that never downloaded the wheels takes longer.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    ORIGINAL_ENVIRONMENT,
    ROOT,
    ResultFile,
    log,
    markdown_table,
    number,
    spread,
)

PART = "testsuite"
COLUMNS = [
    "repeat",
    "commit",
    "install_wall_s",
    "test_wall_s",
    "total_wall_s",
    "total_cpu_s",
    "passed",
    "failed",
    "status",
]
KEY = ["repeat"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _newcomer_environment() -> dict[str, str]:
    """The environment the command started with, minus what an outer ``make bench`` passes
    down (its command-line variables, e.g. VENV=..., must not reach the clone's make)."""
    env = dict(ORIGINAL_ENVIRONMENT)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def _timed(cmd: list[str], cwd: Path, log_file: Path) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    with log_file.open("a") as f:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_newcomer_environment(),
        )
        f.write(proc.stdout)
    return proc.returncode, time.perf_counter() - t0, proc.stdout


def _counts(output: str) -> tuple[int, int]:
    """Passed and failed (failed + errors) summed over the pytest summary lines."""
    passed = failed = 0
    for line in output.splitlines():
        if not re.search(r"\b(passed|failed|error)s?\b.* in [\d.]+s", line):
            continue
        for n, word in re.findall(r"(\d+) (passed|failed|errors?)", line):
            if word == "passed":
                passed += int(n)
            else:
                failed += int(n)
    return passed, failed


def run(
    results: Path,
    *,
    repeats: int = 1,
    resume: bool = False,
    source: Path = ROOT,
    python: str | None = None,
    keep_log: Path | None = None,
) -> None:
    from benchmarks.common import git_commit

    out = ResultFile(results / f"{PART}.csv", COLUMNS, KEY, resume=resume)
    make = shutil.which("make")
    if make is None:
        log("testsuite: skipped: make is not installed")
        return
    extra = [f"PYTHON={python}"] if python else []
    for repeat in range(1, repeats + 1):
        if out.done(repeat=repeat):
            continue
        with tempfile.TemporaryDirectory(prefix="flowcourse-bench-") as tmp:
            clone = Path(tmp) / "flowcourse"
            subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
            # Outside the clone, so that it survives it: what failed, if something did.
            log_file = keep_log or Path(tempfile.gettempdir()) / "flowcourse-bench-make-test.log"
            log_file.write_text("")
            log(
                f"testsuite {repeat}/{repeats}: make venv && make test in {clone} "
                f"(output in {log_file})"
            )
            cpu0 = _children_cpu()
            code_i, wall_i, _ = _timed([make, "venv", *extra], clone, log_file)
            code_t, wall_t, output = (1, float("nan"), "")
            if code_i == 0:
                code_t, wall_t, output = _timed([make, "test", *extra], clone, log_file)
            cpu = _children_cpu() - cpu0
            passed, failed = _counts(output)
            status = "install failed" if code_i else ("ok" if code_t == 0 else "tests failed")
            row = {
                "repeat": repeat,
                "commit": git_commit(clone),
                "install_wall_s": wall_i,
                "test_wall_s": wall_t,
                "total_wall_s": wall_i + wall_t,
                "total_cpu_s": cpu,
                "passed": passed,
                "failed": failed,
                "status": status,
            }
            out.add(row)
            log(
                f"testsuite {repeat}/{repeats}: install {wall_i:.0f} s, tests {wall_t:.0f} s, "
                f"{passed} passed, {failed} failed ({status})"
            )


def summarise(rows: list[dict[str, str]]) -> str:
    lines = [
        [
            r["repeat"],
            r["commit"],
            f"{number(r['install_wall_s']):.0f}",
            f"{number(r['test_wall_s']):.0f}",
            f"{number(r['total_wall_s']):.0f}",
            f"{number(r['total_cpu_s']):.0f}",
            r["passed"],
            r["failed"],
            r["status"],
        ]
        for r in rows
    ]
    header = [
        "run",
        "commit",
        "install s",
        "make test s",
        "total s",
        "CPU s",
        "passed",
        "failed",
        "status",
    ]
    total = [number(r["total_wall_s"]) for r in rows if r["status"] == "ok"]
    text = (
        "A fresh `git clone`, then `make venv` (creates `.venv`, installs the pinned "
        "requirements and the package) and `make test` (ruff, the exercise check, the unit "
        "tests and nbval on every notebook, `-n 2`), timed as a newcomer would run them; pip's "
        "cache as the machine had it.\n\n" + markdown_table(header, lines)
    )
    if len(total) > 1:
        text += f"\n\nTotal wall seconds over {len(total)} runs: {spread(total, 0)}."
    return text
