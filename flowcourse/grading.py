"""Grade submitted assignment notebooks: ``python -m flowcourse grade PATH... --out DIR``.

A submission is untrusted code. For each one the grader

1. reads the file once and never writes to it; a file that is not a notebook is reported, not
   fatal. The assignment comes from the notebook's metadata (``flowcourse.assignment``, set by
   ``release``), else from the file name, else from the functions it defines;
2. starts a kernel of its own in an empty temporary folder (it never learns where the file
   is), in a new process group, with an address-space cap (``RLIMIT_AS``, ``--memory-mb``),
   ``FLOWCOURSE_GRADING=1`` (check cells do nothing), ``MPLBACKEND=Agg`` and no stdin, and
   imports torch and the course's libraries there before any cell runs;
3. runs the notebook's code cells in order with a wall-clock limit per cell (``--cell-timeout``)
   and for the whole submission (``--timeout``). Errors are recorded and execution goes on.
   A cell that overruns is interrupted; a kernel that ignores the interrupt, dies, or runs out
   of memory is killed with its process group and restarted without that cell;
4. for every task, sends a probe: the source of ``flowcourse.exercises`` (run in a fresh module
   inside the kernel) calls the student's function on inputs drawn for this run from a fresh
   seed and replies with plain data (JSON lists of floats) in a display message. Only that
   message, matched to the probe's own request, is read; nothing the notebook printed counts;
5. judges the data in this process against the reference implementations: the verdict is
   never computed by the submission, so patching ``flowcourse`` or printing "PASS" gains
   nothing, and a forged reply would have to hold the right answers to fresh inputs.

Results: a table per submission on stdout; ``grades.json``, ``grades.csv`` (one row per
submission and task, plus a TOTAL row) and ``totals.csv`` (one row per submission) in ``--out``.

The grader contains time, memory and crashes; it is not a security sandbox for the file system
or the network (a submission runs with the grader's user rights). Grade in a container or as an
unprivileged user when submissions may be malicious.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowcourse import exercises
from flowcourse.exercises import ASSIGNMENTS, PROBE_MIME, Verdict

__all__ = [
    "Limits",
    "SubmissionResult",
    "grade_submission",
    "grade_paths",
    "find_submissions",
    "write_results",
    "main",
]

MAX_FILE_BYTES = 20_000_000  # a submission larger than this is not read
MAX_PAYLOAD_CHARS = 50_000_000
MAX_RESTARTS = 3


@dataclass(frozen=True)
class Limits:
    """Per-submission limits. ``memory_mb`` caps the kernel's address space (0: no cap)."""

    cell_timeout: float = 60.0
    timeout: float = 600.0
    memory_mb: int = 4096
    interrupt_grace: float = 5.0
    startup_timeout: float = 60.0


# --- the kernel: a child process we start, cap, and can always kill --------------------------

# Imported before the notebook runs, so the per-cell limit times the student's code rather
# than loading torch. Nothing is left in the notebook's namespace.
_PREAMBLE = """\
import importlib
for _name in ("numpy", "torch", "matplotlib.pyplot", "seaborn", "flowcourse", "flowcourse.data"):
    importlib.import_module(_name)
del _name, importlib
"""

