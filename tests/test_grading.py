"""The grader: full marks for the solutions, zero for the exercises, the right points lost for
planted bugs, and broken, hostile and cheating submissions contained.

Every submission is built here from ``solutions/`` (so the fixtures never drift): planted bugs
and hostile edits are text replacements that must find their target, or the test fails.
Kernels run in the bubblewrap sandbox (:mod:`flowcourse.sandbox`); on a machine without it the
tests that need containment are skipped with a message, except under ``CI=true``, where
they fail. ``python tests/test_grading.py /tmp/batch`` writes a mixed batch of submissions to
time ``python -m flowcourse grade``.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from flowcourse import continuous, sandbox
from flowcourse.assignments import ASSIGNMENTS, TASKS
from flowcourse.assignments.core import judge, make_inputs
from flowcourse.assignments.kernel import NOT_IMPLEMENTED, log_standard_normal, probe
from flowcourse.grading import Limits, format_table, grade_paths, main, merge
from flowcourse.release import release_notebook

ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(cell_timeout=60, timeout=300, memory_mb=3000)
HOSTILE_LIMITS = Limits(cell_timeout=6, timeout=150, memory_mb=3000, interrupt_grace=3)
SEED = 20240601  # the grader's inputs; fixed so that the training tasks are reproducible here

NO_SANDBOX = sandbox.available()
if NO_SANDBOX and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must test the sandbox: {NO_SANDBOX}; {sandbox.INSTALL_HINT}")
CONTAINED = NO_SANDBOX is None
needs_sandbox = pytest.mark.skipif(
    not CONTAINED, reason=f"needs the grading sandbox: {NO_SANDBOX}; {sandbox.INSTALL_HINT}"
)


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
    assert old in cell.source, f"edit of {task}: {old!r} not found in the solution"
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
            ("coupling_inverse", "return x * torch.exp(s) + t, s.sum(-1)",
             "return x * torch.exp(s) + t, conditioner(x * mask)[0].sum(-1)",
             "sums s over the kept entries"),
            ("coupling_forward", "return (z - t) * torch.exp(-s), -s.sum(-1)",
             "return z * torch.exp(-s) - t, -s.sum(-1)", "subtract t before dividing"),
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
    "07_flow_elbo": [
        [
            ("flow_elbo", "log_prior = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI",
             "z0 = reparameterize(mean, log_var, eps)[0]\n"
             "    log_prior = -0.5 * (z0**2).sum(-1) - 0.5 * z0.shape[-1] * LOG_2PI",
             "the prior is evaluated at z0"),
            ("fit_flow_posterior", "n_layers=16", "n_layers=0", "close at least"),
        ]
    ],
    "08_spline_flows": [
        [
            ("made_masks", "(in_degrees[:, None] > below[None, :])",
             "(in_degrees[:, None] >= below[None, :])", "sees x_i itself"),
            ("rq_knots", "torch.softmax(raw, dim=-1)",
             "torch.softmax(torch.softmax(raw, dim=-1), dim=-1)", "a softmax of a softmax"),
            ("rq_spline", "v = x.clamp(-bound, bound)", "v = x", "NaN gradients in the tails"),
            ("rq_spline_inverse", "xi = 2 * c / (-b - torch.sqrt(b**2 - 4 * a * c))",
             "xi = (-b - torch.sqrt(b**2 - 4 * a * c)) / (2 * a)", "the other root"),
        ],
        [
            ("made_masks", "masks.append((degrees[:, None] >= below[None, :]).float())",
             "masks.append(degrees[:, None] >= below[None, :])", "dtype bool"),
            ("rq_knots", "F.pad(slopes, (1, 1), value=1.0)", "F.pad(slopes, (1, 1))",
             "boundary derivative other than 1"),
            ("rq_spline", "return torch.where(inside, y, x)", "return y",
             "identity in the tails"),
            ("rq_spline_inverse", "xi = 2 * c / (-b - torch.sqrt(b**2 - 4 * a * c))",
             "xi = (-b + torch.sqrt(b**2 - 4 * a * c)) / (2 * a)", "divides by a"),
        ],
    ],
    "09_continuous_flows": [
        [
            ("exact_divergence", "for i in range(x.shape[1]):", "for i in range(1):",
             "only d v_0/d x_0"),
            ("rk4_step", "log_det = log_det + h / 6 *", "log_det = h / 6 *",
             "overwritten instead of accumulated"),
            ("ode_log_prob", "h = -1.0 / steps", "h = 1.0 / steps", "wrong time direction"),
            ("ode_log_prob", "1.0 + k * h, h", "k * h, h", "wrong time direction"),
            ("flow_matching_loss", "- (x1 - x0)) ** 2", "- (x0 - x1)) ** 2",
             "wrong time direction"),
            ("hutchinson_divergence", "        row = torch.autograd.grad(",
             "        probe = torch.randn_like(x)\n        row = torch.autograd.grad(",
             "not the one for the probe passed in"),
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
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)


def _graded(folder: Path, limits: Limits = LIMITS, jobs: int = 2) -> dict:
    results = grade_paths([folder], limits, jobs=jobs, seed=SEED, contained=CONTAINED)
    return {r.submission: r for r in results}


def _by_task(result) -> dict:
    return {v.task: v for v in result.verdicts}


# --- correct, planted and unsolved submissions ------------------------------------------------


@pytest.mark.parametrize("key", list(ASSIGNMENTS))
def test_solution_gets_full_marks_and_each_planted_bug_loses_its_points(key, tmp_path):
    notebooks = {"solution.ipynb": solution(key)}
    for k, bugs in enumerate(PLANTED[key]):
        notebooks[f"planted{k}.ipynb"] = planted(key, bugs)
    _write(tmp_path / "in", notebooks)
    graded = _graded(tmp_path / "in")

    full = graded["solution.ipynb"]
    assert full.points == full.max_points == ASSIGNMENTS[key].points, format_table(full)
    assert not full.notes, full.notes  # a correct solution raises nothing, calls no reference
    for k, bugs in enumerate(PLANTED[key]):
        result = graded[f"planted{k}.ipynb"]
        verdicts = _by_task(result)
        broken = {task for task, *_ in bugs}
        for task, _, _, fragment in bugs:
            v = verdicts[task]
            assert v.points == 0 and fragment in v.message, f"{task}: {v.message}"
        lost = sum(TASKS[t].points for t in broken)
        assert result.points == result.max_points - lost, format_table(result)


def test_released_exercise_gets_zero_with_not_implemented_yet(tmp_path):
    _write(tmp_path / "in", {"exercise.ipynb": exercise("04_coupling_layers")})
    zero = _graded(tmp_path / "in")["exercise.ipynb"]
    assert zero.points == 0 and zero.max_points == 12, format_table(zero)
    assert all(NOT_IMPLEMENTED in v.message for v in zero.verdicts), format_table(zero)


# --- assignment 09: its judges name the solver mistakes planted against the package -----------

try:  # tests/planted_continuous.py: the deliberately broken pieces of a continuous flow
    import planted_continuous
except ImportError:  # run as a package (pytest --import-mode=importlib)
    from tests import planted_continuous


def _judged_in_process(name: str, function, seed: int):
    """The verdict for ``function`` as task ``name``, probed in this process as the check
    cells do (the kernel and sandbox around it are tested above)."""
    task = TASKS[name]
    inputs = make_inputs(task, seed)
    references = {dep: TASKS[dep].reference for dep in task.depends}
    payload = probe(task.spec(), inputs, {}, obj=function, references=references)
    return judge(task, inputs, json.loads(json.dumps(payload)))


def _log_prob_with(integrate, step=continuous.rk4_step):
    """``ode_log_prob`` built on an ``integrate(field, x, t0, t1, steps, step=)``."""

    def ode_log_prob(field, x, steps):
        z, log_det = integrate(field, x, 1.0, 0.0, steps, step=step)
        return log_standard_normal(z) + log_det

    return ode_log_prob


SOLVER_MISTAKES = [
    ("exact_divergence", planted_continuous.exact_divergence_first_only, "only d v_0/d x_0"),
    ("rk4_step", planted_continuous.rk4_step_overwrites, "overwritten instead of accumulated"),
    ("rk4_step", planted_continuous.rk4_step_no_dt, "Δt missing"),
    ("ode_log_prob", _log_prob_with(planted_continuous.integrate_forward_in_time),
     "wrong time direction"),
    ("ode_log_prob", _log_prob_with(continuous.integrate, planted_continuous.rk4_step_overwrites),
     "overwritten instead of accumulated"),
    ("hutchinson_divergence", planted_continuous.hutchinson_ones, "that is J^T 1"),
    ("hutchinson_divergence", planted_continuous.hutchinson_fresh_probe,
     "not the one for the probe passed in"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "function", "fragment"), SOLVER_MISTAKES,
                         ids=[f"{m[0]}-{m[1].__name__}" for m in SOLVER_MISTAKES])  # fmt: skip
def test_09_judges_name_the_mistakes_planted_in_the_package(name, function, fragment):
    for seed in (SEED, 1, 2):
        verdict = _judged_in_process(name, function, seed)
        assert verdict.points == 0 and fragment in verdict.message, verdict.message


def test_09_the_package_pieces_pass_its_judges():
    pieces = {
        "exact_divergence": continuous.exact_divergence,
        "rk4_step": continuous.rk4_step,
        "ode_log_prob": _log_prob_with(continuous.integrate),
        "flow_matching_loss": lambda field, x0, x1, t: continuous.flow_matching_loss(
            field, x1, x0, t
        ),
        "hutchinson_divergence": continuous.hutchinson_divergence,
    }
    assert set(pieces) == {t.name for t in ASSIGNMENTS["09_continuous_flows"].tasks}
    for name, function in pieces.items():
        verdict = _judged_in_process(name, function, SEED)
        assert verdict.passed, verdict


# --- broken and malformed files: each gets its row, the batch goes on --------------------------


def _malformed(folder: Path) -> dict[str, str]:
    """Files that are not (quite) notebooks, beside a correct one; returns name -> note."""
    good = solution("03_planar_flow")
    _write(folder, {"üñí cödé/good one.ipynb": good})
    raw = json.loads(nbformat.writes(good))
    notes = {}

    def variant(name, change, note):
        data = copy.deepcopy(raw)
        change(data)
        (folder / name).write_text(json.dumps(data))
        notes[name] = note

    variant(
        "meta-string.ipynb",
        lambda d: d["metadata"].update(flowcourse="03_planar_flow"),
        "metadata.flowcourse is not a mapping",
    )
    variant(
        "source-number.ipynb",
        lambda d: next(c for c in d["cells"] if c["cell_type"] == "code").update(source=42),
        "source is not text (int)",
    )
    variant("cells-dict.ipynb", lambda d: d.update(cells={"a": 1}), "no list of cells")
    variant("cell-list.ipynb", lambda d: d["cells"].insert(3, [1, 2]), "is not a JSON object")
    variant("metadata-list.ipynb", lambda d: d.update(metadata=[1]), "metadata is not a mapping")
    (folder / "array.ipynb").write_text("[1, 2, 3]")
    notes["array.ipynb"] = "no list of cells"
    (folder / "latin1.ipynb").write_bytes("{'caf\xe9'}".encode("latin-1"))
    notes["latin1.ipynb"] = "not UTF-8"
    (folder / "truncated.ipynb").write_text(nbformat.writes(good)[:500])
    notes["truncated.ipynb"] = "not valid JSON"
    return notes


def test_malformed_files_each_get_a_row_and_every_result_file_is_written(tmp_path):
    notes = _malformed(tmp_path / "in")
    out = tmp_path / "out"
    assert main([str(tmp_path / "in")], str(out), jobs=2, seed=SEED, no_sandbox=not CONTAINED) == 0
    rows = list(csv.DictReader((out / "totals.csv").open(encoding="utf-8")))
    by_file = {Path(r["submission"]).name: r for r in rows}
    assert set(by_file) == {"good one.ipynb", *notes}
    good = by_file["good one.ipynb"]
    assert good["student"] == "üñí cödé" and good["points"] == good["max_points"] == "10", good
    grades = json.loads((out / "grades.json").read_text(encoding="utf-8"))
    documented = {Path(s["submission"]).name: " ".join(s["notes"]) for s in grades["submissions"]}
    for name, fragment in notes.items():
        assert fragment in documented[name], (name, documented[name])
    # The broken-but-readable variants are still graded on what can be read.
    assert by_file["meta-string.ipynb"]["points"] == "10"
    assert by_file["metadata-list.ipynb"]["points"] == "10"


def _huge_outputs(nb: nbformat.NotebookNode, megabytes: int) -> nbformat.NotebookNode:
    line = "x" * 999 + "\n"
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=line * 1000 * megabytes)]
    return nb


# --- hostile submissions: loops, memory, crashes, exits, vandalism ------------------------------


def _hostile(folder: Path) -> None:
    """Broken code, endless loops, memory blow-ups, a deaf kernel, os._exit, huge outputs."""
    key = "01_change_of_variables"
    broken = solution(key)
    edit(broken, "log_det_jacobian", "def log_det_jacobian(f, z):", "def log_det_jacobian(f, z)")
    edit(broken, "lognormal_log_prob", "def lognormal_log_prob(", "def lognormal_logprob(")
    del broken.cells[_code_index(broken, "def histogram_density(")]
    edit(broken, "linear_log_prob", "return log_pz - torch.linalg.slogdet(A).logabsdet",
         "return torch.full(x.shape[:1], float('nan'))")  # fmt: skip

    hog = solution(key)
    loop = "while True:\n    pass\n\n\ndef histogram_density("
    edit(hog, "histogram_density", "def histogram_density(", loop)
    edit(
        hog,
        "linear_log_prob",
        "def linear_log_prob(",
        "blocks = torch.ones(2_000_000_000)  # 8 GB at once\n\n\ndef linear_log_prob(",
    )
    deaf = solution(key)
    deaf.cells.insert(
        len(deaf.cells) - 1,
        nbformat.v4.new_code_cell(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
        ),
    )
    quitter = solution(key)
    edit(quitter, "log_det_jacobian", "def log_det_jacobian(f, z):\n",
         "def log_det_jacobian(f, z):\n    import os\n\n    os._exit(1)\n")  # fmt: skip
    _write(
        folder,
        {
            "broken.ipynb": broken,
            "hog.ipynb": hog,
            "deaf.ipynb": deaf,
            "quitter.ipynb": quitter,
            "huge.ipynb": _huge_outputs(solution("05_dequantization"), 53),
        },
    )
    (folder / "junk.ipynb").write_text("this is not a notebook {")
    (folder / "notes.txt").write_text("not a notebook at all")


def test_hostile_submissions_are_contained_and_reported(tmp_path):
    _hostile(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    graded = _graded(tmp_path / "in", HOSTILE_LIMITS)
    assert set(graded) == {
        f"{n}.ipynb" for n in ("broken", "hog", "deaf", "quitter", "huge", "junk")
    }

    broken = _by_task(graded["broken.ipynb"])
    assert "not found" in broken["histogram_density"].message  # deleted cell
    assert "`lognormal_log_prob` not found" in broken["lognormal_log_prob"].message  # renamed
    assert "is NaN" in broken["linear_log_prob"].message
    assert "SyntaxError" in broken["log_det_jacobian"].message
    assert graded["broken.ipynb"].points == 0

    hog = graded["hog.ipynb"]
    verdicts = _by_task(hog)
    assert "ran longer than 6 s" in verdicts["histogram_density"].message, format_table(hog)
    assert "ran out of memory" in verdicts["linear_log_prob"].message, format_table(hog)
    assert verdicts["lognormal_log_prob"].points == 2 and verdicts["log_det_jacobian"].points == 3

    deaf = graded["deaf.ipynb"]  # killed with its sandbox, then graded in a new kernel
    assert deaf.points == deaf.max_points, format_table(deaf)
    assert any("killed" in note for note in deaf.notes), deaf.notes

    quitter = _by_task(graded["quitter.ipynb"])  # os._exit is an exit, not "out of memory?"
    message = quitter["log_det_jacobian"].message
    assert "exited with code 1" in message and "os._exit" in message, message
    assert "memory" not in message, message
    assert graded["quitter.ipynb"].points == 7, format_table(graded["quitter.ipynb"])

    huge = graded["huge.ipynb"]  # 53 MB of stored output: graded like its code
    assert (tmp_path / "in" / "huge.ipynb").stat().st_size > 53_000_000
    assert huge.assignment == "05_dequantization" and huge.points == 8, format_table(huge)

    junk = graded["junk.ipynb"]
    assert junk.points == 0 and "not valid JSON" in junk.notes[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before


# --- cheating: references, patched interpreters, fake models, wrong types ----------------------

_PATCH_EVERYTHING = """\
import builtins, importlib, json, sys
import flowcourse, flowcourse.exercises as fx

