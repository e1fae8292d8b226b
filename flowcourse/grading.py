"""Grade submitted assignment notebooks: ``python -m flowcourse grade PATH... --out DIR``.

A submission is untrusted code. For each file the grader

1. reads it once into memory (a hash is kept to notice a file that changes while graded) and
   keeps only the source of its code cells: outputs are dropped before anything runs, so a
   notebook saved with huge outputs grades like its code. A file that is not a notebook, or a
   notebook with wrong types in places (a cell whose source is a number, metadata of the
   wrong shape), gets a row with a note saying what was wrong; it never stops the batch;
2. tells the assignment from the notebook's metadata (``flowcourse.assignment``, set by
   ``release``), else from the file name, else from the functions it defines;
3. starts a kernel in a sandbox of its own (:mod:`flowcourse.sandbox`: bubblewrap, user
   ``nobody``, its own pid, mount and network namespaces, no view of the submissions, the
   grader or other kernels, and a copy of ``flowcourse`` without the reference solutions),
   with an address-space cap (``--memory-mb``), then imports torch there before any cell runs;
4. runs the code cells in order with a wall-clock limit per cell (``--cell-timeout``) and for
   the submission (``--timeout``). Errors are recorded and execution goes on. A cell that
   overruns is interrupted; a kernel that ignores the interrupt, dies or exits is killed with
   its namespace and restarted without that cell;
5. for every task, sends a probe (:mod:`flowcourse.assignments.kernel`, as source text): it
   calls the student's function on inputs drawn for this run and replies with plain data,
   matched to the probe's own request; the earlier tasks a task depends on are replaced by
   their references, sent only when that task is graded;
6. judges the data in this process (:func:`flowcourse.assignments.core.judge`): the verdict is
   never computed by the submission, so patching anything in the kernel, printing "PASS" or
   calling the references (absent from the sandbox, and named in a note) gains nothing.

Results: a table per submission on stdout; ``grades.json``, ``grades.csv`` (one row per
submission and task, plus a TOTAL row) and ``totals.csv`` (one row per submission) in
``--out``. ``--shard K/N`` grades every N-th submission from the K-th, and
``python -m flowcourse merge DIR... --out DIR`` combines the shards' results.
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowcourse import sandbox
from flowcourse.assignments import ASSIGNMENTS, TASKS, Assignment, find
from flowcourse.assignments import kernel as kernel_side
from flowcourse.assignments.core import Verdict, fail, judge, make_inputs, references_source

__all__ = [
    "Limits",
    "SubmissionResult",
    "grade_submission",
    "grade_paths",
    "find_submissions",
    "select_shard",
    "write_results",
    "merge",
    "main",
]

MAX_FILE_BYTES = 256_000_000  # a larger file is not read at all
MAX_CODE_CHARS = 2_000_000  # the code cells of a notebook, outputs not counted
MAX_PAYLOAD_CHARS = 50_000_000
MAX_RESTARTS = 3
GRADING_ENV = "FLOWCOURSE_GRADING"


@dataclass(frozen=True)
class Limits:
    """Per-submission limits. ``memory_mb`` caps the kernel's address space (0: no cap)."""

    cell_timeout: float = 60.0
    timeout: float = 600.0
    memory_mb: int = 4096
    interrupt_grace: float = 5.0
    startup_timeout: float = 60.0


# --- reading a submission -----------------------------------------------------------------


@dataclass
class Notebook:
    """What the grader keeps of a file: its code cells' source, and what was wrong with it."""

    cells: list[str]
    metadata_key: str | None
    notes: list[str] = field(default_factory=list)
    digest: str = ""


