"""What a graded kernel may see of the course: the kernel-side module and the package view.

The probe module is the only grading code that runs inside a submission's kernel, so it must
import nothing but ``json``, ``math``, ``traceback`` and ``torch`` (no reference, no judge); the
package a sandboxed kernel imports must hold the library's building blocks and no reference;
and the references sent into a kernel for a task's dependencies must run there on their own.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowcourse import sandbox
from flowcourse.assignments import ASSIGNMENTS, TASKS, kernel
from flowcourse.assignments.core import make_inputs, references_source

ALLOWED = {"__future__", "json", "math", "traceback", "torch", "torch.nn.functional"}


def test_the_kernel_module_imports_only_what_it_may():
    tree = ast.parse(Path(kernel.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported - ALLOWED <= {"IPython.display"}, imported - ALLOWED
    # Run as the grader runs it: source text in a fresh module. No flowcourse module loads.
    code = (
        "import sys, types\n"
        f"source = open({kernel.__file__!r}).read()\n"
        "m = types.ModuleType('probe')\n"
        "exec(compile(source, '<flowcourse grader>', 'exec'), m.__dict__)\n"
        "print(sorted(n for n in sys.modules if n.startswith('flowcourse')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_package_a_graded_kernel_sees_has_no_references(tmp_path):
    view = sandbox.package_view(tmp_path)
    names = {p.relative_to(view).as_posix() for p in view.rglob("*.py")}
    assert {"bijections.py", "flows.py", "train.py", "exercises.py"} <= names
    assert {"grading.py", "release.py", "sandbox.py"}.isdisjoint(names)
    assert {n for n in names if n.startswith("assignments/")} == {
        "assignments/__init__.py",
        "assignments/kernel.py",
    }
    text = "\n".join(p.read_text() for p in view.rglob("*.py"))
    for task in TASKS.values():
        if task.reference is not None and not task.library:
            assert f"def {task.reference.__name__}(" not in text, task.name
    code = """
import flowcourse.exercises as fx
from flowcourse.bijections import AffineCoupling  # building blocks import as usual
from flowcourse.exercises import check, report
check("affine_forward", None)
for attempt in ("from flowcourse.exercises import ref_affine_forward",
                "import flowcourse.assignments.coupling_layers",
                "from flowcourse.assignments import ASSIGNMENTS"):
    try:
        exec(attempt)
    except ImportError as error:
        print(type(error).__name__, str(error).split(':')[0])
"""
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    absent = " is not available while grading"
    assert done.stdout.splitlines() == [
        "(check of affine_forward skipped while grading)",
        "ReferenceUnavailable flowcourse.exercises.ref_affine_forward" + absent,
        "ReferenceUnavailable flowcourse.assignments.coupling_layers" + absent,
        "ReferenceUnavailable flowcourse.assignments.ASSIGNMENTS" + absent,
    ]


DEPENDED_ON = sorted({dep for task in TASKS.values() for dep in task.depends})


@pytest.mark.parametrize("name", DEPENDED_ON)
def test_a_reference_sent_into_a_kernel_runs_there_on_its_own(name):
    task = TASKS[name]
    source = references_source([task.reference])
    scope = {"torch": torch, "math": __import__("math"), "F": torch.nn.functional}
    scope.update(LOG_2PI=kernel.LOG_2PI, log_standard_normal=kernel.log_standard_normal)
    scope.update({k: getattr(kernel, k) for k in kernel.INSTRUMENTS})
    exec(compile(source, "<references>", "exec"), scope)
    assert scope["__names__"] == [name]
    for case in make_inputs(task, 1)["cases"]:
        args = kernel.arguments([list(a) for a in task.args], case, torch.float64)
        want, got = task.reference(*args), scope[name](*args)
        flat = lambda v: torch.cat([t.reshape(-1) for t in v]) if isinstance(v, tuple | list) else v  # noqa: E731
        assert torch.equal(flat(want), flat(got)), name


def test_every_task_has_its_pieces_in_one_module():
    for key, spec in ASSIGNMENTS.items():
        for task in spec.tasks:
            module = inspect.getmodule(task.judge)
            assert module.ASSIGNMENT is spec, (key, task.name)
            assert task.reference is None or inspect.getmodule(task.reference) in (
                module,
                *(inspect.getmodule(TASKS[d].reference) for d in task.depends),
            )
            json.dumps(task.spec())  # plain data for the kernel
            rng_cases = task.cases(np.random.default_rng(0))
            assert rng_cases and all(isinstance(c, dict) for c in rng_cases)
            for kind, key_ in task.args:
                assert kind in kernel.BUILDERS and all(key_ in c for c in rng_cases)


def test_the_probe_returns_gradients_of_the_summed_result_when_asked():
    spec = {"name": "f", "args": [["tensor", "x"], ["number", "c"]], "grads": ["x"]}
    inputs = {"cases": [{"x": [-4.0, 1.0, 4.0], "c": 2.0}]}

    def run(f):
        return kernel.probe(spec, inputs, {}, obj=f)["cases"][0]

    def good(x, c):  # the tail branch computed on a clamped input
        inside = x.abs() <= c
        return torch.where(inside, x.clamp(-c, c).sqrt().nan_to_num(), x), x**2

    def unclamped(x, c):  # sqrt of a negative number, discarded by where: a NaN gradient
        return torch.where(x.abs() <= c, x.sqrt(), x), x**2

    got = run(good)
    assert got["grads"]["x"]["data"] == [1 - 8.0, 0.5 + 2.0, 1 + 8.0]
    assert got["value"]["__tuple__"][0]["data"] == [-4.0, 1.0, 4.0]
    nan = run(unclamped)["grads"]["x"]["data"]
    assert math.isnan(nan[0]) and nan[1:] == [0.5 + 2.0, 1 + 8.0]
    in_place = run(lambda x, c: (x.clamp_(-c, c), x))  # legal on the probe's copy
    assert in_place["grads"]["x"]["data"] == [0.0, 2.0, 0.0]
    detached = run(lambda x, c: x.detach() * c)
    assert "autograd" in detached["grads_error"]["message"]
    assert kernel.probe({**spec, "grads": []}, inputs, {}, obj=good)["cases"][0].keys() == {"value"}


def test_a_python_under_tmp_stays_visible_under_the_private_tmp(tmp_path, monkeypatch):
    # A clone in a temporary folder has its venv under /tmp: the sandbox's private /tmp must be
    # mounted before Python's folders are bound into it, or the kernel finds no interpreter.
    venv = Path("/tmp/clone/.venv")
    monkeypatch.setattr(sandbox, "_python_roots", lambda: [Path("/usr/lib/python3"), venv])
    args, _ = sandbox.kernel_command(
        ["-m", "ipykernel_launcher"],
        home=tmp_path / "home",
        sockets=tmp_path / "sockets",
        view=tmp_path / "view" / "flowcourse",
        sandbox=True,
        env={},
    )
    pairs = list(zip(args, args[1:], strict=False))
    private_tmp = pairs.index(("--tmpfs", "/tmp"))
    bound = pairs.index(("--ro-bind", str(venv)))
    assert private_tmp < bound, "the private /tmp is mounted over the venv"
