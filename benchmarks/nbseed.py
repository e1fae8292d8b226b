"""A notebook's own result variables, from a run of a copy of it with another seed.

Tables that a notebook computes (04's gap, 07's VAE table) are measured over seeds by running
exactly that notebook: a copy, in memory, whose ``flowcourse.setup(seed=0)`` call is given seed
k, with one cell appended that prints the chosen variables as JSON. The notebook file itself is
never written.

Notebooks often reseed the global generators before a model is built or evaluated
(``torch.manual_seed(0)``), which would undo the new seed; so literal seeds of the global
generators (``torch.manual_seed(N)``, ``np.random.seed(N)``, ``random.seed(N)``) become
``N + SEED_STRIDE * k``; a notebook's own seed constant, a line ``SEED = N`` (07 passes it to
every reseed and minibatch generator, and its text says to change it to rerun with another
seed), becomes ``SEED = N + k``. Seed 0 leaves the notebook exactly as it is. Seeds given to data
sources (``TwoMoons().sample(n, seed=1)``, ``torch.Generator().manual_seed(1)``) are left
alone: the data stay the same, the initial weights and the sampling noise change.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path

import nbformat

__all__ = ["MARKER", "SEED_STRIDE", "seeded_copy", "results_cell", "notebook_results"]

MARKER = "BENCHMARK-RESULTS:"
SEED_STRIDE = 1000
# Seeded copies run here, not beside the notebook: what they record must not overwrite the
# notebook's own results/ (flowcourse.results writes to the current folder's results/).
WORK = Path(__file__).resolve().parent / ".work"

# flowcourse.setup(...) or a bare setup(...) (after "from flowcourse import setup").
_SETUP = re.compile(r"(?<![\w.])(?:flowcourse\.)?setup\((?P<args>[^()]*)\)")
_SEED_KW = re.compile(r"\bseed\s*=\s*[^,)]+")
# Global generators seeded with a literal: torch.manual_seed(0), np.random.seed(0), random.seed(0).
_GLOBAL_SEED = re.compile(
    r"(?<![\w.])(?P<call>(?:torch|torch\.random)\.manual_seed|(?:np|numpy)\.random\.seed"
    r"|random\.seed)\(\s*(?P<n>\d+)\s*\)"
)


# A notebook's own seed constant on a line of its own: SEED = 0.
_SEED_CONSTANT = re.compile(r"^(?P<lhs>SEED\s*=\s*)(?P<n>\d+)[ \t]*$", re.MULTILINE)


def _reseed_call(match: re.Match, seed: int) -> str:
    args = match.group("args").strip()
    if _SEED_KW.search(args):
        args = _SEED_KW.sub(f"seed={seed}", args, count=1)
    elif args and "=" not in args.split(",")[0]:
        # The first positional argument is the seed.
        rest = args.split(",", 1)[1:]
        args = ",".join([str(seed), *rest])
    else:
        args = f"seed={seed}" + (f", {args}" if args else "")
    head = match.group(0)[: match.start("args") - match.start(0)]
    return f"{head}{args})"


def _in_comment(source: str, pos: int) -> bool:
    line_start = source.rfind("\n", 0, pos) + 1
    return "#" in source[line_start:pos]


def seeded_copy(nb: nbformat.NotebookNode, seed: int) -> nbformat.NotebookNode:
    """A deep copy of ``nb`` with its first ``setup(...)`` call given ``seed``, its literal
    global reseeds ``N`` moved to ``N + SEED_STRIDE * seed`` and a ``SEED = N`` line made
    ``SEED = N + seed`` (see the module docstring).

    Raises ValueError if no code cell calls ``setup``: then the seed could not change anything.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")

    def shift(m: re.Match) -> str:
        if _in_comment(m.string, m.start()):
            return m.group(0)
        return f"{m.group('call')}({int(m.group('n')) + SEED_STRIDE * seed})"

    nb = copy.deepcopy(nb)
    found = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = cell.source
        if not found:
            for match in _SETUP.finditer(source):
                # Skip mentions in comments, e.g. "# flowcourse.setup() seeds everything".
                if _in_comment(source, match.start()):
                    continue
                new_call = _reseed_call(match, seed)
                source = source[: match.start()] + new_call + source[match.end() :]
                found = True
                break
        if seed:
            source = _GLOBAL_SEED.sub(shift, source)
            source = _SEED_CONSTANT.sub(
                lambda m: f"{m.group('lhs')}{int(m.group('n')) + seed}", source
            )
        cell.source = source
    if not found:
        raise ValueError("the notebook has no code cell calling flowcourse.setup(...) to reseed")
    return nb