def read_notebook(path: Path) -> tuple[Notebook | None, str | None]:
    """``(notebook, None)``, or ``(None, why it is not a gradable notebook)``. Never raises."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return (
                None,
                f"the file is {size / 1e6:.0f} MB, over the {MAX_FILE_BYTES // 10**6} MB limit",
            )
        data = path.read_bytes()
    except OSError as error:
        return None, f"the file could not be read ({type(error).__name__}: {error})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        nb = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not a notebook: the file is not UTF-8 text"
    except ValueError as error:
        return None, f"not a notebook: the file is not valid JSON ({str(error)[:200]})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, "not a notebook: the JSON has no list of cells"
    notes: list[str] = []
    metadata = nb.get("metadata")
    key = None
    if isinstance(metadata, dict):
        own = metadata.get("flowcourse")
        if isinstance(own, dict) and isinstance(own.get("assignment"), str):
            key = own["assignment"]
        elif own is not None:
            notes.append("the notebook's metadata.flowcourse is not a mapping: ignored")
    elif metadata is not None:
        notes.append("the notebook's metadata is not a mapping: ignored")
    cells, number = [], 0
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            notes.append(f"cell {index + 1} is not a JSON object: skipped")
            continue
        if cell.get("cell_type") != "code":
            continue
        number += 1
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            source = "".join(source)
        if not isinstance(source, str):
            notes.append(
                f"code cell {number}'s source is not text ({type(source).__name__}): skipped"
            )
            source = ""
        cells.append(source)
    if sum(map(len, cells)) > MAX_CODE_CHARS:
        return None, f"its code cells hold over {MAX_CODE_CHARS:,} characters: not graded"
    return Notebook(cells, key, notes, digest), None


def identify_assignment(
    nb: Notebook | None, path: Path, override: str | None = None
) -> Assignment | None:
    """The assignment: ``override``, the notebook's metadata, the file name, or its code."""
    if override:
        return find(override)
    if nb is not None and find(nb.metadata_key):
        return find(nb.metadata_key)
    for key, assignment in ASSIGNMENTS.items():
        if key in path.name or any(alias in path.name for alias in assignment.aliases):
            return assignment
    if nb is None:
        return None
    code = "\n".join(nb.cells)
    scores = {
        key: sum(bool(re.search(rf"^\s*def\s+{t.name}\b", code, re.M)) for t in a.tasks)
        for key, a in ASSIGNMENTS.items()
    }
    best = max(scores, key=scores.get)
    return ASSIGNMENTS[best] if scores[best] > 0 else None


# --- what the code says about itself: references and the package's own solutions ------------

_REFERENCE_USE = re.compile(
    r"flowcourse\.assignments|flowcourse\.exercises\s+import\s+(?!\(?\s*(check|report)\b)"
    r"|\bexercises\.(?!check\b|report\b)\w+|\bREFERENCES\b|\bref_\w+\s*\("
)


def reference_notes(cells: list[str]) -> list[str]:
    """Notes for code cells that reach for the course's reference implementations."""
    notes = []
    for index, source in enumerate(cells):
        match = _REFERENCE_USE.search(source)
        if match:
            notes.append(
                f"code cell {index + 1} reaches for the course's reference implementations "
                f"({match.group(0).strip()!r}): they are not available while grading, so "
                "tasks are graded on the student's own code"
            )
    return notes


# CPython 3.11's parser is not safe to call from two threads at once ("AST constructor
# recursion depth mismatch"), and submissions are graded in threads.
_PARSE_LOCK = threading.Lock()


def library_use(cells: list[str], task) -> str | None:
    """The package function that computes ``task`` if the task's own function calls it."""
    if not task.library:
        return None
    names: dict[str, str] = {}  # local name -> dotted origin
    functions = []
    for source in cells:
        try:
            with _PARSE_LOCK:
                tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flowcourse"):
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("flowcourse"):
                        names[alias.asname or alias.name.split(".")[0]] = (
                            alias.name if alias.asname else alias.name.split(".")[0]
                        )
            elif isinstance(node, ast.FunctionDef) and node.name == task.name:
                functions.append(node)
    for function in functions:
        for node in ast.walk(function):
            if not isinstance(node, ast.Call):
                continue
            dotted = _dotted(node.func)
            if not dotted:
                continue
            head, _, rest = dotted.partition(".")
            origin = names.get(head)
            if origin is None:
                continue
            full = f"{origin}.{rest}" if rest else origin
            if full.rpartition(".")[2] in task.library:
                return full
    return None


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


# --- the kernel: a sandboxed child process we start, cap, and can always kill -----------------

