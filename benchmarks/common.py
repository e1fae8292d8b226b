"""Shared plumbing: where results go, CSV files of raw runs, the machine, medians and spreads."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

# The environment as the command found it, before one_thread_environment() changed it: the
# test-suite part runs `make test` as a newcomer would, without our thread settings.
ORIGINAL_ENVIRONMENT = dict(os.environ)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MACHINE_FILE = "machine.json"


# --- CSV files of raw runs ------------------------------------------------------------------


class ResultFile:
    """One CSV of raw runs (one row per run), rewritten atomically after every new row.

    Rows are identified by ``key`` columns; ``done(key)`` says whether a run is already stored,
    which is how ``--resume`` skips work after an interruption. Without ``resume`` the file is
    started afresh (its old rows are dropped at the first ``add``, not before: an interrupted
    run that never got going keeps the previous results).
    """

    def __init__(
        self, path: Path, columns: Sequence[str], key: Sequence[str], *, resume: bool = False
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.key = list(key)
        self.rows: list[dict[str, str]] = []
        self._fresh = not resume
        if resume and self.path.exists():
            old = read_csv(self.path)
            # Rows written by another version of this part (other columns) cannot be resumed.
            if old and set(old[0]) == set(self.columns):
                self.rows = old

    def _key(self, row: dict[str, object]) -> tuple[str, ...]:
        return tuple(_fmt(row[k]) for k in self.key)

    def done(self, **key: object) -> bool:
        """Whether a stored row matches every given column (a subset of the key is fine)."""
        wanted = {k: _fmt(v) for k, v in key.items()}
        return any(all(r[k] == v for k, v in wanted.items()) for r in self.rows)

    def add(self, *rows: dict[str, object]) -> None:
        """Store rows (replacing stored rows with the same key) and rewrite the file."""
        for row in rows:
            missing = set(self.columns) - set(row)
            extra = set(row) - set(self.columns)
            if missing or extra:
                raise ValueError(f"{self.path.name}: missing columns {missing}, unknown {extra}")
        if self._fresh:
            self.rows, self._fresh = [], False
        for row in rows:
            wanted = self._key(row)
            self.rows = [r for r in self.rows if self._key(r) != wanted]
            self.rows.append({c: _fmt(row[c]) for c in self.columns})
        write_csv(self.path, self.columns, self.rows)


def _fmt(value: object) -> str:
    """CSV cell: floats to 6 significant digits (enough for timings and NLLs), nan as ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c)) for c in columns})
    tmp.replace(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def number(cell: str | None) -> float:
    """A CSV cell as a float; empty -> nan."""
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


# --- statistics for the summary -------------------------------------------------------------


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def median(values: Iterable[float]) -> float:
    values = finite(values)
    return statistics.median(values) if values else math.nan


def spread(values: Iterable[float], digits: int = 2, unit: str = "") -> str:
    """``median (min-max)`` of the finite values, e.g. ``12.3 (11.9-13.0)``; n=1: the value."""
    values = finite(values)
    if not values:
        return "n/a"
    f = f"{{:.{digits}f}}"
    mid = f.format(statistics.median(values)) + unit
    if len(values) == 1:
        return mid
    return f"{mid} ({f.format(min(values))}-{f.format(max(values))})"


def mean_sd(values: Iterable[float], digits: int = 3) -> str:
    """``mean ± sd`` (sample sd) of the finite values."""
    values = finite(values)
    if not values:
        return "n/a"
    f = f"{{:.{digits}f}}"
    if len(values) == 1:
        return f.format(values[0])
    return f"{f.format(statistics.mean(values))} ± {f.format(statistics.stdev(values))}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(root: Path = ROOT) -> str:
    """Short commit of the repository, with ``+dirty`` if tracked files were changed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What the numbers depend on: CPU, cores, versions, threads, date, commit."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
    }
    info.update(extra or {})
    return info


def record_machine(part: str, results: Path = RESULTS, info: dict[str, str] | None = None) -> None:
    """Store the machine a part ran on (``info``, default: :func:`machine` now) in
    ``results/machine.json``, one entry per part."""
    path = Path(results) / MACHINE_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data[part] = info or machine()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def load_machines(results: Path = RESULTS) -> dict[str, dict[str, str]]:
    path = Path(results) / MACHINE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def one_thread_environment() -> None:
    """One thread for torch, BLAS and OpenMP here and in every kernel or child started later."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # Kernels must be this interpreter's (a user-level "python3" kernel could be another one).
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(Path(sys.prefix) / "share" / "jupyter")]
        + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    )
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def log(message: str) -> None:
    print(message, flush=True)