def _references():
    found = {}
    for module in ("flowcourse.exercises", "flowcourse.assignments.affine_flow",
                   "flowcourse.assignments"):
        try:
            m = importlib.import_module(module)
        except BaseException:
            continue
        for name in ("REFERENCES",):
            found.update(getattr(m, name, {}) if isinstance(getattr(m, name, None), dict) else {})
        for name in dir(m):
            if callable(getattr(m, name, None)):
                found.setdefault(name.removeprefix("ref_"), getattr(m, name))
    return found

_real_exec, _real_compile = builtins.exec, builtins.compile

def _exec(code, g=None, l=None):
    result = _real_exec(code, g, l)
    if isinstance(g, dict) and "probe" in g:  # the grader's probe module: answer with references
        real_probe = g["probe"]
        def probe(spec, inputs, namespace, obj=None, references=None):
            namespace.update(_references())
            return real_probe(spec, inputs, namespace, obj, references)
        g["probe"] = probe
    return result

builtins.exec = _exec
builtins.compile = lambda *a, **k: _real_compile(*a, **k)
sys.meta_path.insert(0, type("Hook", (), {"find_spec": staticmethod(lambda *a, **k: None)})())
fx.check = lambda name, obj, **k: print(f"PASS {name} (2/2 points): matches the reference")
"""


def _cheaters(folder: Path) -> None:
    key = "02_affine_flow"
    caller = exercise(key)  # stubs that call the references
    for task, body in (
        ("affine_forward", "from flowcourse.exercises import ref_affine_forward\n"
                           "    return ref_affine_forward(x, log_scale, shift)"),
        ("affine_inverse", "from flowcourse.assignments.affine_flow import affine_inverse as r\n"
                           "    return r(y, log_scale, shift)"),
    ):  # fmt: skip
        cell = caller.cells[_code_index(caller, f"def {task}(")]
        head = cell.source.split("    # YOUR CODE HERE")[0]
        cell.source = head + "    " + body + "\n"
    patcher = insert_after(exercise(key), "flowcourse.setup(", _PATCH_EVERYTHING)

    realnvp = "04_coupling_layers"
    source_model = edit(solution(realnvp), "train_realnvp", "    return model",
                        "    return TwoMoons(noise=0.1)")  # fmt: skip
    package_model = edit(
        solution(realnvp),
        "train_realnvp",
        "    return model",
        "    from flowcourse.flows import realnvp\n\n    return realnvp(2, layers=4)",
    )
    bool_masks = edit(solution(realnvp), "alternating_masks", "== 0).float()", "== 0)")
    borrowed = edit(
        solution("03_planar_flow"),
        "planar_forward",
        "    u_hat = planar_u_hat(u, w)",
        "    from flowcourse.bijections import planar as _planar\n\n"
        "    return _planar(z, u, w, b)\n    u_hat = planar_u_hat(u, w)",
    )
    _write(
        folder,
        {
            "caller.ipynb": caller,
            "patcher.ipynb": patcher,
            "source_model.ipynb": source_model,
            "package_model.ipynb": package_model,
            "bool_masks.ipynb": bool_masks,
            "borrowed.ipynb": borrowed,
        },
    )


def test_cheating_scores_nothing_and_is_named(tmp_path):
    _cheaters(tmp_path / "in")
    graded = _graded(tmp_path / "in", HOSTILE_LIMITS)

    caller = graded["caller.ipynb"]
    verdicts = _by_task(caller)
    assert caller.points == 0, format_table(caller)
    for task in ("affine_forward", "affine_inverse"):
        assert "reference implementation" in verdicts[task].message, verdicts[task].message
    assert any("reaches for the course's reference" in n for n in caller.notes), caller.notes

    patcher = graded["patcher.ipynb"]  # builtins, exec, compile, json, the import system
    assert patcher.points == 0, format_table(patcher)

    for name in ("source_model.ipynb", "package_model.ipynb"):
        v = _by_task(graded[name])["train_realnvp"]
        assert v.points == 0 and "not the RealNVP class of this notebook" in v.message, v.message
        assert graded[name].points == 9, format_table(graded[name])
    assert "TwoMoons" in _by_task(graded["source_model.ipynb"])["train_realnvp"].message

    masks = _by_task(graded["bool_masks.ipynb"])["alternating_masks"]
    assert masks.points == 0 and "dtype bool" in masks.message and "float" in masks.message

    borrowed = _by_task(graded["borrowed.ipynb"])["planar_forward"]
    assert borrowed.points == 0 and "flowcourse.bijections.planar" in borrowed.message


_SPY = """\
def lognormal_log_prob(x, mu, sigma):
    import glob, json, os, socket, subprocess

    seen = {"uid": os.getuid()}
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    seen["pids"] = len(pids)
    lines = []
    for p in pids:
        try:
            lines.append(open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace"))
        except OSError:
            pass
    seen["grader_visible"] = any("pytest" in c or "flowcourse grade" in c for c in lines)
    try:
        open("/proc/1/environ", "rb").read()
        seen["pid1_environ"] = True
    except OSError:
        seen["pid1_environ"] = False
    notebooks = []
    seen["top"] = sorted(os.listdir("/"))
    for top in ("/tmp", "/home", "/root", "/work", "/srv", "/mnt", "/opt", os.getcwd()):
        notebooks += glob.glob(top + "/**/*.ipynb", recursive=True)[:5]
    seen["notebooks"] = notebooks
    from ipykernel import get_connection_file

    own = os.path.realpath(get_connection_file())
    seen["connection_files"] = [p for p in glob.glob("/tmp/**/*.json", recursive=True)
                                if "kernel" in p and os.path.realpath(p) != own][:5]
    seen["repo"] = os.path.exists(REPO + "/solutions")
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2)
        seen["network"] = True
    except OSError:
        seen["network"] = False
    subprocess.Popen(["sleep", MARKER], start_new_session=True)
    raise RuntimeError("SPY" + json.dumps(seen) + "YPS")