# Imported before the notebook runs, so the per-cell limit times the student's code rather
# than loading torch. Nothing is left in the notebook's namespace.
_PREAMBLE = """\
import importlib
for _name in ("numpy", "torch", "matplotlib.pyplot", "seaborn", "flowcourse", "flowcourse.data"):
    importlib.import_module(_name)
del _name, importlib
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
    ending: str = ""  # how a dead kernel ended, for messages

    @property
    def kernel_lost(self) -> bool:
        return self.status in ("killed", "died")


class Kernel:
    """An IPython kernel in a sandbox (or a plain child process), with an address-space cap."""

    def __init__(self, workdir: Path, limits: Limits, *, view: Path, contained: bool) -> None:
        from jupyter_client import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        self.limits, self.contained = limits, contained
        sockets = workdir / f"sockets-{secrets.token_hex(3)}"
        sockets.mkdir()
        home = Path("/home/student") if contained else workdir / "home"
        if not contained:
            home.mkdir(exist_ok=True)
        connection_file, _ = write_connection_file(
            str(sockets / "kernel.json"), ip=str(sockets / "k"), transport="ipc"
        )
        os.chmod(connection_file, 0o644)
        if contained and os.geteuid() == 0:
            os.chown(sockets, sandbox.NOBODY, sandbox.NOBODY)
            os.chown(connection_file, sandbox.NOBODY, sandbox.NOBODY)
        env = {
            GRADING_ENV: "1",
            "MPLBACKEND": "Agg",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "IPYTHONDIR": str(home / ".ipython"),
            "MPLCONFIGDIR": str(home / ".matplotlib"),
        }
        limit = int(limits.memory_mb) * 2**20 if limits.memory_mb else 0
        status_read, status_write = os.pipe()
        command, full_env = sandbox.kernel_command(
            [str(limit), "-f", connection_file, "--HistoryManager.hist_file=:memory:"],
            home=home,
            sockets=sockets,
            view=view,
            sandbox=contained,
            env=env,
            status_fd=status_write if contained else None,
        )
        self.log_path = workdir / f"kernel-{secrets.token_hex(3)}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in shutdown)
        self.status: dict = {}
        try:
            self.process = subprocess.Popen(
                command,
                cwd=str(workdir if contained else home),
                env=full_env or None,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches bwrap
                pass_fds=(status_write,) if contained else (),
            )
        finally:
            os.close(status_write)
        threading.Thread(target=self._read_status, args=(status_read,), daemon=True).start()
        self.client = BlockingKernelClient(connection_file=connection_file)
        self.client.load_connection_file()
        # No heartbeat channel: on a busy machine it declares a slow kernel dead. Whether the
        # kernel lives is asked of its process instead.
        self.client.start_channels(hb=False)
        try:
            self._wait_ready(limits.startup_timeout)
        except RuntimeError as error:
            self.shutdown()
            tail = self.log_path.read_bytes()[-600:].decode("utf-8", "replace")
            raise RuntimeError(f"{error}; the kernel's log ends with: {tail.strip()}") from None

    def _read_status(self, fd: int) -> None:
        """bwrap's JSON status lines: the sandbox's pid, then the command's exit code."""
        with os.fdopen(fd, "rb") as stream:
            buffer = b""
            for chunk in iter(lambda: stream.read(4096), b""):
                buffer += chunk
                while b"}" in buffer:
                    text, _, buffer = buffer.partition(b"}")
                    try:
                        self.status.update(json.loads(text.decode("utf-8", "replace") + "}"))
                    except ValueError:
                        pass

    def _wait_ready(self, timeout: float) -> None:
        """Until the kernel answers a kernel_info request; then drop its start-up messages."""
        from queue import Empty

        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"the kernel {self.ending()} while starting")
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

    def ending(self) -> str:
        """How the kernel process ended, in words (``exited with code 1``, ``was killed ...``)."""
        code = self.process.poll()
        if code is None:
            return "is still running"
        if self.contained:
            code = self.status.get("exit-code", code)
            number = code - 128 if code > 128 else 0
        else:
            number = -code if code < 0 else 0
        if number:
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            why = {
                "SIGKILL": "the machine's out-of-memory killer?",
                "SIGSEGV": "a crash in native code, often an allocation failing under the "
                f"{self.limits.memory_mb} MB memory cap",
                "SIGABRT": "an abort in native code, often an allocation failing under the "
                f"{self.limits.memory_mb} MB memory cap",
            }.get(name, "")
            return f"was killed by {name}" + (f" ({why})" if why else "")
        return f"exited with code {code} (the code called exit(), sys.exit() or os._exit())"

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
        if outcome.status == "died":
            outcome.ending = self.ending()
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
                data = content.get("data", {}).get(kernel_side.PROBE_MIME)
                if isinstance(data, str) and len(data) <= MAX_PAYLOAD_CHARS:
                    outcome.payload = data
            elif kind == "status" and content.get("execution_state") == "idle":
                return outcome

    def _kernel_pid(self) -> int | None:
        """The kernel's pid on this machine: bwrap's child's child, or our own child."""
        if not self.contained:
            return self.process.pid
        init = self.status.get("child-pid")
        try:
            children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
            return int(children[0]) if children else None
        except (OSError, ValueError, TypeError):
            return None

    def _interrupt(self) -> None:
        pid = self._kernel_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        # Killing the sandbox's first process ends its pid namespace, and with it every
        # process the submission started; killpg ends bwrap itself.
        init = self.status.get("child-pid") if self.contained else None
        for kill in (lambda: os.kill(int(init), signal.SIGKILL) if init else None,
                     lambda: os.killpg(self.process.pid, signal.SIGKILL)):  # fmt: skip
            try:
                kill()
            except (ProcessLookupError, PermissionError, ValueError, TypeError):
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
    max_points: int = 0

    @property
    def points(self) -> int:
        return sum(v.points for v in self.verdicts)


