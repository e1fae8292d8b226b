"""What every assignment shares: a task's definition, and judging a probe's reply (grader side).

A *task* is one function a student writes. Everything about it lives in one place, its
assignment's module (``flowcourse/assignments/<name>.py``): its name, points and signature
(compared with the notebook's task header by ``flowcourse release --check``), the reference
implementation, the input generator, how the inputs become arguments inside the kernel, the
judge and an optional figure. This module holds the machinery they share: decoding the plain
data a probe returns (:mod:`flowcourse.assignments.kernel`), diagnosing shapes and dtypes,
comparing with a reference in float64 while naming known mistakes, and the verdict.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from flowcourse.assignments import kernel

__all__ = [
    "Task",
    "Assignment",
    "Verdict",
    "Fail",
    "Traced",
    "judge",
    "make_inputs",
    "reference_value",
    "references_source",
    "expect_pair",
    "expect_tensor",
    "compare",
    "close",
    "describe",
    "decode",
    "f32",
    "t",
]


@dataclass(frozen=True)
class Task:
    """One function a student writes, and everything needed to check it.

    ``args``: how a case's plain data becomes the call's arguments, ``((kind, key), ...)``
    with kinds from ``kernel.BUILDERS``. ``depends``: earlier tasks it may call; while it is
    checked they are the reference versions, so a mistake costs its points once.
    ``returns``: ``"value"``, or ``"model"`` for a task that returns a trained model (judged
    from its class, state and log-density, see ``kernel.describe_model``). ``library``:
    names of the package's own functions that compute this task; a submission that calls
    one is not solving it. ``timeout``: seconds for one probe of the task. ``grads``: keys of
    arguments whose gradients of the summed result the probe also returns; the judge then
    receives a :class:`Traced` value.
    """

    name: str
    points: int
    signature: str
    reference: Callable | None
    args: tuple[tuple[str, str], ...]
    cases: Callable[[Any], list[dict]]
    judge: Callable[[dict, Any], Any]
    depends: tuple[str, ...] = ()
    returns: str = "value"
    library: tuple[str, ...] = ()
    timeout: float = 30.0
    plot: Callable | None = None
    grads: tuple[str, ...] = ()

    def spec(self) -> dict:
        """What the kernel-side probe needs to call it: plain data."""
        spec = {"name": self.name, "args": [list(a) for a in self.args], "returns": self.returns}
        return spec | ({"grads": list(self.grads)} if self.grads else {})


@dataclass(frozen=True)
class Assignment:
    """An assignment notebook: ``key`` is its file stem and ``solutions/{key}.ipynb``."""

    key: str
    title: str
    tasks: tuple[Task, ...]
    aliases: tuple[str, ...] = ()  # earlier keys, so returned notebooks of old releases grade

    @property
    def points(self) -> int:
        return sum(task.points for task in self.tasks)

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"{self.key} has no task {name!r}")


@dataclass
class Verdict:
    """A graded task: ``points`` of ``max_points``, with a learner-facing message."""

    task: str
    points: int
    max_points: int
    status: str  # PASS, FAIL
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def __str__(self) -> str:
        return f"{self.status} {self.task} ({self.points}/{self.max_points} points): {self.message}"


def fail(task: Task, message: str) -> Verdict:
    return Verdict(task.name, 0, task.points, "FAIL", message)


class Fail(Exception):
    """A failed case; the message is the learner-facing diagnosis."""


# --- inputs and references --------------------------------------------------------------------


def f32(a) -> list:
    """Numbers as float32-exact plain data (so float32 and float64 see the same inputs)."""
    import numpy as np

    return np.asarray(a, dtype=np.float32).tolist()


def t(value) -> torch.Tensor:
    """Plain data as a float64 tensor (the grader computes references in float64)."""
    return torch.tensor(value, dtype=torch.float64)


def make_inputs(task: Task, seed: int) -> dict:
    """The plain-data inputs of one probe: ``{"cases": [...]}`` drawn with ``seed``."""
    import numpy as np

    return {"cases": task.cases(np.random.default_rng(seed))}


def reference_value(task: Task, case: dict):
    """The reference answer for one case, in float64."""
    return task.reference(*kernel.arguments(task.args, case, torch.float64))


def references_source(functions: list[Callable]) -> str:
    """Source text defining ``functions`` and the module-level functions they call.

    Sent into a kernel (``kernel.kernel_probe``) so that a task is checked with the reference
    versions of the earlier tasks it calls. The text runs in a scope holding only torch,
    math, F, LOG_2PI, log_standard_normal and the kernel's instruments (tests check that every
    reference runs there and gives the same answers).
    """
    order: list[Callable] = []

    def visit(fn: Callable) -> None:
        if fn in order:
            return
        for name in _names(fn.__code__):
            other = fn.__globals__.get(name)
            if inspect.isfunction(other) and _is_assignment_code(other):
                visit(other)
        order.append(fn)

    for fn in functions:
        visit(fn)
    parts = [textwrap.dedent(inspect.getsource(fn)) for fn in order]
    names = [fn.__name__ for fn in functions]
    return "\n\n".join(parts) + f"\n\n__names__ = {names!r}\n"


def _is_assignment_code(fn: Callable) -> bool:
    module = fn.__module__ or ""
    return module.startswith("flowcourse.assignments.") and module.rpartition(".")[2] not in (
        "core",
        "kernel",
    )


def _names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _names(const)
    return names


# --- decoding a probe's reply -----------------------------------------------------------------


class Other:
    """A returned value that is not a tensor, number, sequence or dict."""

    def __init__(self, kind: str, module: str = "") -> None:
        self.kind, self.module = kind, module

    def __repr__(self) -> str:
        return f"<{self.kind}>"


@dataclass
class Traced:
    """A returned value with the gradients of its sum (a task with ``grads``): ``grads`` maps
    an argument's key to its gradient (None: the result does not depend on it), ``error`` is
    the failure of the backward pass, if any."""

    value: Any
    grads: dict[str, Any]
    error: dict | None = None


class Unreadable:
    """A tensor too large to transfer: only its shape is known."""

    def __init__(self, shape, dtype) -> None:
        self.shape, self.dtype = tuple(shape), dtype


@dataclass
class Model:
    """A returned model: its class, where it was defined, its state and its own log-density."""

    kind: str
    module: str
    is_module: bool
    state: dict[str, Any] = field(default_factory=dict)
    log_prob_test: Any = None
    log_prob_error: dict | None = None


def decode(data: Any) -> Any:
    """Inverse of ``kernel.encode``: tensors come back as float64 (``.source_dtype`` set)."""
    if isinstance(data, dict):
        if "__tensor__" in data:
            shape = [int(s) for s in data["__tensor__"]]
            if data.get("data") is None:
                return Unreadable(shape, data.get("dtype"))
            values = torch.tensor([float(v) for v in data["data"]], dtype=torch.float64)
            if values.numel() != math.prod(shape):
                return Other("a malformed tensor")
            out = values.reshape(shape)
            out.source_dtype = str(data.get("dtype"))
            return out
        if "__model__" in data:
            state = data.get("state") if isinstance(data.get("state"), dict) else {}
            error = data.get("log_prob_error")
            return Model(
                str(data["__model__"]),
                str(data.get("module", "")),
                bool(data.get("is_module")),
                {str(k): decode(v) for k, v in state.items()},
                decode(data.get("log_prob_test")),
                error if isinstance(error, dict) else None,
            )
        if "__list__" in data:
            return [decode(v) for v in data["__list__"]]
        if "__tuple__" in data:
            return tuple(decode(v) for v in data["__tuple__"])
        if "__dict__" in data:
            return {k: decode(v) for k, v in data["__dict__"].items()}
        if "__other__" in data:
            return Other(str(data["__other__"]), str(data.get("module", "")))
        return Other("dict")
    if isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if data is None:
        return None
    return Other(type(data).__name__)


# --- diagnosis helpers used by the judges -----------------------------------------------------


def kind_of(value: Any) -> str:
    """A value as a learner would name it, for messages."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Unreadable):
        return f"a tensor of shape {value.shape}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, float):
        return f"the number {value:.6g}"
    if value is None:
        return "None (did you forget to return?)"
    if isinstance(value, Model):
        return f"a {value.kind}"
    return f"a {value.kind}" if isinstance(value, Other) else type(value).__name__