def results_cell(variables: list[str]) -> str:
    """Source of a cell printing ``MARKER`` + JSON of the named global variables.

    Converts what notebooks hold: pandas DataFrames (records) and Series, NumPy arrays and
    scalars, torch tensors, dicts, lists, tuples; nan and inf become null.
    """
    names = json.dumps(list(variables))
    return f"""\
import json as _bench_json
import math as _bench_math


def _bench_jsonable(v):
    if hasattr(v, "to_dict") and hasattr(v, "columns"):  # pandas DataFrame
        v = v.reset_index() if any(n is not None for n in v.index.names) else v
        return [_bench_jsonable(r) for r in v.to_dict(orient="records")]
    if hasattr(v, "to_dict"):  # pandas Series
        return {{str(k): _bench_jsonable(x) for k, x in v.to_dict().items()}}
    if hasattr(v, "detach"):  # torch tensor
        v = v.detach().cpu().numpy()
    if hasattr(v, "tolist"):  # numpy array or scalar
        v = v.tolist()
    if isinstance(v, dict):
        return {{str(k): _bench_jsonable(x) for k, x in v.items()}}
    if isinstance(v, (list, tuple)):
        return [_bench_jsonable(x) for x in v]
    if isinstance(v, float) and not _bench_math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


_bench_missing = [n for n in {names} if n not in globals()]
if _bench_missing:
    raise NameError(f"benchmark: the notebook defines no variable(s) {{_bench_missing}}")
print({MARKER!r} + _bench_json.dumps({{n: _bench_jsonable(globals()[n]) for n in {names}}}))
"""


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cell_errors(nb: nbformat.NotebookNode) -> list[str]:
    """``code cell N: Name: message`` for every error output of a cell not tagged
    ``raises-exception`` (ANSI colours removed)."""
    found = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code, 1):
        if "raises-exception" in cell.metadata.get("tags", []):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                message = _ANSI.sub("", f"{out.get('ename')}: {out.get('evalue')}")
                found.append(f"code cell {i}: {message.strip()[:200]}")
    return found


def notebook_results(
    path: str | Path,
    seed: int,
    variables: list[str],
    *,
    timeout: int = 1200,
    failures: list[str] | None = None,
) -> dict:
    """Run a copy of the notebook at ``path`` with ``setup(seed=seed)``; return its variables.

    The copy runs in a fresh ``python3`` kernel in a temporary folder under ``benchmarks/.work``
    that holds a copy of the notebook folder's ``results/``: the notebook file and its stored
    results are not modified. Returns ``{name: value}`` with values converted to JSON types (a
    DataFrame becomes a list of row dicts).

    ``failures=None``: the first failing cell raises. With a list, the run goes on past failing
    cells (an assertion cell whose tolerance another seed misses should not hide the table)
    and each failure is appended to it as ``code cell N: Error: message``. Either way a
    variable that does not exist at the end raises.
    """
    from flowcourse.notebooks import run

    path = Path(path)
    nb = seeded_copy(nbformat.read(path, as_version=4), seed)
    nb.cells.append(nbformat.v4.new_code_cell(results_cell(variables)))
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{path.stem}-seed{seed}-", dir=WORK) as folder:
        # Earlier notebooks' results, which this one may read; its own records stay here.
        if (path.parent / "results").is_dir():
            shutil.copytree(path.parent / "results", Path(folder) / "results")
        run(nb, folder, timeout=timeout, allow_errors=failures is not None)
    errors = cell_errors(nb)
    last = errors[-1] if errors else ""
    if last.startswith(f"code cell {sum(c.cell_type == 'code' for c in nb.cells)}:"):
        raise RuntimeError(f"{path}: {last}")  # the results cell itself: a missing variable
    if failures is not None:
        failures.extend(errors)
    for line in _stdout(nb.cells[-1]).splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    raise RuntimeError(f"{path}: the results cell printed no {MARKER} line")