def _student(path: Path, root: Path | None) -> tuple[str, str]:
    relative = str(path.relative_to(root)) if root and path.is_relative_to(root) else path.name
    parts = Path(relative).parts
    return relative, (parts[0] if len(parts) > 1 else Path(relative).stem)


def grade_submission(
    path: str | Path,
    limits: Limits = Limits(),
    *,
    assignment: str | None = None,
    root: Path | None = None,
    seed: int | None = None,
    view: Path | None = None,
    contained: bool = True,
) -> SubmissionResult:
    """Grade one submission file; never raises, whatever the file holds."""
    path = Path(path)
    start = time.monotonic()
    relative, student = _student(path, root)
    result = SubmissionResult(str(path), relative, student, "unknown")
    try:
        _grade(result, path, limits, assignment, seed, view, contained)
    except Exception as error:  # the grader's own failure on this file: report it, go on
        result.notes.append(f"the grader failed on this file: {type(error).__name__}: {error}")
    result.seconds = time.monotonic() - start
    return result


def _grade(result, path, limits, override, seed, view, contained) -> None:
    nb, problem = read_notebook(path)
    spec = identify_assignment(nb, path, override)
    if spec is None:
        result.notes.append(
            problem or "could not tell which assignment this is (pass --assignment)"
        )
        return
    result.assignment, result.max_points = spec.key, spec.points
    if nb is None:
        result.verdicts = [fail(t, problem) for t in spec.tasks]
        result.notes.append(problem)
        return
    result.notes.extend(nb.notes)
    result.notes.extend(reference_notes(nb.cells))
    result.seed = secrets.randbits(32) if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="flowcourse-grade-") as tmp:
        own_view = view
        if own_view is None:
            own_view = sandbox.package_view(Path(tmp) / "view")
        verdicts, notes = _run(nb.cells, spec, limits, result.seed, Path(tmp), own_view, contained)
    result.verdicts = verdicts
    result.notes.extend(notes)
    after, _ = read_notebook(path)
    if after is None or after.digest != nb.digest:
        result.notes.append("the file changed while it was graded (was it written to?)")


def _start_kernel(workdir: Path, limits: Limits, view: Path, contained: bool, attempts=3):
    """A started kernel; a start can fail for reasons of the machine (a busy moment)."""
    for attempt in range(attempts):
        try:
            return Kernel(workdir, limits, view=view, contained=contained)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


@functools.cache
def _probe_source() -> str:
    return Path(kernel_side.__file__).read_text()