def values_text(x: torch.Tensor, k: int = 4) -> str:
    flat = x.reshape(-1).tolist()
    text = ", ".join(f"{v:.4g}" for v in flat[:k])
    return f"[{text}{', ...' if len(flat) > k else ''}]" if x.ndim else f"{x.item():.6g}"


def _where(index: tuple[int, ...], shape: tuple[int, ...]) -> str:
    if len(shape) == 0:
        return ""
    if len(shape) == 1:
        return f" at sample {index[0]}"
    if len(shape) == 2:
        return f" at sample {index[0]}, entry {index[1]}"
    return f" at index {list(index)}"


def expect_pair(value: Any, names: str) -> tuple:
    if isinstance(value, tuple | list) and len(value) == 2:
        return tuple(value)
    raise Fail(f"should return a pair ({names}), got {kind_of(value)}")


def expect_tensor(
    value: Any, shape: tuple, what: str, *, log_det: bool = False, floating: bool = True
) -> torch.Tensor:
    """``value`` must be a tensor of ``shape`` (floating point unless ``floating=False``);
    diagnoses the usual shape and dtype mistakes."""
    if isinstance(value, Unreadable):
        raise Fail(f"{what} has shape {value.shape}, expected {shape}")
    if isinstance(value, float) and shape == ():
        return torch.tensor(value, dtype=torch.float64)
    if not isinstance(value, torch.Tensor):
        raise Fail(f"{what} should be a tensor of shape {shape}, got {kind_of(value)}")
    dtype = getattr(value, "source_dtype", "float64")
    if floating and not dtype.startswith(("float", "bfloat")):
        raise Fail(
            f"{what} has dtype {dtype}, expected a floating-point tensor (float32): convert it "
            "with .float() (a bool or integer tensor breaks arithmetic such as 1 - mask)"
        )
    if tuple(value.shape) == tuple(shape):
        return value
    got = tuple(value.shape)
    if log_det and len(shape) == 1 and len(got) == 2 and got[0] == shape[0]:
        raise Fail(
            f"{what} has shape {got}, expected {shape}: you did not sum over the dimensions "
            f"(a log-det holds one number per sample: .sum(dim=-1))"
        )
    if log_det and len(shape) == 1 and got in ((), (1,)):
        raise Fail(
            f"{what} is a single number, expected one value per sample, shape {shape} "
            f"(for a constant c: x.new_zeros(len(x)) + c)"
        )
    if shape == () and len(got) == 1:
        raise Fail(f"{what} has shape {got}, expected a single number: take the mean")
    raise Fail(f"{what} has shape {got}, expected {shape}")


