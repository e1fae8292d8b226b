"""Numerical checks for bijections and densities, with messages written for learners.

Each ``check_*`` returns a :class:`CheckResult` (truthy when it passed) and never raises on a
broken layer: an exception inside the layer becomes a failed result that names it.
``check_bijection`` runs them all and returns a :class:`Report`. Checks work on copies, so the
layer you pass is never modified. Pass a freshly constructed layer to exercise data-dependent
initialisation, and ``perturbed(layer)`` for layers that start as the identity (an identity
layer passes most checks whatever its formulas).
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "claim",
    "raises",
    "ClaimFailed",
    "CheckFailed",
    "CheckResult",
    "Report",
    "check_shapes",
    "check_round_trip",
    "check_log_det",
    "check_inverse_log_det",
    "check_state_dict",
    "check_normalised",
    "check_bijection",
    "check_autoregressive",
    "check_spline",
    "perturbed",
]


class CheckFailed(AssertionError):
    """Raised by ``raise_if_failed``; the message says what went wrong."""


class ClaimFailed(AssertionError):
    """Raised by :func:`claim` when a number a notebook states does not hold."""


def _number(value: float, fmt: str | None) -> str:
    if fmt is not None:
        return format(value, fmt)
    magnitude = abs(value)
    if value == 0 or math.isinf(value) or math.isnan(value):
        return str(value)
    if magnitude < 1e-3 or magnitude >= 1e5:
        return f"{value:.1e}"
    return f"{value:.3g}" if magnitude >= 100 else f"{value:.3f}"


def claim(
    what: str,
    value: float | bool | Tensor,
    *,
    below: float | None = None,
    at_most: float | None = None,
    above: float | None = None,
    at_least: float | None = None,
    near: float | None = None,
    tol: float | None = None,
    unit: str = "",
    fmt: str | None = None,
) -> None:
    """State a result and check it in one readable line: ``gap 0.035 nats < 0.05 ✓``.

    ``value`` is a number (or a one-element tensor) checked against the bounds given
    (``below`` <, ``at_most`` <=, ``above`` >, ``at_least`` >=, ``near`` with ``tol``), or a
    bool for a statement (``claim("the Jacobian is lower triangular", bool(...))``).
    Prints the line and returns nothing (a claim ending a cell adds no ``Out``); raises
    :class:`ClaimFailed` with what was expected when the claim does not hold. ``fmt``
    formats the numbers (default: 3 decimals, or scientific notation for tiny or huge ones).

    >>> claim("gap", 0.035, below=0.05, unit="nats")
    gap 0.035 nats < 0.05 ✓
    >>> claim("grid mass", 1.0004, near=1, tol=0.01)
    grid mass 1.000 = 1 ± 0.01 ✓
    """
    if isinstance(value, bool):
        if any(b is not None for b in (below, at_most, above, at_least, near, tol)):
            raise TypeError(f"claim({what!r}, ...): a bool claim takes no bounds")
        if not value:
            raise ClaimFailed(f"claim failed: {what} does not hold")
        print(f"{what} ✓")
        return
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"claim({what!r}, ...) expects one number, got a tensor of shape "
                f"{tuple(value.shape)}: reduce it first (.max(), .mean())"
            )
        value = value.item()
    if not isinstance(value, int | float):
        raise TypeError(
            f"claim({what!r}, ...) expects a number or a bool, got {type(value).__name__}"
        )
    if (near is None) != (tol is None):
        raise TypeError(f"claim({what!r}, ...): give near= and tol= together")
    value = float(value)
    shown = _number(value, fmt) + (f" {unit}" if unit else "")
    tests = [
        (above, ">", lambda b: value > b),
        (at_least, "≥", lambda b: value >= b),
        (below, "<", lambda b: value < b),
        (at_most, "≤", lambda b: value <= b),
    ]
    parts, ok = [], True
    for bound, symbol, holds in tests:
        if bound is not None:
            parts.append(f"{symbol} {bound:g}")
            ok = ok and holds(bound)
    if near is not None:
        parts.append(f"= {near:g} ± {tol:g}")
        ok = ok and abs(value - near) <= tol
    if not parts:
        raise TypeError(f"claim({what!r}, ...) needs a bound: below=, at_most=, above=, ...")
    line = f"{what} {shown} " + " and ".join(parts)
    if not ok or math.isnan(value):
        raise ClaimFailed(f"claim failed: {what} is {shown}, expected " + " and ".join(parts))
    print(line + " ✓")


@dataclass
class CheckResult:
    """Outcome of one check. ``skipped`` results count as passed (nothing was wrong)."""

    name: str
    passed: bool
    message: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{self.status} {self.name}: {self.message}"

    def raise_if_failed(self) -> CheckResult:
        if not self.passed:
            raise CheckFailed(str(self))
        return self


@dataclass
class Report:
    """Results of several checks; ``passed`` when none failed."""

    title: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.passed]

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        counts = {s: sum(r.status == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}
        head = (
            f"{'PASS' if self.passed else 'FAIL'} {self.title}: {counts['PASS']} passed, "
            f"{counts['FAIL']} failed, {counts['SKIP']} skipped"
        )
        width = max((len(r.name) for r in self.results), default=0)
        rows = [f"  {r.status}  {r.name:<{width}}  {r.message}" for r in self.results]
        return "\n".join([head, *rows])

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython display
        printer.text(str(self))

    def raise_if_failed(self) -> Report:
        if not self.passed:
            raise CheckFailed(str(self))
        return self


@contextmanager
def raises(*expected: type[BaseException], match: str | None = None) -> Iterator[None]:
    """Run a block that must fail, and show its error the way a reader needs it: one line.

    For a mistake a notebook commits on purpose: ``with raises(TypeError): model(z)`` prints
    ``TypeError: <message> ✓ (the error we expected)`` (and the error that caused it, if any),
    instead of a long traceback through library internals. Raises :class:`ClaimFailed` if the
    block does not fail, or fails another way (or without ``match`` in its message).
    """
    kinds = expected or (Exception,)
    names = " or ".join(k.__name__ for k in kinds)
    try:
        yield
    except kinds as error:
        text = f"{type(error).__name__}: {_short(error)}"
        if match is not None and match not in str(error):
            raise ClaimFailed(
                f"claim failed: expected {names} mentioning {match!r}, got {text}"
            ) from error
        print(f"{text} ✓ (the error we expected)")
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is not None:
            print(f"  caused by {type(cause).__name__}: {_short(cause)}")
    else:
        raise ClaimFailed(f"claim failed: expected {names}, but the code ran without error")


def _short(error: BaseException, width: int = 300) -> str:
    lines = str(error).strip().splitlines() or [""]
    text = lines[0] if len(lines) == 1 else lines[0] + " ..."
    return text if len(text) <= width else text[: width - 3] + "..."


# --- plumbing: calling a possibly broken layer ----------------------------------------------


class _Broken(Exception):
    """The layer misbehaved; the message is the learner-facing diagnosis."""


class _NoInverse(Exception):
    """The layer's inverse raises NotImplementedError: inverse-based checks are skipped."""