def _probe_code(task, inputs: dict) -> str:
    depends = [TASKS[name].reference for name in task.depends]
    refs = references_source(depends) if depends else ""
    arguments = (_probe_source(), json.dumps(task.spec()), json.dumps(inputs), refs)
    return (
        "def __flowcourse_probe__(source, spec, inputs, references):\n"
        "    import types\n"
        "    module = types.ModuleType('_flowcourse_grader_probe')\n"
        "    exec(compile(source, '<flowcourse grader>', 'exec'), module.__dict__)\n"
        "    module.kernel_probe(spec, inputs, references, globals())\n"
        f"__flowcourse_probe__(*{arguments!r})\n"
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
        return f"{cell}: the kernel {outcome.ending}"
    text = f"{outcome.ename}: {outcome.evalue}".strip()
    if outcome.ename == "MemoryError" or "can't allocate memory" in outcome.evalue:
        return f"{cell} ran out of memory (limit {limits.memory_mb} MB): {text[:200]}"
    return f"{cell} raised {text[:300]}"


def _defining_cells(cells: list[str], name: str) -> list[int]:
    pattern = re.compile(rf"^\s*(def|class)\s+{re.escape(name)}\b", re.M)
    return [i for i, source in enumerate(cells) if pattern.search(source)]


def _run(cells, spec: Assignment, limits: Limits, seed: int, workdir: Path, view, contained):
    start = time.monotonic()
    deadline = start + limits.timeout
    tasks = spec.tasks
    cell_problems: dict[int, str] = {}
    skip: set[int] = set()
    verdicts: dict[str, Verdict] = {}
    notes: list[str] = []
    restarts = 0
    while len(verdicts) < len(tasks):
        if time.monotonic() >= deadline:
            break
        try:
            kernel = _start_kernel(workdir, limits, view, contained)
        except Exception as error:
            notes.append(f"the kernel did not start: {type(error).__name__}: {error}")
            break
        try:
            warm = kernel.execute(_PREAMBLE, limits.startup_timeout)
            if warm.kernel_lost:
                notes.append(f"the kernel {warm.ending or 'died'} while the grader imported torch")
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
                inputs = make_inputs(task, seed + 7919 * k)
                budget = min(task.timeout, remaining)
                outcome = kernel.execute(_probe_code(task, inputs), budget)
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
            verdicts[task.name] = fail(task, why)
    notes.extend(cell_problems[i] for i in sorted(cell_problems))
    return [verdicts[t.name] for t in tasks], notes


def _verdict(task, inputs, outcome: Outcome, limits, cells, cell_problems, budget) -> Verdict:
    name = task.name
    if outcome.status in ("timeout", "killed"):
        if budget < task.timeout:
            return fail(task, f"not graded: the submission used up its {limits.timeout:g} s")
        return fail(
            task,
            f"calling `{name}` took longer than {task.timeout:g} s (an infinite loop, or far "
            "too slow) and was stopped",
        )
    if outcome.status == "died":
        return fail(task, f"calling `{name}`: the kernel {outcome.ending}")
    if outcome.payload is None:
        if outcome.ename == "MemoryError":
            return fail(task, f"calling `{name}` ran out of memory")
        detail = f"{outcome.ename}: {outcome.evalue}" if outcome.ename else "no result"
        return fail(task, f"the probe of `{name}` returned nothing ({detail[:300]})")
    try:
        payload = json.loads(outcome.payload)
    except ValueError:
        return fail(task, "the probe's reply was not valid data")
    verdict = judge(task, inputs, payload)
    borrowed = library_use(cells, task)
    if borrowed and verdict.passed:
        return fail(
            task,
            f"`{name}` calls {borrowed}, the package's own version of this task: write it "
            "yourself (the package's building blocks are fine elsewhere)",
        )
    if isinstance(payload, dict) and payload.get("status") == "missing":
        problems = [cell_problems[i] for i in _defining_cells(cells, name) if i in cell_problems]
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


def select_shard(items: list, shard: tuple[int, int] | None) -> list:
    """Shard ``(k, n)`` (1-based): every n-th item from the k-th, in the listed order."""
    if shard is None:
        return list(items)
    k, n = shard
    return [item for i, item in enumerate(items) if i % n == k - 1]


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)`` with ``1 <= K <= N``; ValueError with a clear message."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--shard expects K/N with 1 <= K <= N (e.g. 3/10), got {text!r}")
    return int(match[1]), int(match[2])


def grade_paths(
    paths: list[str | Path],
    limits: Limits = Limits(),
    *,
    assignment: str | None = None,
    jobs: int = 1,
    seed: int | None = None,
    shard: tuple[int, int] | None = None,
    contained: bool = True,
    progress=None,
) -> list[SubmissionResult]:
    """Grade every submission found under ``paths`` (this shard of them), ``jobs`` at a time."""
    found, _ = find_submissions(paths)
    found = select_shard(found, shard)
    with tempfile.TemporaryDirectory(prefix="flowcourse-view-") as tmp:
        view = sandbox.package_view(Path(tmp))

        def one(item):
            file, root = item
            result = grade_submission(
                file,
                limits,
                assignment=assignment,
                root=root,
                seed=seed,
                view=view,
                contained=contained,
            )
            if progress is not None:
                progress(result)
            return result

        if jobs <= 1:
            return [one(item) for item in found]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(one, found))