_LAUNCHER = """\
import resource, sys
limit = int(sys.argv.pop(1))
if limit > 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


@dataclass
class Outcome:
    """What one execute request did. ``status``: ok, error, timeout (interrupted, kernel alive),
    killed (did not stop on interrupt), died (the kernel process ended)."""

    status: str
    ename: str = ""
    evalue: str = ""
    payload: str | None = None
    seconds: float = 0.0

    @property
    def kernel_lost(self) -> bool:
        return self.status in ("killed", "died")


class Kernel:
    """An IPython kernel in its own process group, with an address-space cap."""

    def __init__(self, workdir: Path, limits: Limits) -> None:
        from jupyter_client import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        self.workdir, self.limits = workdir, limits
        connection_file, _ = write_connection_file(
            str(workdir / f"kernel-{secrets.token_hex(4)}.json"), ip="127.0.0.1"
        )
        env = dict(os.environ)
        for name in ("JPY_PARENT_PID", "MPLBACKEND", "PYTHONSTARTUP"):
            env.pop(name, None)
        env.update(
            {
                exercises.GRADING_ENV: "1",
                "MPLBACKEND": "Agg",
                "PYTHONHASHSEED": "0",
                "TQDM_DISABLE": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "IPYTHONDIR": str(workdir / ".ipython"),
                "MPLCONFIGDIR": str(workdir / ".matplotlib"),
            }
        )
        limit = int(limits.memory_mb) * 2**20 if limits.memory_mb else 0
        self.log = open(workdir / "kernel.log", "wb")  # noqa: SIM115 (closed in shutdown)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _LAUNCHER,
                str(limit),
                "-f",
                connection_file,
                "--HistoryManager.hist_file=:memory:",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches every child
        )
        self.client = BlockingKernelClient(connection_file=connection_file)
        self.client.load_connection_file()
        # No heartbeat channel: on a busy machine it declares a slow kernel dead. Whether the
        # kernel lives is asked of its process instead.
        self.client.start_channels(hb=False)
        try:
            self._wait_ready(limits.startup_timeout)
        except RuntimeError as error:
            self.shutdown()
            tail = (workdir / "kernel.log").read_bytes()[-600:].decode("utf-8", "replace")
            raise RuntimeError(f"{error}; the kernel's log ends with: {tail.strip()}") from None

    def _wait_ready(self, timeout: float) -> None:
        """Until the kernel answers a kernel_info request; then drop its start-up messages."""
        from queue import Empty

        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError("the kernel exited while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel did not answer within {timeout:g} s")
            msg_id = self.client.kernel_info()
            try:
                while True:
                    reply = self.client.get_shell_msg(timeout=2.0)
                    if reply.get("parent_header", {}).get("msg_id") == msg_id:
                        break
                break
            except Empty:
                continue
        while True:
            try:
                self.client.get_iopub_msg(timeout=0.2)
            except Empty:
                return

    def alive(self) -> bool:
        return self.process.poll() is None

    def execute(self, code: str, timeout: float) -> Outcome:
        start = time.monotonic()
        msg_id = self.client.execute(
            code, silent=False, store_history=False, allow_stdin=False, stop_on_error=False
        )
        outcome = self._collect(msg_id, start + max(timeout, 0.1))
        if outcome.status == "timeout":
            self._interrupt()
            after = self._collect(msg_id, time.monotonic() + self.limits.interrupt_grace)
            if after.status in ("timeout", "died"):
                self.kill()
                outcome.status = "killed" if after.status == "timeout" else "died"
        outcome.seconds = time.monotonic() - start
        return outcome

    def _collect(self, msg_id: str, deadline: float) -> Outcome:
        """Read this request's iopub messages until it is idle; ignore everything else."""
        from queue import Empty

        outcome = Outcome("ok")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.status = "timeout"
                return outcome
            if not self.alive():
                outcome.status = "died"
                return outcome
            try:
                msg = self.client.get_iopub_msg(timeout=min(remaining, 0.5))
            except Empty:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg.get("msg_type"), msg.get("content", {})
            if kind == "error":
                outcome.status = "error"
                outcome.ename = str(content.get("ename", ""))[:200]
                outcome.evalue = str(content.get("evalue", ""))[:600]
            elif kind == "display_data":
                data = content.get("data", {}).get(PROBE_MIME)
                if isinstance(data, str) and len(data) <= MAX_PAYLOAD_CHARS:
                    outcome.payload = data
            elif kind == "status" and content.get("execution_state") == "idle":
                return outcome

    def _interrupt(self) -> None:
        try:
            os.kill(self.process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def shutdown(self) -> None:
        self.kill()
        try:
            self.client.stop_channels()
        except Exception:
            pass
        self.log.close()


# --- one submission -------------------------------------------------------------------------


@dataclass
class SubmissionResult:
    """The grade of one file. ``verdicts`` has one entry per task of the assignment."""

    path: str
    submission: str
    student: str
    assignment: str
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seed: int | None = None  # of the grader's inputs: grade again with --seed to reproduce

    @property
    def points(self) -> int:
        return sum(v.points for v in self.verdicts)

    @property
    def max_points(self) -> int:
        if self.assignment in ASSIGNMENTS:
            return ASSIGNMENTS[self.assignment].points
        return sum(v.max_points for v in self.verdicts)


def _read_notebook(path: Path):
    """(notebook, None) or (None, reason)."""
    import nbformat

    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return (
                None,
                f"the file is {size / 1e6:.0f} MB, over the {MAX_FILE_BYTES / 1e6:.0f} MB limit",
            )
        text = path.read_bytes().decode("utf-8")
        nb = nbformat.reads(text, as_version=4)
    except Exception as error:
        return None, f"not a readable notebook ({type(error).__name__}: {str(error)[:300]})"
    if not isinstance(nb.get("cells"), list):
        return None, "not a readable notebook (it has no list of cells)"
    return nb, None


def identify_assignment(nb, path: Path, override: str | None = None) -> str | None:
    """The assignment key: ``override``, the notebook's metadata, the file name, or its code."""
    if override:
        return override
    if nb is not None:
        key = nb.get("metadata", {}).get("flowcourse", {}).get("assignment")
        if key in ASSIGNMENTS:
            return key
    for key in ASSIGNMENTS:
        if key in path.name:
            return key
    if nb is None:
        return None
    code = "\n".join(c.get("source", "") for c in nb.cells if c.get("cell_type") == "code")
    scores = {
        key: sum(bool(re.search(rf"^\s*def\s+{t.name}\b", code, re.M)) for t in a.tasks)
        for key, a in ASSIGNMENTS.items()
    }
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else None


@functools.cache
def _probe_source() -> str:
    return Path(exercises.__file__).read_text()


def _probe_code(task: str, inputs: dict) -> str:
    source = _probe_source()
    return (
        "def __flowcourse_probe__(source, task, inputs):\n"
        "    import sys, types\n"
        "    module = types.ModuleType('_flowcourse_grader_probe')\n"
        "    sys.modules[module.__name__] = module\n"
        "    exec(compile(source, '<flowcourse grader>', 'exec'), module.__dict__)\n"
        "    module.kernel_probe(task, inputs, globals())\n"
        f"__flowcourse_probe__({source!r}, {task!r}, {json.dumps(inputs)!r})\n"
        "del __flowcourse_probe__\n"
    )


def _cell_problem(index: int, outcome: Outcome, limits: Limits) -> str | None:
    cell = f"code cell {index + 1}"
    if outcome.status == "ok":
        return None
    if outcome.status in ("timeout", "killed"):
        how = "interrupted" if outcome.status == "timeout" else "killed (it ignored the interrupt)"
        return f"{cell} ran longer than {limits.cell_timeout:g} s and was {how}: an infinite loop?"
    if outcome.status == "died":
        return (
            f"{cell} crashed the kernel (it exited or ran out of memory; the limit is "
            f"{limits.memory_mb} MB)"
        )
    text = f"{outcome.ename}: {outcome.evalue}".strip()
    if outcome.ename == "MemoryError" or "can't allocate memory" in outcome.evalue:
        return f"{cell} ran out of memory (limit {limits.memory_mb} MB): {text[:200]}"
    return f"{cell} raised {text[:300]}"


def _defining_cells(cells: list[str], name: str) -> list[int]:
    pattern = re.compile(rf"^\s*(def|class)\s+{re.escape(name)}\b", re.M)
    return [i for i, source in enumerate(cells) if pattern.search(source)]


def grade_submission(
    path: str | Path,
    limits: Limits = Limits(),
    *,
    assignment: str | None = None,
    root: Path | None = None,
    seed: int | None = None,
) -> SubmissionResult:
    """Grade one submission file; never raises on a bad submission."""
    path = Path(path)
    start = time.monotonic()
    relative = str(path.relative_to(root)) if root and path.is_relative_to(root) else path.name
    parts = Path(relative).parts
    student = parts[0] if len(parts) > 1 else Path(relative).stem
    nb, problem = _read_notebook(path)
    key = identify_assignment(nb, path, assignment)
    result = SubmissionResult(str(path), relative, student, key or "unknown")
    if key not in ASSIGNMENTS:
        result.notes.append(
            problem or "could not tell which assignment this is (pass --assignment)"
        )
        result.seconds = time.monotonic() - start
        return result
    tasks = ASSIGNMENTS[key].tasks
    if nb is None:
        result.verdicts = [exercises._fail(t, problem) for t in tasks]
        result.notes.append(problem)
        result.seconds = time.monotonic() - start
        return result
    cells = [c.get("source", "") for c in nb.cells if c.get("cell_type") == "code"]
    cells = [s if isinstance(s, str) else "".join(s) for s in cells]
    run_seed = secrets.randbits(32) if seed is None else seed
    result.seed = run_seed
    try:
        verdicts, notes = _run(cells, tasks, limits, start, run_seed)
    except Exception as error:  # the grader's own failure: report it, go on
        verdicts = [
            exercises._fail(t, f"the grader failed: {type(error).__name__}: {error}") for t in tasks
        ]
        notes = [f"grader error: {type(error).__name__}: {error}"]
    result.verdicts, result.notes = verdicts, notes
    result.seconds = time.monotonic() - start
    return result


def _start_kernel(workdir: Path, limits: Limits, attempts: int = 3) -> Kernel:
    """A started kernel; a start can fail for reasons of the machine (a port taken meanwhile)."""
    for attempt in range(attempts):
        try:
            return Kernel(workdir, limits)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _run(cells, tasks, limits: Limits, start: float, seed: int):
    deadline = start + limits.timeout
    cell_problems: dict[int, str] = {}
    skip: set[int] = set()
    verdicts: dict[str, Verdict] = {}
    notes: list[str] = []
    restarts = 0
    with tempfile.TemporaryDirectory(prefix="flowcourse-grade-") as tmp:
        # The kernel sees only a copy, in a folder of its own.
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        while len(verdicts) < len(tasks):
            if time.monotonic() >= deadline:
                break
            try:
                kernel = _start_kernel(workdir, limits)
            except Exception as error:
                notes.append(f"the kernel did not start: {type(error).__name__}: {error}")
                break
            try:
                warm = kernel.execute(_PREAMBLE, limits.startup_timeout)
                if warm.kernel_lost:
                    notes.append("the kernel died while the grader imported torch")
                    restarts += 1
                    if restarts <= MAX_RESTARTS:
                        continue
                    break
                if warm.status != "ok":
                    notes.append(f"the grader's imports failed: {warm.ename}: {warm.evalue}")
                lost = False
                for i, source in enumerate(cells):
                    if i in skip or not source.strip():
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    outcome = kernel.execute(source, min(limits.cell_timeout, remaining))
                    message = _cell_problem(i, outcome, limits)
                    if message and i not in cell_problems:
                        cell_problems[i] = message
                    if outcome.kernel_lost:
                        skip.add(i)
                        lost = True
                        break
                if lost:
                    restarts += 1
                    if restarts <= MAX_RESTARTS:
                        continue  # a fresh kernel, without the cell that lost the last one
                    break
                for k, task in enumerate(tasks):
                    if task.name in verdicts:
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    inputs = exercises.make_inputs(task.name, seed + 7919 * k)
                    budget = min(task.timeout, remaining)
                    outcome = kernel.execute(_probe_code(task.name, inputs), budget)
                    verdicts[task.name] = _verdict(
                        task, inputs, outcome, limits, cells, cell_problems, budget
                    )
                    if outcome.kernel_lost:
                        break  # later tasks need a fresh kernel
                restarts += not kernel.alive()
                if restarts > MAX_RESTARTS:
                    break
            finally:
                kernel.shutdown()
    for task in tasks:
        if task.name not in verdicts:
            if time.monotonic() >= deadline:
                why = f"not graded: the submission used up its {limits.timeout:g} s"
            else:
                why = "not graded: the kernel kept crashing"
            verdicts[task.name] = exercises._fail(task, why)
    notes.extend(cell_problems[i] for i in sorted(cell_problems))
    return [verdicts[t.name] for t in tasks], notes


def _verdict(
    task, inputs, outcome: Outcome, limits: Limits, cells, cell_problems, budget: float
) -> Verdict:
    name = task.name
    if outcome.status in ("timeout", "killed"):
        if budget < task.timeout:
            return exercises._fail(
                task, f"not graded: the submission used up its {limits.timeout:g} s"
            )
        return exercises._fail(
            task,
            f"calling `{name}` took longer than {task.timeout:g} s (an infinite loop, or far "
            "too slow) and was stopped",
        )
    if outcome.status == "died":
        return exercises._fail(
            task,
            f"calling `{name}` crashed the kernel (out of memory? the limit is "
            f"{limits.memory_mb} MB)",
        )
    if outcome.payload is None:
        if outcome.ename == "MemoryError":
            return exercises._fail(task, f"calling `{name}` ran out of memory")
        detail = f"{outcome.ename}: {outcome.evalue}" if outcome.ename else "no result"
        return exercises._fail(task, f"the probe of `{name}` returned nothing ({detail[:300]})")
    try:
        payload = json.loads(outcome.payload)
    except ValueError:
        return exercises._fail(task, "the probe's reply was not valid data")
    verdict = exercises.judge(name, inputs, payload)
    if payload.get("status") == "missing":
        defining = _defining_cells(cells, name)
        problems = [cell_problems[i] for i in defining if i in cell_problems]
        if problems:
            verdict.message += ". " + "; ".join(problems)
    return verdict


# --- many submissions -----------------------------------------------------------------------


def find_submissions(paths: list[str | Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``([(file, root)], skipped)``: notebooks named or found under folders (recursively)."""
    found, skipped = [], []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or ".ipynb_checkpoints" in f.parts:
                    continue
                (found.append((f, p)) if f.suffix == ".ipynb" else skipped.append(f))
        elif p.is_file():
            found.append((p, p.parent))
        else:
            skipped.append(p)
    return found, skipped


def grade_paths(
    paths: list[str | Path],
    limits: Limits = Limits(),
    *,
    assignment: str | None = None,
    jobs: int = 1,
    seed: int | None = None,
    progress=None,
) -> list[SubmissionResult]:
    """Grade every submission found under ``paths``, ``jobs`` at a time (one kernel each)."""
    found, _ = find_submissions(paths)

    def one(item):
        file, root = item
        result = grade_submission(file, limits, assignment=assignment, root=root, seed=seed)
        if progress is not None:
            progress(result)
        return result

    if jobs <= 1:
        return [one(item) for item in found]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, found))


def format_table(result: SubmissionResult, width: int = 110) -> str:
    title = ASSIGNMENTS[result.assignment].title if result.assignment in ASSIGNMENTS else "?"
    lines = [
        f"{result.submission}  [{result.assignment}: {title}]  "
        f"{result.points}/{result.max_points} points  ({result.seconds:.1f} s)"
    ]
    if result.verdicts:
        name_w = max(len("task"), *(len(v.task) for v in result.verdicts))
        lines.append(f"  {'task':<{name_w}}  points  verdict  message")
        indent = " " * (name_w + 21)
        for v in result.verdicts:
            head = f"  {v.task:<{name_w}}  {f'{v.points}/{v.max_points}':>6}  {v.status:<7}  "
            body = textwrap.wrap(v.message, max(40, width - len(head))) or [""]
            lines.append(head + body[0])
            lines.extend(indent + b for b in body[1:3])
            if len(body) > 3:
                lines[-1] += " ..."
    for note in result.notes:
        lines.append("  note: " + note[:300])
    return "\n".join(lines)


CSV_COLUMNS = [
    "student",
    "submission",
    "assignment",
    "task",
    "points",
    "max_points",
    "verdict",
    "message",
]
TOTALS_COLUMNS = ["student", "submission", "assignment", "points", "max_points", "percent"]


def write_results(results: list[SubmissionResult], out: str | Path, limits: Limits) -> list[Path]:
    """Write grades.json, grades.csv and totals.csv into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "grader": "flowcourse grade",
        "limits": asdict(limits),
        "submissions": [
            {
                "student": r.student,
                "submission": r.submission,
                "path": r.path,
                "assignment": r.assignment,
                "points": r.points,
                "max_points": r.max_points,
                "seconds": round(r.seconds, 2),
                "seed": r.seed,
                "tasks": [
                    {
                        "task": v.task,
                        "points": v.points,
                        "max_points": v.max_points,
                        "verdict": v.status,
                        "message": v.message,
                    }
                    for v in r.verdicts
                ],
                "notes": r.notes,
            }
            for r in results
        ],
    }
    paths = [out / "grades.json", out / "grades.csv", out / "totals.csv"]
    paths[0].write_text(json.dumps(document, indent=2) + "\n")
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            for v in r.verdicts:
                writer.writerow(
                    [
                        r.student,
                        r.submission,
                        r.assignment,
                        v.task,
                        v.points,
                        v.max_points,
                        v.status,
                        v.message,
                    ]
                )
            note = "; ".join(r.notes)
            writer.writerow(
                [r.student, r.submission, r.assignment, "TOTAL", r.points, r.max_points, "", note]
            )
    with open(paths[2], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TOTALS_COLUMNS)
        for r in results:
            percent = round(100 * r.points / r.max_points, 1) if r.max_points else 0.0
            writer.writerow(
                [r.student, r.submission, r.assignment, r.points, r.max_points, percent]
            )
    return paths


def main(
    paths: list[str],
    out: str = "grades",
    *,
    assignment: str | None = None,
    jobs: int = 1,
    limits: Limits = Limits(),
    seed: int | None = None,
) -> int:
    """The ``grade`` command. Exit 0 when grading ran (whatever the grades), 2 on misuse."""
    if assignment is not None and assignment not in ASSIGNMENTS:
        print(f"unknown assignment {assignment!r}; choose one of {', '.join(ASSIGNMENTS)}")
        return 2
    found, skipped = find_submissions(paths)
    if not found:
        print(f"no notebooks (*.ipynb) found in {', '.join(map(str, paths))}")
        return 2
    print(f"grading {len(found)} submission(s), {jobs} at a time", flush=True)
    start = time.monotonic()

    def show(result):
        print(format_table(result) + "\n", flush=True)

    results = grade_paths(paths, limits, assignment=assignment, jobs=jobs, seed=seed, progress=show)
    written = write_results(results, out, limits)
    for f in skipped:
        print(f"skipped (not a .ipynb file): {f}")
    total = time.monotonic() - start
    files = ", ".join(map(str, written))
    print(f"graded {len(results)} submission(s) in {total:.1f} s; wrote {files}")
    return 0