"""


@needs_sandbox
def test_a_submission_sees_nothing_outside_its_sandbox(tmp_path):
    marker = f"3{os.getpid() % 1000}.25"
    spy = solution("01_change_of_variables")
    edit(spy, "lognormal_log_prob", "def lognormal_log_prob(", "def _unused_lognormal(")
    code = _SPY.replace("REPO", repr(str(ROOT))).replace("MARKER", repr(marker))
    insert_after(spy, "def _unused_lognormal(", code)
    _write(tmp_path / "in", {"spy.ipynb": spy})
    before = (tmp_path / "in" / "spy.ipynb").read_bytes()
    message = _by_task(_graded(tmp_path / "in", HOSTILE_LIMITS)["spy.ipynb"])[
        "lognormal_log_prob"
    ].message
    assert "SPY" in message, message
    seen = json.loads(message.split("SPY", 1)[1].split("YPS", 1)[0])
    assert seen["uid"] == sandbox.NOBODY, seen
    assert seen["pids"] <= 4 and not seen["grader_visible"] and not seen["pid1_environ"], seen
    assert seen["notebooks"] == [] and seen["connection_files"] == [], seen
    assert not seen["repo"] and not seen["network"], seen
    # The interpreter's own folders are mounted read-only, so their top folder shows (/work
    # here, /check on CI); nothing else beyond the system's does.
    python_tops = {root.parts[1] for root in sandbox._python_roots()}
    system = {
        "bin",
        "dev",
        "etc",
        "home",
        "lib",
        "lib32",
        "lib64",
        "proc",
        "root",
        "sbin",
        "tmp",
        "usr",
    }
    assert set(seen["top"]) <= system | python_tops, seen
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert left.stdout == "", "a process the submission started outlived its grading"
    assert (tmp_path / "in" / "spy.ipynb").read_bytes() == before


def test_without_a_sandbox_a_file_written_while_graded_gets_a_note(tmp_path):
    # In the sandbox the file is out of reach (see above); without it, the grade is kept and
    # the change is named, as the grader read the file once, before anything ran.
    vandal = solution("05_dequantization")
    insert_after(
        vandal,
        "flowcourse.setup(",
        "import glob\n"
        f"for name in glob.glob({str(tmp_path)!r} + '/**/vandal-*.ipynb', recursive=True):\n"
        "    open(name, 'w').write('{}')",
    )
    _write(tmp_path / "in", {"vandal-1.ipynb": vandal})
    (result,) = grade_paths([tmp_path / "in"], HOSTILE_LIMITS, seed=SEED, contained=False)
    assert (tmp_path / "in" / "vandal-1.ipynb").read_text() == "{}"
    assert result.points == 8, format_table(result)
    assert "the file changed while it was graded" in result.notes[-1], result.notes


# --- the command: refusal without a sandbox, shards, result files ------------------------------


def test_without_bubblewrap_grading_needs_an_explicit_no_sandbox(tmp_path, capsys, monkeypatch):
    (tmp_path / "junk.ipynb").write_text("not json")
    monkeypatch.setattr(sandbox, "available", lambda: "bubblewrap (bwrap) is not installed")
    assert main([str(tmp_path)], str(tmp_path / "out")) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "apt-get install bubblewrap" in out[0] and "--no-sandbox" in out[0]
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path)], str(tmp_path / "out"), no_sandbox=True) == 0
    assert "WITHOUT a sandbox" in capsys.readouterr().out


def test_shards_merge_into_the_results_of_one_run(tmp_path, capsys):
    for k in range(5):  # files that need no kernel, so the test is quick
        (tmp_path / "in" / f"s{k}").mkdir(parents=True)
        (tmp_path / "in" / f"s{k}" / "work.ipynb").write_text("{" * (k + 1))
    whole, parts = tmp_path / "whole", []
    assert main([str(tmp_path / "in")], str(whole), no_sandbox=True) == 0
    for k in (1, 2):
        parts.append(tmp_path / f"shard{k}")
        assert main([str(tmp_path / "in")], str(parts[-1]), shard=f"{k}/2", no_sandbox=True) == 0
    sizes = [len(json.loads((p / "grades.json").read_text())["submissions"]) for p in parts]
    assert sizes == [3, 2]
    merge(parts, tmp_path / "merged")
    for name in ("totals.csv", "grades.csv"):
        assert (tmp_path / "merged" / name).read_text() == (whole / name).read_text()
    assert main([str(tmp_path / "in")], str(whole), shard="3/2", no_sandbox=True) == 2
    assert "1 <= K <= N" in capsys.readouterr().out


def test_outputs_for_a_learning_platform_and_exit_codes(tmp_path, capsys):
    from flowcourse.assignments.core import Verdict
    from flowcourse.grading import SubmissionResult, write_results

    verdicts = [Verdict("dequantize", 2, 2, "PASS", "ok, with a comma")]
    result = SubmissionResult(
        "a/x.ipynb", "alice/x.ipynb", "alice", "05_dequantization", verdicts, max_points=8
    )
    json_path, csv_path, totals = write_results([result], tmp_path, Limits())
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["task"] for r in rows] == ["dequantize", "TOTAL"]
    assert rows[0]["message"] == "ok, with a comma" and rows[1]["max_points"] == "8"
    assert next(csv.DictReader(totals.open()))["percent"] == "25.0"
    assert json.loads(json_path.read_text())["submissions"][0]["points"] == 2
    assert main([str(tmp_path / "nothing-here")], str(tmp_path / "out"), no_sandbox=True) == 2
    assert "no notebooks" in capsys.readouterr().out


# --- a batch for timing: python tests/test_grading.py /tmp/batch ----------------------------


def write_batch(folder: Path, size: int = 24) -> None:
    """``size`` submissions: solutions, exercises, planted bugs and hostile ones, mixed."""
    pool: list[tuple[str, nbformat.NotebookNode]] = []
    for key in ASSIGNMENTS:
        pool.append((f"{key}-solution", solution(key)))
        pool.append((f"{key}-exercise", exercise(key)))
        for k, bugs in enumerate(PLANTED[key]):
            pool.append((f"{key}-planted{k}", planted(key, bugs)))
    hostile = folder.parent / (folder.name + "-hostile")
    _hostile(hostile)
    _cheaters(hostile)
    for path in sorted(hostile.glob("*.ipynb")):
        if path.name not in ("junk.ipynb", "huge.ipynb"):
            pool.append((f"hostile-{path.stem}", nbformat.read(path, as_version=4)))
    # A fixed shuffle: a stride through the pool repeats early when it shares a factor with it.
    shuffled = random.Random(0).sample(pool, len(pool))
    order = [shuffled[i % len(shuffled)] for i in range(size)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, nb) in enumerate(order):
        nbformat.write(copy.deepcopy(nb), folder / f"student{i:02d}_{name}.ipynb")


if __name__ == "__main__":
    write_batch(Path(sys.argv[1]))