def format_table(result: SubmissionResult, width: int = 110) -> str:
    spec = find(result.assignment)
    title = spec.title if spec else "?"
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


def document(results: list[SubmissionResult], limits: Limits, contained: bool = True) -> dict:
    """Everything ``grades.json`` holds."""
    return {
        "grader": "flowcourse grade",
        "limits": asdict(limits),
        "sandbox": "bubblewrap" if contained else "none (--no-sandbox)",
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


def write_document(doc: dict, out: str | Path) -> list[Path]:
    """Write ``doc`` as grades.json, grades.csv and totals.csv into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "grades.json", out / "grades.csv", out / "totals.csv"]
    paths[0].write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(paths[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for s in doc["submissions"]:
            who = [s["student"], s["submission"], s["assignment"]]
            for v in s["tasks"]:
                writer.writerow(
                    [*who, v["task"], v["points"], v["max_points"], v["verdict"], v["message"]]
                )
            note = "; ".join(s["notes"])
            writer.writerow([*who, "TOTAL", s["points"], s["max_points"], "", note])
    with open(paths[2], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(TOTALS_COLUMNS)
        for s in doc["submissions"]:
            percent = round(100 * s["points"] / s["max_points"], 1) if s["max_points"] else 0.0
            row = [s["student"], s["submission"], s["assignment"], s["points"], s["max_points"]]
            writer.writerow([*row, percent])
    return paths


def write_results(
    results: list[SubmissionResult], out: str | Path, limits: Limits, contained: bool = True
) -> list[Path]:
    """Write grades.json, grades.csv and totals.csv into ``out``; returns their paths."""
    return write_document(document(results, limits, contained), out)


def merge(folders: list[str | Path], out: str | Path) -> list[Path]:
    """Combine the ``grades.json`` of several shards into one set of result files."""
    docs = []
    for folder in map(Path, folders):
        path = folder / "grades.json" if folder.is_dir() else folder
        try:
            docs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a grades.json of flowcourse grade ({error})") from None
    if not docs:
        raise ValueError("nothing to merge: give the --out folders of the shards")
    merged = dict(docs[0])
    seen, submissions = set(), []
    for doc in docs:
        for s in doc.get("submissions", []):
            if s["path"] not in seen:
                seen.add(s["path"])
                submissions.append(s)
    merged["submissions"] = sorted(submissions, key=lambda s: (s["path"], s["submission"]))
    merged["merged_from"] = [str(f) for f in folders]
    return write_document(merged, out)


def main(
    paths: list[str],
    out: str = "grades",
    *,
    assignment: str | None = None,
    jobs: int = 1,
    limits: Limits = Limits(),
    seed: int | None = None,
    shard: str | None = None,
    no_sandbox: bool = False,
) -> int:
    """The ``grade`` command. Exit 0 when grading ran (whatever the grades), 2 on misuse."""
    if assignment is not None and find(assignment) is None:
        print(f"unknown assignment {assignment!r}; choose one of {', '.join(ASSIGNMENTS)}")
        return 2
    try:
        part = parse_shard(shard) if shard is not None else None
    except ValueError as error:
        print(error)
        return 2
    if not no_sandbox:
        why = sandbox.available()
        if why:
            print(f"cannot contain submissions: {why}; {sandbox.INSTALL_HINT}")
            return 2
    found, skipped = find_submissions(paths)
    if not found:
        print(f"no notebooks (*.ipynb) found in {', '.join(map(str, paths))}")
        return 2
    mine = select_shard(found, part)
    where = f" (shard {part[0]}/{part[1]} of {len(found)})" if part else ""
    box = "in a sandbox each" if not no_sandbox else "WITHOUT a sandbox (--no-sandbox)"
    print(f"grading {len(mine)} submission(s){where}, {jobs} at a time, {box}", flush=True)
    start = time.monotonic()

    def show(result):
        print(format_table(result) + "\n", flush=True)

    results = grade_paths(
        paths,
        limits,
        assignment=assignment,
        jobs=jobs,
        seed=seed,
        shard=part,
        contained=not no_sandbox,
        progress=show,
    )
    written = write_results(results, out, limits, contained=not no_sandbox)
    for f in skipped:
        print(f"skipped (not a .ipynb file): {f}")
    total = time.monotonic() - start
    files = ", ".join(map(str, written))
    print(f"graded {len(results)} submission(s) in {total:.1f} s; wrote {files}")
    return 0
