"""The grader: full marks for the solutions, zero for the exercises, the right points lost for
planted bugs, and hostile submissions contained.

Every submission is built here from ``solutions/`` (so the fixtures never drift): planted bugs
and hostile edits are text replacements that must find their target, or the test fails.
``python tests/test_grading.py /tmp/batch`` writes a mixed batch of 20 submissions to time
``python -m flowcourse grade``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import nbformat
import pytest

from flowcourse import exercises
from flowcourse.exercises import ASSIGNMENTS, NOT_IMPLEMENTED
from flowcourse.grading import Limits, format_table, grade_paths, main, write_results
from flowcourse.release import release_notebook

ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(cell_timeout=60, timeout=300, memory_mb=3000)
HOSTILE_LIMITS = Limits(cell_timeout=6, timeout=120, memory_mb=3000, interrupt_grace=3)
SEED = 20240601  # the grader's inputs; fixed so that the training tasks are reproducible here


def solution(key: str) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "solutions" / f"{key}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def exercise(key: str) -> nbformat.NotebookNode:
    return release_notebook(solution(key))


def _code_index(nb, marker: str) -> int:
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and marker in c.source]
    assert len(hits) == 1, f"expected one code cell with {marker!r}, found {len(hits)}"
    return hits[0]


def edit(nb, task: str, old: str, new: str) -> nbformat.NotebookNode:
    """Replace ``old`` by ``new`` in the cell defining ``task`` (it must be there)."""
    cell = nb.cells[_code_index(nb, f"def {task}(")]
    assert old in cell.source, f"planted bug for {task}: {old!r} not found in the solution"
    cell.source = cell.source.replace(old, new)
    return nb


def insert_after(nb, marker: str, source: str) -> nbformat.NotebookNode:
    nb.cells.insert(_code_index(nb, marker) + 1, nbformat.v4.new_code_cell(source))
    return nb


# --- planted bugs: (task, old, new, fragment of the expected message) -------------------------

PLANTED: dict[str, list[list[tuple[str, str, str, str]]]] = {
    "01_change_of_variables": [
        [
            ("lognormal_log_prob", "return log_pz - math.log(sigma) - torch.log(x)",
             "return log_pz", "Jacobian term is missing"),
            ("linear_log_prob", "torch.linalg.slogdet(A).logabsdet",
             "torch.log(torch.linalg.det(A))", "take log|det A|"),
        ]
    ],
    "02_affine_flow": [
        [
            ("affine_forward", "y = x * torch.exp(log_scale) + shift", "y = x * log_scale + shift",
             "unconstrained scale"),
            ("affine_inverse", "torch.zeros(y.shape[0], dtype=y.dtype) - log_scale.sum()",
             "torch.zeros(y.shape[0], dtype=y.dtype) + log_scale.sum()", "minus the forward one"),
            ("compose_inverse", "reversed(layers)", "layers", "reverse order"),
            ("affine_nll", "log_pz = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[1] * LOG_2PI",
             "log_pz = -0.5 * (z**2).sum(-1)", "0.5 D log(2 pi) is missing"),
            ("train_affine", "return [(log_scale.detach(), shift.detach())",
             "return [(log_scale.detach() * float('nan'), shift.detach())", "NaN"),
        ]
    ],
    "03_planar_flow": [
        [
            ("planar_u_hat", "m = -1 + F.softplus(wu)", "m = F.softplus(wu)",
             "m(a) = -1 + softplus(a)"),
            ("planar_forward", "y = z + h[:, None] * u_hat", "y = z + h[:, None] * u",
             "you used u"),
            ("planar_flow_sample", "log_q = log_q - log_det", "log_q = log_q + log_det",
             "subtract the log-dets"),
        ]
    ],
    "04_coupling_layers": [
        [
            ("coupling_forward", "return x * torch.exp(s) + t, s.sum(-1)",
             "return x * torch.exp(s) + t, conditioner(x * mask)[0].sum(-1)",
             "sums s over the kept entries"),
            ("coupling_inverse", "return (y - t) * torch.exp(-s), -s.sum(-1)",
             "return y * torch.exp(-s) - t, -s.sum(-1)", "subtract t before dividing"),
            ("train_realnvp", "    return model",
             "    model.conditioners[0].net[-1].bias.data.fill_(float('nan'))\n    return model",
             "NaN"),
            ("train_realnvp", "steps=400", "steps=10", "NaN"),  # (and make it quick)
        ]
    ],
    "05_dequantization": [
        [
            ("dequantize",
             "torch.full((x_int.shape[0],), -x_int.shape[1] * math.log(levels), dtype=u.dtype)",
             "torch.zeros(x_int.shape[0])", "the constant is missing"),
            ("logit_forward", "- torch.log1p(-p)).sum(-1)", "- torch.log1p(-p))",
             "did not sum over the dimensions"),
            ("bits_per_dim", "/ (x_int.shape[1] * math.log(2))", "/ x_int.shape[1]",
             "divide by ln 2"),
        ]
    ],
    "06_flow_elbo": [
        [
            ("flow_elbo", "log_prior = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI",
             "z0 = reparameterize(mean, log_var, eps)[0]\n"
             "    log_prior = -0.5 * (z0**2).sum(-1) - 0.5 * z0.shape[-1] * LOG_2PI",
             "the prior is evaluated at z0"),
            ("fit_flow_posterior", "n_layers=8", "n_layers=0", "must close at least 20%"),
        ]
    ],
}  # fmt: skip


def planted(key: str, bugs) -> nbformat.NotebookNode:
    nb = solution(key)
    for task, old, new, _ in bugs:
        edit(nb, task, old, new)
    return nb


def _write(folder: Path, notebooks: dict[str, nbformat.NotebookNode]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / name)


def _graded(folder: Path, limits: Limits = LIMITS, jobs: int = 1) -> dict:
    results = grade_paths([folder], limits, jobs=jobs, seed=SEED)
    return {r.submission: r for r in results}


def _by_task(result) -> dict:
    return {v.task: v for v in result.verdicts}


@pytest.mark.parametrize("key", list(ASSIGNMENTS))
def test_solution_gets_full_marks_and_each_planted_bug_loses_its_points(key, tmp_path):
    notebooks = {"solution.ipynb": solution(key)}
    for k, bugs in enumerate(PLANTED[key]):
        notebooks[f"planted{k}.ipynb"] = planted(key, bugs)
    _write(tmp_path / "in", notebooks)
    graded = _graded(tmp_path / "in")

    full = graded["solution.ipynb"]
    assert full.points == full.max_points == ASSIGNMENTS[key].points, format_table(full)
    for k, bugs in enumerate(PLANTED[key]):
        result = graded[f"planted{k}.ipynb"]
        verdicts = _by_task(result)
        broken = {task for task, *_ in bugs}
        for task, _, _, fragment in bugs:
            v = verdicts[task]
            assert v.points == 0 and fragment in v.message, f"{task}: {v.message}"
        lost = sum(exercises.TASKS[t].points for t in broken)
        assert result.points == result.max_points - lost, format_table(result)


def test_released_exercise_gets_zero_with_not_implemented_yet(tmp_path):
    # Every exercise's check cells say so (tests/test_exercises.py); here the grader does too,
    # for the assignment with training tasks and given classes. (The A1 exercise is graded in
    # the cheating test below.)
    _write(tmp_path / "in", {"exercise.ipynb": exercise("04_coupling_layers")})
    zero = _graded(tmp_path / "in")["exercise.ipynb"]
    assert zero.points == 0 and zero.max_points == 12, format_table(zero)
    assert all(NOT_IMPLEMENTED in v.message for v in zero.verdicts), format_table(zero)


def _hostile_a(folder: Path) -> None:
    """Broken code, a cheat that patches everything and prints PASS, and a non-notebook."""
    key = "01_change_of_variables"
    broken = solution(key)
    edit(broken, "log_det_jacobian", "def log_det_jacobian(f, z):", "def log_det_jacobian(f, z)")
    edit(broken, "lognormal_log_prob", "def lognormal_log_prob(", "def lognormal_logprob(")
    del broken.cells[_code_index(broken, "def histogram_density(")]
    edit(broken, "linear_log_prob", "return log_pz - torch.linalg.slogdet(A).logabsdet",
         "return torch.full(x.shape[:1], float('nan'))")  # fmt: skip

    cheat = exercise(key)
    insert_after(
        cheat,
        "flowcourse.setup(",
        "import json\n"
        "import flowcourse.checks as fc\n"
        "import flowcourse.exercises as fx\n"
        "fx.judge = lambda task, *a, **k: fx.Verdict(task, 99, 99, 'PASS', 'ok')\n"
        "fx.check = lambda name, obj, **k: print(f'PASS {name} (3/3 points): matches')\n"
        "fx.probe = lambda task, inputs, ns, obj=None: {'status': 'ok', 'cases': []}\n"
        "fc.CheckResult.__bool__ = lambda self: True\n"
        "real_dumps = json.dumps\n"
        "json.dumps = lambda obj, **k: real_dumps({'status': 'ok', 'cases': [{'value': 0.0}]})\n"
        "from IPython.display import display\n"
        f'display({{{exercises.PROBE_MIME!r}: \'{{"status": "ok", "cases": []}}\'}}, raw=True)\n'
        "print('PASS histogram_density (2/2 points): matches the reference')",
    )
    for cell in cheat.cells:
        if cell.cell_type == "code" and cell.source.startswith("check("):
            name = cell.source.split('"')[1]
            cell.source = f"print('PASS {name} (3/3 points): matches the reference')"
    _write(folder, {"broken.ipynb": broken, "cheat.ipynb": cheat})
    (folder / "junk.ipynb").write_text("this is not a notebook {")
    (folder / "notes.txt").write_text("not a notebook at all")


def test_hostile_broken_cheating_and_unreadable_submissions(tmp_path):
    _hostile_a(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    graded = _graded(tmp_path / "in", HOSTILE_LIMITS)
    assert set(graded) == {"broken.ipynb", "cheat.ipynb", "junk.ipynb"}

    broken = _by_task(graded["broken.ipynb"])
    assert "not found" in broken["histogram_density"].message  # deleted cell
    assert "`lognormal_log_prob` not found" in broken["lognormal_log_prob"].message  # renamed
    assert "is NaN" in broken["linear_log_prob"].message
    assert "SyntaxError" in broken["log_det_jacobian"].message
    assert graded["broken.ipynb"].points == 0

    cheat = graded["cheat.ipynb"]  # its functions are the stubs; patching and printing gain nothing
    assert cheat.points == 0, format_table(cheat)
    assert all(v.status == "FAIL" for v in cheat.verdicts), format_table(cheat)

    junk = graded["junk.ipynb"]
    assert junk.points == 0 and "not a readable notebook" in junk.notes[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before


def _hostile_b(folder: Path) -> None:
    """An endless loop, a memory blow-up, a kernel that ignores interrupts, a file vandal."""
    key = "01_change_of_variables"
    hog = solution(key)
    loop = "while True:\n    pass\n\n\ndef histogram_density("
    edit(hog, "histogram_density", "def histogram_density(", loop)
    edit(
        hog,
        "linear_log_prob",
        "def linear_log_prob(",
        "blocks = [torch.ones(50_000_000) for _ in range(40)]  # 8 GB\n\n\ndef linear_log_prob(",
    )
    insert_after(
        hog,
        "flowcourse.setup(",
        "import glob, os\n"
        "for pattern in ('*.ipynb', '../*.ipynb', '../../*.ipynb'):\n"
        "    for name in glob.glob(pattern):\n"
        "        open(name, 'w').write('vandalised')\n"
        "session = os.environ.get('JPY_SESSION_NAME')\n"
        "if session and os.path.exists(session):\n"
        "    os.remove(session)",
    )
    deaf = solution(key)
    deaf.cells.insert(
        len(deaf.cells) - 1,
        nbformat.v4.new_code_cell(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
        ),
    )
    _write(folder, {"hog.ipynb": hog, "deaf.ipynb": deaf})


def test_hostile_loops_memory_and_vandalism_are_contained(tmp_path):
    _hostile_b(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    graded = _graded(tmp_path / "in", HOSTILE_LIMITS)

    hog = graded["hog.ipynb"]
    verdicts = _by_task(hog)
    assert "ran longer than 6 s" in verdicts["histogram_density"].message, format_table(hog)
    assert "ran out of memory" in verdicts["linear_log_prob"].message, format_table(hog)
    assert verdicts["lognormal_log_prob"].points == 2 and verdicts["log_det_jacobian"].points == 3
    assert hog.points == 5

    deaf = graded["deaf.ipynb"]  # killed with its process group, then graded in a new kernel
    assert deaf.points == deaf.max_points, format_table(deaf)
    assert any("killed" in note for note in deaf.notes), deaf.notes
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before


def test_outputs_for_a_learning_platform_and_exit_codes(tmp_path, capsys):
    from flowcourse.grading import SubmissionResult

    verdicts = [exercises.Verdict("dequantize", 2, 2, "PASS", "ok, with a comma")]
    result = SubmissionResult("a/x.ipynb", "alice/x.ipynb", "alice", "05_dequantization", verdicts)
    json_path, csv_path, totals = write_results([result], tmp_path, Limits())
    import csv
    import json

    rows = list(csv.DictReader(csv_path.open()))
    assert [r["task"] for r in rows] == ["dequantize", "TOTAL"]
    assert rows[0]["message"] == "ok, with a comma" and rows[1]["max_points"] == "8"
    assert next(csv.DictReader(totals.open()))["percent"] == "25.0"
    assert json.loads(json_path.read_text())["submissions"][0]["points"] == 2
    assert main([str(tmp_path / "nothing-here")], str(tmp_path / "out")) == 2
    assert "no notebooks" in capsys.readouterr().out


# --- a batch for timing: python tests/test_grading.py /tmp/batch ----------------------------


def write_batch(folder: Path, size: int = 20) -> None:
    """``size`` submissions: solutions, exercises, planted bugs and hostile ones, mixed."""
    pool: list[tuple[str, nbformat.NotebookNode]] = []
    for key in ASSIGNMENTS:
        pool.append((f"{key}-solution", solution(key)))
        pool.append((f"{key}-exercise", exercise(key)))
        for k, bugs in enumerate(PLANTED[key]):
            pool.append((f"{key}-planted{k}", planted(key, bugs)))
    hostile = folder.parent / (folder.name + "-hostile")
    _hostile_a(hostile)
    _hostile_b(hostile)
    for path in sorted(hostile.glob("*.ipynb")):
        if path.name != "junk.ipynb":
            pool.append((f"hostile-{path.stem}", nbformat.read(path, as_version=4)))
    order = [pool[(7 * i) % len(pool)] for i in range(size)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, nb) in enumerate(order):
        nbformat.write(copy.deepcopy(nb), folder / f"student{i:02d}_{name}.ipynb")


if __name__ == "__main__":
    write_batch(Path(sys.argv[1]))