def _name(layer: object) -> str:
    label = getattr(layer, "label", None)
    try:
        return label() if callable(label) else type(layer).__name__
    except Exception:
        return type(layer).__name__


def _run(layer: nn.Module, method: str, v: Tensor) -> tuple[Tensor, Tensor]:
    """``layer(v)`` or ``layer.inverse(v)``, turning any failure into _Broken / _NoInverse."""
    try:
        out = layer(v) if method == "forward" else layer.inverse(v)
    except NotImplementedError as error:
        if method == "inverse":
            raise _NoInverse(f"{_name(layer)}.inverse is not implemented") from None
        raise _Broken(f"{_name(layer)}.forward raised NotImplementedError: {error}") from None
    except Exception as error:
        raise _Broken(f"{_name(layer)}.{method} raised {type(error).__name__}: {error}") from None
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
        got = type(out).__name__ if not isinstance(out, tuple) else f"a tuple of {len(out)}"
        raise _Broken(
            f"{_name(layer)}.{method} must return a pair of tensors (y, log_det), got {got}"
        )
    return out


def _guarded(name: str, body: Callable[[], CheckResult]) -> CheckResult:
    try:
        return body()
    except _NoInverse as note:
        return CheckResult(name, True, f"skipped: {note}", skipped=True)
    except _Broken as error:
        return CheckResult(name, False, str(error))
    except Exception as error:  # a grader calls this on student code: never crash
        return CheckResult(name, False, f"the check could not run: {type(error).__name__}: {error}")