def close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    both_nan = a.isnan() & b.isnan()
    same_inf = a.isinf() & b.isinf() & (a.sign() == b.sign())
    return bool(((a - b).abs() <= atol + rtol * b.abs()).logical_or(both_nan | same_inf).all())


def compare(
    got: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    bugs: list[tuple[torch.Tensor | None, str]] | None = None,
    nan_hint: str = "",
) -> float:
    """Raise ``Fail`` with a diagnosis unless ``got`` matches ``expected``; returns max error.

    ``bugs``: (what a known mistake would return, message); the first that matches names it.
    """
    if close(got, expected, atol, rtol):
        finite = expected.isfinite()
        return float((got - expected)[finite].abs().max()) if finite.any() else 0.0
    bad_nan = got.isnan() & ~expected.isnan()
    if bad_nan.any():
        index = tuple(int(i) for i in bad_nan.nonzero()[0])
        raise Fail(
            f"{what} is NaN{_where(index, tuple(got.shape))} "
            f"(expected {expected[index].item():.6g})" + (f": {nan_hint}" if nan_hint else "")
        )
    for alternative, message in bugs or []:
        if alternative is not None and close(got, alternative, atol, rtol):
            raise Fail(f"{what} is wrong: {message}")
    error = (got - expected).abs().nan_to_num(nan=math.inf)
    index = tuple(int(i) for i in (error == error.max()).nonzero()[0])
    raise Fail(
        f"{what} differs from the reference{_where(index, tuple(got.shape))}: "
        f"expected {expected[index].item():.6g}, got {got[index].item():.6g}"
    )