def _ready_copy(layer: nn.Module, x: Tensor, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``layer`` (optionally in ``dtype``), warmed up on ``x`` and put in eval mode.

    The warm-up lets data-dependent initialisation (ActNorm) see the whole batch before checks
    that call the layer sample by sample; eval mode makes repeated calls agree.
    """
    if not isinstance(layer, nn.Module):
        raise _Broken(f"expected a torch.nn.Module, got {type(layer).__name__}")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise _Broken(f"the check needs a non-empty x of shape (batch, dim), got {got}")
    layer = copy.deepcopy(layer)
    if dtype is not None:
        layer = layer.to(dtype)
    layer.train()
    with torch.no_grad():
        _run(layer, "forward", x.detach().clone())
    return layer.eval()


def _fmt(t: Tensor) -> str:
    values = t.detach().reshape(-1).tolist()
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]" if t.ndim else f"{t.item():.6g}"


def _log_det_shape_problem(log_det: Tensor, n: int, d: int, method: str) -> str | None:
    if log_det.shape == (n,):
        return None
    if log_det.shape == (n, d):
        return (
            f"{method} returned log_det of shape {(n, d)}: you did not sum over dimensions; "
            f"return log_det.sum(dim=1), of shape ({n},)"
        )
    if log_det.ndim == 0:
        return (
            f"{method} returned a single number as log_det; it must hold one value per "
            f"sample, shape ({n},) (a constant c: x.new_zeros(batch) + c)"
        )
    return f"{method} returned log_det of shape {tuple(log_det.shape)}, expected ({n},)"


def _close(a: Tensor, b: Tensor, atol: float, rtol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(((a - b).abs() <= atol + rtol * b.abs()).all())


# --- the checks -----------------------------------------------------------------------------


def check_shapes(layer: nn.Module, x: Tensor) -> CheckResult:
    """``y`` has the shape and dtype of ``x: (batch, dim)``; ``log_det: (batch,)``; all finite."""
    name = "shapes"

    def body() -> CheckResult:
        copy_ = _ready_copy(layer, x)
        n, d = x.shape
        problems: list[str] = []
        y, log_det = _run(copy_, "forward", x)
        checked = [("forward", x, y, log_det, "y")]
        note = ""
        try:
            if y.shape == x.shape:
                x_back, log_det_back = _run(copy_, "inverse", y)
                checked.append(("inverse", y, x_back, log_det_back, "x"))
        except _NoInverse:
            note = " (inverse not implemented: only forward checked)"
        for method, inp, out, ld, out_name in checked:
            if out.shape != inp.shape:
                problems.append(
                    f"{method} returned {out_name} of shape {tuple(out.shape)}, "
                    f"expected {tuple(inp.shape)}"
                )
            elif out.dtype != inp.dtype:
                problems.append(f"{method} turned {inp.dtype} into {out.dtype}")
            elif not bool(out.isfinite().all()):
                i = int((~out.isfinite()).any(dim=1).nonzero()[0])
                problems.append(
                    f"{method} returned non-finite {out_name} at sample {i}: {_fmt(out[i])}"
                )
            shape_problem = _log_det_shape_problem(ld, n, d, method)
            if shape_problem:
                problems.append(shape_problem)
            elif not bool(ld.isfinite().all()):
                i = int((~ld.isfinite()).nonzero()[0])
                problems.append(f"{method} returned log_det = {ld[i].item()} at sample {i}")
        if problems:
            return CheckResult(name, False, "; ".join(problems))
        return CheckResult(
            name, True, f"x {(n, d)} -> y {(n, d)}, log_det ({n},), all finite" + note
        )

    return _guarded(name, body)


def check_round_trip(layer: nn.Module, x: Tensor, atol: float = 1e-5) -> CheckResult:
    """``inverse(forward(x))`` gives back ``x`` within ``atol``, in the dtype of ``x``."""
    name = "round trip"

    def body() -> CheckResult:
        copy_ = _ready_copy(layer, x)
        with torch.no_grad():
            y, _ = _run(copy_, "forward", x)
            x_back, _ = _run(copy_, "inverse", y)
        if x_back.shape != x.shape:
            return CheckResult(
                name,
                False,
                f"inverse(forward(x)) has shape {tuple(x_back.shape)}, expected {tuple(x.shape)}",
            )
        error = (x_back - x).abs().amax(dim=1).nan_to_num(nan=math.inf)
        i = int(error.argmax())
        worst = error[i].item()
        if worst <= atol:
            return CheckResult(
                name, True, f"max |inverse(forward(x)) - x| = {worst:.2e} <= atol = {atol:g}"
            )
        return CheckResult(
            name,
            False,
            f"inverse(forward(x)) is not x: error {worst:.3g} > "
            f"atol = {atol:g} at sample {i}: expected {_fmt(x[i])}, "
            f"got {_fmt(x_back[i])}",
        )

    return _guarded(name, body)


def check_log_det(
    layer: nn.Module, x: Tensor, direction: str = "forward", atol: float = 1e-6
) -> CheckResult:
    """The layer's ``log_det`` equals ``log|det J|`` from autograd, per sample, in float64.

    ``direction="inverse"`` checks the inverse's log-det at ``y = forward(x)`` (so ``x`` is
    always a point of the layer's input space). The layer is copied and converted to float64.
    """
    if direction not in ("forward", "inverse"):
        raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
    name = "log-det" if direction == "forward" else "log-det (inverse)"

    def body() -> CheckResult:
        x64 = x.detach().double()
        copy_ = _ready_copy(layer, x64, torch.float64)
        v = x64 if direction == "forward" else _run(copy_, "forward", x64)[0].detach()
        n, d = v.shape
        out, got = _run(copy_, direction, v)
        if out.shape != v.shape:
            return CheckResult(
                name, False, f"{direction} returned shape {tuple(out.shape)}, expected {(n, d)}"
            )
        got = got.detach()
        jac = torch.autograd.functional.jacobian(lambda inp: _run(copy_, direction, inp)[0], v)
        idx = torch.arange(n)
        blocks = jac[idx, :, idx, :]  # (n, d, d): sample i's outputs w.r.t. its own inputs
        across = jac.clone()
        across[idx, :, idx, :] = 0
        if n > 1 and across.abs().max() > 1e-9:
            return CheckResult(
                name,
                False,
                "the output of one sample depends on other samples "
                "in the batch (e.g. batch statistics); a bijection must act on "
                "each sample on its own",
            )
        sign, expected = torch.linalg.slogdet(blocks)

        shape_problem = _log_det_shape_problem(got, n, d, direction)
        if shape_problem:
            if got.shape == (n, d) and _close(got.sum(1), expected, atol):
                shape_problem += " (its sums over dimensions are right)"
            return CheckResult(name, False, shape_problem)
        if bool((sign == 0).any()):
            i = int((sign == 0).nonzero()[0])
            return CheckResult(
                name,
                False,
                f"the Jacobian is singular at sample {i} (det J = 0): "
                "the map is not invertible there. If a scale can become zero "
                "or negative, parametrise it as exp(log_scale)",
            )
        if bool((sign > 0).any()) and bool((sign < 0).any()):
            i, j = int((sign > 0).nonzero()[0]), int((sign < 0).nonzero()[0])
            return CheckResult(
                name,
                False,
                f"det J changes sign: > 0 at sample {i} but < 0 at "
                f"sample {j}. A smooth map whose Jacobian determinant changes sign "
                "folds space onto itself, so it is not invertible (planar flow: "
                "enforce w.u >= -1 with the u_hat correction)",
            )
        if not bool(got.isfinite().all()):
            i = int((~got.isfinite()).nonzero()[0])
            return CheckResult(
                name,
                False,
                f"log_det is {got[i].item()} at sample {i}, but "
                f"log|det J| = {expected[i].item():.6g}: probably the log of a "
                "negative or zero number. A scale can become negative/zero: "
                "parametrise it as exp(log_scale) (or take log|scale|)",
            )
        error = (got - expected).abs()
        if _close(got, expected, atol):
            return CheckResult(
                name,
                True,
                f"matches log|det J| from autograd on {n} samples "
                f"(float64, max error {error.max().item():.1e})",
            )
        k = int(expected.abs().argmax())
        if expected.abs().max() > atol and _close(got, -expected, atol):
            hint = " (an inverse's log_det is minus the forward one)" * (direction == "inverse")
            return CheckResult(
                name,
                False,
                f"your log-det has the opposite sign: at sample {k} "
                f"log|det J| = {expected[k].item():.6g}, got {got[k].item():.6g}" + hint,
            )
        if d > 1 and _close(got * d, expected, atol):
            return CheckResult(
                name, False, "log_det is the mean over dimensions, not the sum: use .sum(dim=1)"
            )
        offset = got - expected
        if n > 1 and (offset.max() - offset.min()).item() <= atol:
            return CheckResult(
                name,
                False,
                f"log_det is off by the same constant "
                f"{offset.mean().item():.6g} at every sample: a constant term is "
                "missing or extra (e.g. log(1 - 2 alpha) in a logit layer, or the "
                "log of a fixed scaling)",
            )
        i = int(error.argmax())
        return CheckResult(
            name,
            False,
            f"log_det does not match log|det J| from autograd: at "
            f"sample {i} expected {expected[i].item():.6g}, got "
            f"{got[i].item():.6g} (error {error[i].item():.2e} > atol = {atol:g})",
        )

    return _guarded(name, body)


def check_inverse_log_det(layer: nn.Module, x: Tensor, atol: float = 1e-6) -> CheckResult:
    """The inverse's ``log_det`` at ``y = forward(x)`` is minus the forward one at ``x``."""
    name = "inverse log-det"

    def body() -> CheckResult:
        x64 = x.detach().double()
        copy_ = _ready_copy(layer, x64, torch.float64)
        n, d = x64.shape
        with torch.no_grad():
            y, forward_ld = _run(copy_, "forward", x64)
            _, inverse_ld = _run(copy_, "inverse", y)
        for method, ld in (("forward", forward_ld), ("inverse", inverse_ld)):
            shape_problem = _log_det_shape_problem(ld, n, d, method)
            if shape_problem:
                return CheckResult(name, False, shape_problem)
        expected = -forward_ld
        if _close(inverse_ld, expected, atol):
            return CheckResult(
                name, True, "inverse log_det at y = forward(x) is minus the forward one"
            )
        if not bool(inverse_ld.isfinite().all()):
            i = int((~inverse_ld.isfinite()).nonzero()[0])
            return CheckResult(
                name,
                False,
                f"inverse log_det is {inverse_ld[i].item()} at "
                f"sample {i}; expected {expected[i].item():.6g}",
            )
        if forward_ld.abs().max() > atol and _close(inverse_ld, forward_ld, atol):
            return CheckResult(
                name,
                False,
                "the inverse returns the same log-det as forward: "
                "your inverse log-det has the opposite sign (it must be minus "
                "the forward one)",
            )
        i = int((inverse_ld - expected).abs().argmax())
        return CheckResult(
            name,
            False,
            f"inverse log_det is not minus the forward one: at sample "
            f"{i} expected {expected[i].item():.6g}, got "
            f"{inverse_ld[i].item():.6g}",
        )

    return _guarded(name, body)


_MODULE_ATTRS = set(vars(nn.Module()))  # nn.Module's own bookkeeping, not layer state


def _scramble(module: nn.Module) -> list[str]:
    """Fill every tensor of ``module`` with garbage; return the plain (unsaved) attributes."""
    suspects = []

    def garbage(t: Tensor) -> None:
        if t.is_floating_point() or t.is_complex():
            t.fill_(math.nan)
        elif t.dtype == torch.bool:
            t.logical_not_()
        elif t.ndim and t.numel() > 1:
            t.copy_(t.roll(1, 0))
        else:
            t.add_(1)

    with torch.no_grad():
        for owner, sub in module.named_modules():
            label = type(sub).__name__ + (f" ({owner})" if owner else "")
            tensors = [*sub._parameters.values(), *sub._buffers.values()]
            for t in tensors:
                if t is not None:
                    garbage(t)
            for attr, value in vars(sub).items():
                if attr in _MODULE_ATTRS:
                    continue
                if isinstance(value, Tensor):
                    garbage(value)  # in a fresh process it would not hold the saved value either
                    suspects.append(f"{label}.{attr} (tensor)")
                elif isinstance(value, bool):
                    suspects.append(f"{label}.{attr} (bool)")
    return suspects


def _identical(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def check_state_dict(layer: nn.Module, x: Tensor) -> CheckResult:
    """Saving and loading ``state_dict`` into a fresh copy reproduces the outputs exactly.

    The copy is taken before any data-dependent initialisation, its tensors are overwritten
    with garbage, then it loads the state saved (through ``torch.save``) from a copy that was
    run on another batch. Both then run on ``x`` in training mode. This catches state kept in
    plain attributes, e.g. an ActNorm whose ``initialized`` flag is not a buffer and so
    initialises again after loading. Pass a freshly constructed layer and ``x`` with batch >= 2.
    """
    name = "state_dict"

    def body() -> CheckResult:
        if not isinstance(layer, nn.Module):
            raise _Broken(f"expected a torch.nn.Module, got {type(layer).__name__}")
        fresh = copy.deepcopy(layer)  # as passed in: before any data-dependent initialisation
        saved = copy.deepcopy(layer).train()
        center = x.mean(0)
        with torch.no_grad():
            _run(saved, "forward", center + 0.5 * (x - center))  # another batch, same domain
        buffer = io.BytesIO()
        torch.save(saved.state_dict(), buffer)
        buffer.seek(0)
        suspects = _scramble(fresh)
        try:
            fresh.load_state_dict(torch.load(buffer))
        except Exception as error:
            raise _Broken(f"load_state_dict raised {type(error).__name__}: {error}") from None
        fresh.train()

        def outputs(module: nn.Module) -> list[Tensor]:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # same dropout masks, if any, in both runs
                y, log_det = _run(module, "forward", x)
                try:
                    return [y, log_det, *_run(module, "inverse", y)]
                except _NoInverse:
                    return [y, log_det]

        expected, got = outputs(saved), outputs(fresh)
        if all(_identical(a, b) for a, b in zip(expected, got, strict=True)):
            return CheckResult(
                name, True, "a fresh copy that loads the saved state_dict gives identical outputs"
            )
        diff = max(
            (
                (a - b).abs().nan_to_num(nan=math.inf).max().item()
                for a, b in zip(expected, got, strict=True)
                if a.shape == b.shape
            ),
            default=math.inf,
        )
        where = (
            f"plain attributes, which state_dict does not save: {', '.join(suspects)}"
            if suspects
            else "state that state_dict does not save"
        )
        return CheckResult(
            name,
            False,
            f"after saving and loading the state_dict into a fresh "
            f"copy, the outputs differ (max |difference| = {diff:.3g}). Suspects: "
            f"{where}. Keep every piece of state in nn.Parameter or "
            "self.register_buffer(...)",
        )

    return _guarded(name, body)


def check_normalised(
    log_prob: Callable[[Tensor], Tensor] | object,
    bounds: tuple[tuple[float, float], tuple[float, float]] = ((-4, 4), (-4, 4)),
    resolution: int = 400,
    tol: float = 1e-2,
) -> CheckResult:
    """A 2-D density integrates to 1: midpoint rule for ``exp(log_prob)`` on a grid.

    ``log_prob``: a function ``(batch, 2) -> (batch,)``, or any object with a ``log_prob``
    method (a Flow, a Distribution). Mass outside ``bounds`` is missed, so use a box that
    holds essentially all of it.
    """
    name = "normalised"

    def body() -> CheckResult:
        fn = getattr(log_prob, "log_prob", log_prob)
        try:
            (x0, x1), (y0, y1) = bounds
        except (TypeError, ValueError):
            raise _Broken(
                f"check_normalised works in 2-D only: bounds must be "
                f"((xmin, xmax), (ymin, ymax)), got {bounds!r}"
            ) from None
        owner = getattr(fn, "__self__", None)
        tensors = [*owner.parameters(), *owner.buffers()] if isinstance(owner, nn.Module) else []
        floats = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = floats[0] if floats else torch.get_default_dtype()
        xs = x0 + (torch.arange(resolution, dtype=dtype) + 0.5) * (x1 - x0) / resolution
        ys = y0 + (torch.arange(resolution, dtype=dtype) + 0.5) * (y1 - y0) / resolution
        grid = torch.cartesian_prod(xs, ys)
        with torch.no_grad():
            try:
                values = torch.cat([fn(chunk).reshape(-1) for chunk in grid.split(2**15)])
            except Exception as error:
                raise _Broken(f"log_prob raised {type(error).__name__}: {error}") from None
        if values.shape != (grid.shape[0],):
            return CheckResult(
                name,
                False,
                f"log_prob must return one value per point: got "
                f"{values.numel()} values for {grid.shape[0]} points",
            )
        cell = (x1 - x0) * (y1 - y0) / resolution**2
        integral = (torch.logsumexp(values.double(), 0) + math.log(cell)).exp().item()
        box = f"[{x0:g}, {x1:g}] x [{y0:g}, {y1:g}]"
        message = f"integral of exp(log_prob) over {box} = {integral:.4f}"
        if abs(integral - 1) <= tol:
            return CheckResult(name, True, message + f" (1 within tol = {tol:g})")
        if math.isnan(integral):
            hint = "log_prob returned NaN somewhere on the grid"
        elif integral < 1:
            hint = "too little mass: mass outside the box, or a log-det term missing"
        else:
            hint = "too much mass: a log-det with the wrong sign, or a missing normalising constant"
        return CheckResult(name, False, f"{message}, expected 1 within tol = {tol:g}: {hint}")

    return _guarded(name, body)


class _AtContext(nn.Module):
    """A conditional layer at a fixed context (a buffer): a bijection of ``x`` alone."""

    def __init__(self, layer: nn.Module, context: Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("context", context.detach().clone())

    def label(self) -> str:
        return _name(self.layer)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer(x, context=self.context)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer.inverse(y, context=self.context)


def check_bijection(layer: nn.Module, x: Tensor, context: Tensor | None = None) -> Report:
    """Run every check on ``layer`` at the points ``x: (batch, dim)``; returns a Report.

    Checks that need the inverse are skipped (not failed) when it raises NotImplementedError.
    A conditional layer is checked at a fixed ``context: (batch, context_dim)``, one row per
    point: for each context it must be a bijection of ``x``.
    """
    shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
    if context is not None:
        layer = _AtContext(layer, context)
    return Report(
        f"check_bijection({_name(layer)}) on x of shape {shape}",
        [
            check_shapes(layer, x),
            check_round_trip(layer, x),
            check_log_det(layer, x, "forward"),
            check_log_det(layer, x, "inverse"),
            check_inverse_log_det(layer, x),
            check_state_dict(layer, x),
        ],
    )


def check_autoregressive(
    net: Callable[..., Tensor],
    x: Tensor,
    context: Tensor | None = None,
    order: Tensor | None = None,
) -> CheckResult:
    """Output ``i`` of ``net`` depends on every input before ``i`` in ``order``, and on no other.

    The MADE property, read from the Jacobian that autograd computes in float64 at the points
    ``x: (batch, dim)``. ``net(x)`` (or ``net(x, context)``) returns ``(batch, dim)`` or
    ``(batch, outputs, dim)``, the numbers of entry ``i`` in the last axis; ``order`` defaults
    to ``net.order`` if it has one, else ``0, 1, ..., dim - 1``. A dependence on the entry
    itself or a later one breaks the triangular Jacobian (so the sum of log-scales is no longer
    the log-det); a dependence that never shows means the masks are too strict. Use a network
    with non-zero weights (a zero-initialised last layer shows no dependence at all), and
    enough points that some ReLU unit on each path is active.
    """
    name = "autoregressive"

    def body() -> CheckResult:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise _Broken(f"the check needs a non-empty x of shape (batch, dim), got {got}")
        n, d = x.shape
        copy_ = copy.deepcopy(net).double() if isinstance(net, nn.Module) else net
        ctx = None if context is None else context.detach().double()
        ranks = order if order is not None else getattr(net, "order", None)
        ranks = torch.arange(d) if ranks is None else torch.as_tensor(ranks).long()
        rank = torch.empty(d, dtype=torch.long)
        rank[ranks] = torch.arange(d)

        def outputs(v: Tensor) -> Tensor:
            try:
                out = copy_(v) if ctx is None else copy_(v, ctx)
            except Exception as error:
                raise _Broken(f"the network raised {type(error).__name__}: {error}") from None
            if not isinstance(out, Tensor) or out.shape[0] != n or out.shape[-1] != d:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise _Broken(f"expected outputs of shape ({n}, ..., {d}), got {got}")
            return out.reshape(n, -1, d)

        jac = torch.autograd.functional.jacobian(outputs, x.detach().double())
        idx = torch.arange(n)
        own = jac[idx, :, :, idx, :]  # (n, outputs, d, d): sample b's outputs w.r.t. its inputs
        depends = (own.abs() > 0).any(0).any(0)  # (d, d): output i depends on input j somewhere
        before = rank[None, :] < rank[:, None]  # input j comes before output i
        bad = depends & ~before
        if bool(bad.any()):
            i, j = (int(v) for v in bad.nonzero()[0])
            if i == j:
                why = (
                    f"the outputs of entry {i} depend on x_{i} itself. The output layer's "
                    "mask must be strict (degree of the output > degree of the hidden unit): "
                    "with >= an entry sees itself, an off-by-one in the degrees"
                )
            else:
                why = f"the outputs of entry {i} depend on x_{j}, which comes after it in the order"
            return CheckResult(
                name,
                False,
                why + ". The Jacobian is then not triangular, and the sum of the log-scales "
                "is not the log-det",
            )
        missing = before & ~depends
        if bool(missing.any()):
            i, j = (int(v) for v in missing.nonzero()[0])
            return CheckResult(
                name,
                False,
                f"the outputs of entry {i} never depend on x_{j}, which comes before it: the "
                "masks are too strict (a hidden unit of degree k must read inputs of degree "
                "<= k, not < k), or there are too few hidden units to carry every degree",
            )
        return CheckResult(
            name,
            True,
            f"each entry's outputs depend on all earlier entries and on no other, "
            f"on {n} points (float64)",
        )

    return _guarded(name, body)


# --- splines --------------------------------------------------------------------------------


def _spline_run(
    fn: Callable[..., object], v: Tensor, params: tuple[Tensor, ...], bound: float, what: str
) -> tuple[Tensor, Tensor]:
    try:
        out = fn(v, *params, bound)
    except Exception as error:
        raise _Broken(f"{what} raised {type(error).__name__}: {error}") from None
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
        raise _Broken(f"{what} must return a pair of tensors (values, log_det)")
    y, log_det = out
    if y.shape != v.shape or log_det.shape != v.shape:
        raise _Broken(
            f"{what} must return values and log_det of the input's shape {tuple(v.shape)}, "
            f"got {tuple(y.shape)} and {tuple(log_det.shape)}"
        )
    return y, log_det


def _spline_params(
    n: int, bins: int, std: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * std

    return draw(n, bins), draw(n, bins), draw(n, bins - 1)


def check_spline(
    spline: Callable[..., tuple[Tensor, Tensor]],
    spline_inverse: Callable[..., tuple[Tensor, Tensor]] | None = None,
    *,
    bound: float = 3.0,
    bins: int = 5,
    reference: bool = True,
    seed: int = 0,
    atol: float = 1e-6,
) -> Report:
    """Check a monotone rational-quadratic spline with identity tails, in float64.

    ``spline(x, widths, heights, derivatives, bound) -> (y, log_det)`` acts element-wise on
    ``x: (n,)`` with raw parameters ``(n, K)``, ``(n, K)``, ``(n, K - 1)`` (one spline per
    element), as ``flowcourse.splines.rq_spline``; ``spline_inverse`` (optional) likewise.
    Parameters are drawn with ``seed``. Checked: all-zero parameters give the identity; the
    values match the course's parametrisation (``reference=True``: softmax widths and
    heights, boundary slopes 1); log-dets against autograd; the joins at ``+-bound`` (continuous,
    slope 1 on both sides); finite gradients for inputs outside ``[-bound, bound]``; the round
    trip.
    """
    gen = torch.Generator().manual_seed(seed)
    n = 64
    params = _spline_params(n, bins, 1.5, gen)
    x_in = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * bound * 0.999
    x_all = torch.cat([x_in, (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 4 * bound])
    params_all = tuple(torch.cat([p, p]) for p in params)
    zeros = tuple(torch.zeros_like(p) for p in params_all)
    directions = [("forward", spline)] + ([("inverse", spline_inverse)] * bool(spline_inverse))
    results: list[CheckResult] = []

    def identity() -> CheckResult:
        problems = []
        for direction, fn in directions:
            y, log_det = _spline_run(fn, x_all, zeros, bound, direction)
            error = max((y - x_all).abs().max().item(), log_det.abs().max().item())
            if not math.isfinite(error) or error > atol:
                hint = ""
                if direction == "inverse" and not bool(y.isfinite().all()):
                    hint = (
                        ": NaN where every bin is straight. There a = 0 in a xi^2 + b xi + c = 0, "
                        "and the textbook root (-b + sqrt(b^2 - 4ac)) / 2a is 0 / 0; use "
                        "xi = 2c / (-b - sqrt(b^2 - 4ac))"
                    )
                elif not hint:
                    hint = (
                        ": all-zero raw parameters must give equal bins and unit slopes "
                        "(a raw derivative of 0 is a slope of 1)"
                    )
                problems.append(f"{direction} is not the identity (error {error:.3g}){hint}")
        if problems:
            return CheckResult("identity at zero", False, "; ".join(problems))
        return CheckResult(
            "identity at zero", True, "all-zero parameters give y = x and log_det = 0"
        )

    def matches_reference() -> CheckResult:
        from flowcourse.splines import rq_spline

        y, _ = _spline_run(spline, x_in, params, bound, "forward")
        expected, _ = rq_spline(x_in, *params, bound)
        if _close(y, expected, atol):
            return CheckResult(
                "parametrisation", True, "the values match flowcourse.splines.rq_spline"
            )
        widths, heights, derivatives = params
        twice, _ = rq_spline(x_in, widths.softmax(-1), heights.softmax(-1), derivatives, bound)
        if _close(y, twice, atol):
            return CheckResult(
                "parametrisation",
                False,
                "the values are those of the reference spline given softmax(widths) and "
                "softmax(heights) as raw parameters: the widths and heights were normalised "
                "twice (a softmax of a softmax), which squeezes every bin towards the same size",
            )
        i = int((y - expected).abs().nan_to_num(nan=math.inf).argmax())
        return CheckResult(
            "parametrisation",
            False,
            f"at x = {x_in[i].item():.6g} the spline gives {y[i].item():.6g}, the course's "
            f"parametrisation {expected[i].item():.6g} (softmax widths and heights scaled to "
            f"[-B, B], slopes min_derivative + softplus(raw + c) with boundary slopes 1)",
        )

    def log_dets() -> CheckResult:
        problems = []
        for direction, fn in directions:
            v = x_all if direction == "forward" else spline(x_all, *params_all, bound)[0]
            v = v.detach().clone().requires_grad_(True)
            y, log_det = _spline_run(fn, v, params_all, bound, direction)
            (slope,) = torch.autograd.grad(y.sum(), v)
            if not bool(slope.isfinite().all()):
                i = int((~slope.isfinite()).nonzero()[0])
                problems.append(
                    f"{direction}: autograd's slope is {slope[i].item()} at {v[i].item():.6g}"
                    + (" (a tail input: see the tail gradients)" if v[i].abs() > bound else "")
                )
                continue
            if bool((slope <= 0).any()):
                i = int((slope <= 0).nonzero()[0])
                problems.append(
                    f"{direction}: slope {slope[i].item():.3g} <= 0 at {v[i].item():.6g}: "
                    "not increasing (every knot slope must be positive)"
                )
                continue
            error = (log_det.detach() - slope.log()).abs()
            if not bool((error <= atol).all()):
                i = int(error.nan_to_num(nan=math.inf).argmax())
                problems.append(
                    f"{direction}: log_det {log_det[i].item():.6g} at {v[i].item():.6g}, but "
                    f"log of the slope from autograd is {slope[i].log().item():.6g}"
                )
        if problems:
            return CheckResult("log-det", False, "; ".join(problems))
        return CheckResult("log-det", True, "log_det = log(dy/dx) from autograd at every point")

    def joins() -> CheckResult:
        problems: dict[str, str] = {}  # the first problem of each direction
        for side in (-1.0, 1.0):
            for direction, fn in directions:
                if direction in problems:
                    continue
                edge = torch.full((n,), side * bound, dtype=torch.float64)
                tiny = 1e-10 * bound  # small enough that the slope inside has not moved
                for label, v in (("inside", edge - side * tiny), ("outside", edge + side * tiny)):
                    v = v.clone().requires_grad_(True)
                    y, _ = _spline_run(fn, v, params, bound, direction)
                    (slope,) = torch.autograd.grad(y.sum(), v)
                    jump = (y.detach() - v.detach()).abs().max().item()
                    if jump > 1e-5 * bound:
                        problems[direction] = (
                            f"{direction}: at {side * bound:+g} ({label}) the spline is "
                            f"{jump:.3g} away from the identity: the first and last knots must "
                            "be (-B, -B) and (B, B), or the map jumps where the tails begin"
                        )
                        break
                    worst = (slope - 1).abs().max().item()
                    if worst > 1e-3:
                        i = int((slope - 1).abs().argmax())
                        problems[direction] = (
                            f"{direction}: the slope at {side * bound:+g} is "
                            f"{slope[i].item():.4g} from {label} but must be 1 on both sides: "
                            "fix the boundary derivatives d_0 = d_K = 1 (pad them after the "
                            "positivity transform), so the spline joins the identity tails "
                            "smoothly"
                        )
                        break
        if problems:
            return CheckResult("boundary", False, "; ".join(problems.values()))
        return CheckResult(
            "boundary", True, f"continuous with slope 1 on both sides of -{bound:g} and {bound:g}"
        )

    def tails() -> CheckResult:
        factors = torch.tensor([1.001, 1.5, 3.0, 10.0, 1e3, 1e30, 1e200], dtype=torch.float64)
        far = torch.cat([-factors, factors]) * bound
        m = len(far)
        tail_params = tuple(p[:m].detach().clone().requires_grad_(True) for p in params)
        problems = []
        for direction, fn in directions:
            v = far.clone().requires_grad_(True)
            y, log_det = _spline_run(fn, v, tail_params, bound, direction)
            if not bool((y == far).all()) or not bool((log_det == 0).all()):
                problems.append(
                    f"{direction}: outside [-{bound:g}, {bound:g}] the map must be the identity "
                    "with log_det 0"
                )
                continue
            grads = torch.autograd.grad((y + log_det).sum(), (v, *tail_params))
            bad = ~torch.stack([g.reshape(m, -1).isfinite().all(1) for g in grads]).all(0)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                problems.append(
                    f"{direction}: NaN or infinite gradient at the tail input {far[i].item():g}. "
                    "The spline's formulas were evaluated on it and torch.where passed their "
                    "NaN gradient on (0 * NaN = NaN): clamp (or mask) the inputs into [-B, B] "
                    "before the spline arithmetic"
                )
        if problems:
            return CheckResult("tail gradients", False, "; ".join(problems))
        return CheckResult(
            "tail gradients", True, "finite gradients for inputs outside the interval, up to 1e200"
        )

    def round_trip() -> CheckResult:
        y, log_det = _spline_run(spline, x_all, params_all, bound, "forward")
        back, log_det_back = _spline_run(spline_inverse, y.detach(), params_all, bound, "inverse")
        error = (back - x_all).abs().nan_to_num(nan=math.inf)
        if bool((error <= 1e-8 * bound + atol).all()):
            if _close(log_det_back, -log_det, atol):
                return CheckResult(
                    "round trip", True, "inverse(spline(x)) = x; the inverse's log_det is minus"
                )
            return CheckResult(
                "round trip",
                False,
                "x comes back, but the inverse's log_det is not minus the forward one",
            )
        i = int(error.argmax())
        message = f"inverse(spline(x)) = {back[i].item():.6g} for x = {x_all[i].item():.6g}"
        from flowcourse.splines import rq_spline_inverse

        expected, _ = rq_spline_inverse(y.detach(), *params_all, bound)
        if _close(expected, x_all, 1e-6) and (back[i] - expected[i]).abs() > 1e-6:
            message += (
                ": the inverse solves the right quadratic but returns its other root, outside "
                "the bin. Take xi = 2c / (-b - sqrt(b^2 - 4ac)), the root in [0, 1]"
            )
        return CheckResult("round trip", False, message)

    results.append(_guarded("identity at zero", identity))
    if reference:
        results.append(_guarded("parametrisation", matches_reference))
    results.append(_guarded("log-det", log_dets))
    results.append(_guarded("boundary", joins))
    results.append(_guarded("tail gradients", tails))
    if spline_inverse is not None:
        results.append(_guarded("round trip", round_trip))
    return Report(
        f"check_spline({getattr(spline, '__name__', 'spline')}, K={bins}, B={bound:g})", results
    )


def perturbed(
    layer: nn.Module, std: float = 0.1, generator: torch.Generator | None = None
) -> nn.Module:
    """A copy of ``layer`` with Gaussian noise (``std``) added to every floating parameter.

    Layers that start as the identity (AffineCoupling, Affine) pass most checks whatever their
    formulas; a perturbed copy makes the checks meaningful.
    """
    layer = copy.deepcopy(layer)
    with torch.no_grad():
        for p in layer.parameters():
            if p.is_floating_point():
                noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
                p.add_(std * noise)
    return layer