_QUIET_KEYS = ("torch_seed", "sample_seed", "eval_seed", "grid_bounds", "grid_resolution")


def describe(case: dict) -> str:
    """A short description of one input, for messages."""
    parts = []
    for key, value in case.items():
        if key in _QUIET_KEYS or key == "n_samples":
            continue
        if isinstance(value, list):
            try:
                x = torch.tensor(value) if value and not isinstance(value[0], dict) else None
            except (TypeError, ValueError):
                x = None
            if x is not None and x.numel() <= 6 and x.ndim <= 1:
                parts.append(f"{key}={values_text(x, 6)}")
            elif x is not None:
                parts.append(f"{key} of shape {tuple(x.shape)}")
            else:
                parts.append(f"{key}: {len(value)} items")
        elif isinstance(value, dict):
            parts.append(f"{key}: grader-defined")
        else:
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


# --- the verdict ------------------------------------------------------------------------------


def judge(task: Task, inputs: dict, payload: Any) -> Verdict:
    """The verdict for one task from the probe's plain-data ``payload``. Never raises."""
    try:
        return _judge(task, inputs, payload)
    except Exception as error:  # a malformed payload is the submission's problem
        return fail(task, f"could not read the result ({type(error).__name__}: {error})")


def _judge(task: Task, inputs: dict, payload: Any) -> Verdict:
    status = payload.get("status") if isinstance(payload, dict) else None
    if status == "missing":
        return fail(
            task,
            f"function `{task.name}` not found: the notebook does not define it (was its cell "
            f"deleted, or the function renamed?). Expected {task.signature}",
        )
    if status == "not_callable":
        return fail(task, f"`{task.name}` is a {payload.get('type')}, expected a function")
    if status != "ok":
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        return fail(task, f"the grader's probe failed: {error.get('type')}: {error.get('message')}")
    cases, results = inputs["cases"], payload.get("cases", [])
    if not isinstance(results, list) or len(results) != len(cases):
        return fail(
            task,
            "the reply to the grader's probe does not match its request (were json, torch or "
            "IPython.display patched in the notebook?)",
        )
    notes = []
    for k, (case, result) in enumerate(zip(cases, results, strict=True)):
        where = f"input {k + 1} of {len(cases)}" if len(cases) > 1 else "the input"
        if not isinstance(result, dict):
            return fail(task, "the reply to the grader's probe is malformed")
        if "error" in result:
            error = result["error"] if isinstance(result["error"], dict) else {}
            if error.get("not_implemented"):
                hint = str(error.get("message", "")).partition("Hint:")[2].strip()
                return fail(
                    task,
                    f"{kernel.NOT_IMPLEMENTED} (its stub still raises NotImplementedError)"
                    + (f". Hint: {hint}" if hint else ""),
                )
            if error.get("reference"):
                return fail(
                    task,
                    "calls the course's reference implementation, which is not available "
                    f"while grading: write `{task.name}` with your own code "
                    f"({error.get('message')})",
                )
            at = f" ({error['where']})" if error.get("where") else ""
            return fail(
                task,
                f"raised {error.get('type')}{at} on {where} ({describe(case)}): "
                f"{error.get('message')}",
            )
        value = decode(result.get("value"))
        if task.grads:
            grads, error = result.get("grads"), result.get("grads_error")
            if not isinstance(grads, dict):
                grads, error = {}, error if isinstance(error, dict) else {"message": "no reply"}
            value = Traced(value, {str(k): decode(v) for k, v in grads.items()}, error)
        try:
            notes.append(task.judge(case, value))
        except Fail as failure:
            return fail(task, f"{failure} (on {where}: {describe(case)})")
    numbers = [n for n in notes if isinstance(n, float)]
    if numbers:
        message = f"matches the reference on {len(cases)} input(s) (max error {max(numbers):.1e})"
    else:
        message = "; ".join(str(n) for n in notes)
    return Verdict(task.name, task.points, task.points, "PASS", message)
