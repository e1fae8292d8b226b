"""The part of grading that runs inside a student's kernel: call a function, return plain data.

This module is all the grader sends into a submission's kernel (as source text, run in a
fresh module), and all of the course's grading code that a sandboxed kernel can import. It
imports only ``json``, ``math``, ``traceback`` and ``torch`` (tests/test_grading_kernel.py
checks that), holds no reference solution and computes no verdict. It

- builds a task's arguments from plain data (tensors, and the grader's *instruments*: maps,
  conditioners and densities defined by a few numbers, so the grader can rebuild the very
  same one in float64);
- calls the student's function on them, with the earlier tasks it depends on replaced by
  their reference versions (sent as source by the grader, only after those tasks were
  graded), so one mistake costs its points once;
- returns what came back as JSON-ready data: tensors as shape, dtype and values; a returned
  model (``nn.Module``) as its class, its state and its log-density at the given points.

The verdict is computed from that data in the grader's own process (``core.judge``): patching
anything in the kernel can change what this code returns, never what the grader concludes
from it, and a forged reply would have to hold the right answers to fresh inputs.
"""

from __future__ import annotations

import json
import math
import traceback

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)
MAX_NUMEL = 200_000  # larger tensors are reported by shape only
NOT_IMPLEMENTED = "not implemented yet"  # the phrase of the stubs (flowcourse.release)
PROBE_MIME = "application/vnd.flowcourse.probe+json"


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension: ``(..., D) -> (...)``."""
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def tensor(value, dtype=None) -> torch.Tensor:
    """Plain data (nested lists) as a floating tensor of ``dtype`` (default: torch's)."""
    dtype = dtype or torch.get_default_dtype()
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype)
    return torch.tensor(value, dtype=dtype)


# --- instruments: callables a task receives, defined by plain data --------------------------


class TanhMap:
    """``f(z) = z @ M.T + c * tanh(z @ W.T + d)``, row by row: ``(n, D) -> (n, D)``."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.M, self.W = tensor(spec["M"], dtype), tensor(spec["W"], dtype)
        self.c, self.d = tensor(spec["c"], dtype), tensor(spec["d"], dtype)

    def __call__(self, z):
        return z @ self.M.T + self.c * torch.tanh(z @ self.W.T + self.d)


class Conditioner:
    """``conditioner(x_masked) -> (s, t)``, both ``(n, D)``: ``s = tanh(x W_s^T + b_s)``,
    ``t = x W_t^T + b_t``. Entries of s and t exist for every dimension, kept ones included."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.Ws, self.bs = tensor(spec["Ws"], dtype), tensor(spec["bs"], dtype)
        self.Wt, self.bt = tensor(spec["Wt"], dtype), tensor(spec["bt"], dtype)

    def __call__(self, x):
        return torch.tanh(x @ self.Ws.T + self.bs), x @ self.Wt.T + self.bt


class DiagonalGaussian:
    """``log_prob(y) = sum_i log N(y_i; mean_i, exp(log_std_i)^2)``: ``(n, D) -> (n,)``."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.mean, self.log_std = tensor(spec["mean"], dtype), tensor(spec["log_std"], dtype)

    def __call__(self, y):
        z = (y - self.mean) * (-self.log_std).exp()
        return (-0.5 * z**2 - self.log_std - 0.5 * LOG_2PI).sum(-1)


class GaussianLikelihood:
    """``log p(x_obs | z) = log N(x_obs; tanh(z @ G.T + g), sigma^2 I)``: ``(n, d) -> (n,)``."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.x, self.G, self.g = (tensor(spec[k], dtype) for k in ("x", "G", "g"))
        self.sigma = float(spec["sigma"])

    def __call__(self, z):
        mean = torch.tanh(z @ self.G.T + self.g)
        r = (self.x - mean) / self.sigma
        return (-0.5 * r**2 - math.log(self.sigma) - 0.5 * LOG_2PI).sum(-1)


class Banana:
    """The log-likelihood of a 2-D model whose posterior is banana-shaped, with known evidence.

    With the prior ``p(z) = N(0, I)``, ``log_likelihood(z) + log p(z)`` is the log-density of
    ``z1 ~ N(0, a^2)``, ``z2 - c z1^2 ~ N(0, s^2)`` plus the constant ``log_evidence``. The shear
    ``z2 -> z2 - c z1^2`` keeps volume, so ``log p(x) = log_evidence`` exactly. (The evidence is
    not stored on the object a student receives.)
    """

    def __init__(self, spec: dict, dtype=None) -> None:
        self.a, self.c, self.s = float(spec["a"]), float(spec["c"]), float(spec["s"])
        self._shift = float(spec.get("log_evidence", 0.0))

    def log_joint(self, z):
        z1, z2 = z[..., 0], z[..., 1]
        r1, r2 = z1 / self.a, (z2 - self.c * z1**2) / self.s
        return -0.5 * (r1**2 + r2**2) - math.log(self.a * self.s) - LOG_2PI + self._shift

    def __call__(self, z):
        return self.log_joint(z) - log_standard_normal(z)


def _times(t, x) -> torch.Tensor:
    """A time as a column that broadcasts over x's rows: a number, (), (n,) or (n, 1)."""
    t = torch.as_tensor(t, dtype=x.dtype)
    return t[:, None] if t.ndim == 1 else t


class TanhField:
    """A time-dependent velocity field ``v(x, t) = x (A + t B)^T + c * tanh(x W^T + b + t e)``.

    ``x: (n, D)``; ``t`` a number or one time per row, ``(n,)``. It is smooth, so autograd
    gives its Jacobian, and its divergence is known in closed form to the grader."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.A, self.B, self.W = (tensor(spec[k], dtype) for k in ("A", "B", "W"))
        self.b, self.e, self.c = (tensor(spec[k], dtype) for k in ("b", "e", "c"))

    def __call__(self, x, t):
        t = _times(t, x)
        return (
            x @ self.A.T
            + t * (x @ self.B.T)
            + self.c * torch.tanh(x @ self.W.T + self.b + t * self.e)
        )


class FieldDynamics:
    """``dynamics(x, t) -> (v, div v)`` for a :class:`TanhField`, the divergence in closed form:
    ``tr A + t tr B + sum_i c_i W_ii (1 - tanh^2)``; ``(n, D) -> ((n, D), (n,))``."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.field = TanhField(spec, dtype)

    def __call__(self, x, t):
        f, tt = self.field, _times(t, x)
        slope = 1 - torch.tanh(x @ f.W.T + f.b + tt * f.e) ** 2
        div = torch.trace(f.A) + tt.reshape(-1) * torch.trace(f.B)
        return f(x, t), div + (slope * f.c * torch.diagonal(f.W)).sum(-1)


def _layers(spec, dtype):
    return [tuple(tensor(p, dtype) for p in layer) for layer in spec]


# How a task's plain-data input becomes one argument of the student's function, by kind.
BUILDERS = {
    "tensor": lambda v, dt: tensor(v, dt),
    "long": lambda v, dt: torch.tensor(v, dtype=torch.long),
    "longs": lambda v, dt: [torch.tensor(x, dtype=torch.long) for x in v],
    "number": lambda v, dt: v,
    "tensors": lambda v, dt: [tensor(x, dt) for x in v],
    "layers": _layers,
    "tanh_map": lambda v, dt: TanhMap(v, dt),
    "conditioner": lambda v, dt: Conditioner(v, dt),
    "conditioners": lambda v, dt: [Conditioner(x, dt) for x in v],
    "diagonal_gaussian": lambda v, dt: DiagonalGaussian(v, dt),
    "gaussian_likelihood": lambda v, dt: GaussianLikelihood(v, dt),
    "banana": lambda v, dt: Banana({k: x for k, x in v.items() if k != "log_evidence"}, dt),
    "tanh_field": lambda v, dt: TanhField(v, dt),
    "field_dynamics": lambda v, dt: FieldDynamics(v, dt),
}


def arguments(args: list, case: dict, dtype=None) -> tuple:
    """The arguments of one call: ``args`` is ``[[kind, key], ...]`` over the case's data."""
    return tuple(BUILDERS[kind](case[key], dtype) for kind, key in args)


# --- returned values as plain data ------------------------------------------------------------


def encode(value, depth: int = 0):
    """A returned value as JSON-ready data: tensors become shape + dtype + nested lists."""
    if depth > 6:
        return {"__other__": "a structure nested too deeply"}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        out = {"__tensor__": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        if t.numel() > MAX_NUMEL or t.is_complex():
            out["data"] = None
        elif t.is_floating_point():
            out["data"] = t.double().reshape(-1).tolist()
        else:
            out["data"] = t.long().reshape(-1).tolist()
        return out
    if isinstance(value, bool):
        return {"__other__": "bool", "value": value}
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        kind = "__list__" if isinstance(value, list) else "__tuple__"
        return {kind: [encode(v, depth + 1) for v in value[:256]], "len": len(value)}
    if isinstance(value, dict):
        items = list(value.items())[:64]
        return {"__dict__": {str(k): encode(v, depth + 1) for k, v in items}}
    if value is None:
        return None
    kind = type(value)
    return {"__other__": kind.__name__, "module": str(getattr(kind, "__module__", ""))}


def describe_model(model, case: dict) -> dict:
    """A returned model as data: its class, where it was defined, its state, and (when the
    case gives ``x_test``) what its own ``log_prob`` says on those points."""
    kind = type(model)
    out = {
        "__model__": kind.__qualname__,
        "module": str(getattr(kind, "__module__", "")),
        "is_module": isinstance(model, torch.nn.Module),
    }
    if out["is_module"]:
        state = model.state_dict()
        out["state"] = {str(k): encode(v) for k, v in list(state.items())[:256]}
        out["n_state"] = len(state)
    if "x_test" in case and callable(getattr(model, "log_prob", None)):
        try:
            with torch.no_grad():
                out["log_prob_test"] = encode(model.log_prob(tensor(case["x_test"])))
        except Exception as error:  # the student's code: a finding, not a crash
            out["log_prob_error"] = error_info(error)
    return out


def error_info(error: BaseException) -> dict:
    """What the grader needs to know about an exception raised by the student's code."""
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    for frame in reversed(frames):
        if "ipykernel_" in frame.filename or frame.filename.startswith("<ipython"):
            where = f"line {frame.lineno} of {frame.name}()"
            break
    message = str(error)[:600]
    return {
        "type": type(error).__name__,
        "message": message,
        "where": where,
        "not_implemented": isinstance(error, NotImplementedError) and NOT_IMPLEMENTED in message,
        "reference": type(error).__name__ == "ReferenceUnavailable",
    }


# --- the probe ----------------------------------------------------------------------------


def probe(spec: dict, inputs: dict, namespace: dict, obj=None, references: dict | None = None):
    """Call the student's ``namespace[spec["name"]]`` (or ``obj``) on every case of ``inputs``.

    ``spec``: ``{"name", "args": [[kind, key], ...], "returns": "value" | "model"}``, and
    optionally ``"grads": [key, ...]``: arguments whose gradient of the summed result is
    returned too (``{"value": ..., "grads": {key: ...}}``, to find NaN gradients);
    ``references``: functions put in ``namespace`` under their names while the calls run.
    Returns plain data and never raises: ``{"status": "ok", "cases": [...]}``, each case
    ``{"value": ...}`` or ``{"error": {...}}``; or ``{"status": "missing" | "not_callable"}``.
    """
    name = spec["name"]
    try:
        if obj is None:
            if name not in namespace:
                return {"status": "missing"}
            obj = namespace[name]
        if not callable(obj):
            return {"status": "not_callable", "type": type(obj).__name__}
        references = references or {}
        saved = {k: namespace[k] for k in references if k in namespace}
        namespace.update(references)
        cases = []
        try:
            for case in inputs["cases"]:
                try:
                    if "torch_seed" in case:
                        torch.manual_seed(case["torch_seed"])
                    args, leaves = _track(spec, arguments(spec["args"], case))
                    value = obj(*args)
                    if spec.get("returns") == "model":
                        cases.append({"value": describe_model(value, case)})
                    else:
                        cases.append({"value": encode(value)} | _gradients(value, leaves))
                except Exception as error:  # the student's code: any failure is a finding
                    cases.append({"error": error_info(error)})
        finally:
            for k in references:
                if k in saved:
                    namespace[k] = saved[k]
                else:
                    namespace.pop(k, None)
        return {"status": "ok", "cases": cases}
    except Exception as error:
        return {"status": "probe_error", "error": error_info(error)}


def _track(spec: dict, args: tuple) -> tuple[tuple, dict]:
    """The arguments, those named in ``spec["grads"]`` now copies of leaves that require
    gradients (copies, so that an in-place operation on an argument stays legal), and the
    leaves by key."""
    keys = [key for _, key in spec["args"]]
    args, leaves = list(args), {}
    for key in spec.get("grads") or []:
        i = keys.index(key) if key in keys else None
        if i is not None and isinstance(args[i], torch.Tensor) and args[i].is_floating_point():
            leaves[key] = args[i].detach().requires_grad_(True)
            args[i] = leaves[key].clone()
    return tuple(args), leaves


def _gradients(value, leaves: dict) -> dict:
    """``{"grads": {key: d(sum of every floating tensor returned) / d(argument key)}}``, or
    ``{"grads_error": {...}}`` when they cannot be computed (a detached result, a failing
    backward pass); empty when no gradient is asked for."""
    if not leaves:
        return {}

    def total(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.sum()
        parts = [total(x) for x in v] if isinstance(v, list | tuple) else []
        parts = [p for p in parts if p is not None]
        return sum(parts[1:], parts[0]) if parts else None

    try:
        summed = total(value)
        if summed is None or not summed.requires_grad:
            raise ValueError(
                "the result does not depend on the arguments through autograd (was it computed "
                "with .detach(), .item(), numpy or under torch.no_grad()?)"
            )
        grads = torch.autograd.grad(summed, list(leaves.values()), allow_unused=True)
    except Exception as error:  # the student's code: a finding, not a crash
        return {"grads_error": error_info(error)}
    return {"grads": {key: encode(g) for key, g in zip(leaves, grads, strict=True)}}


def kernel_probe(spec_json: str, inputs_json: str, references_source: str, namespace: dict):
    """Run by the grader inside the kernel: define the references sent, probe, and emit the
    result as one display message of the probe's own MIME type."""
    from IPython.display import display

    references = {}
    if references_source:
        scope = {"torch": torch, "math": math, "F": F, "LOG_2PI": LOG_2PI}
        scope["log_standard_normal"] = log_standard_normal
        scope.update({k: v for k, v in globals().items() if k in INSTRUMENTS})
        exec(compile(references_source, "<flowcourse references>", "exec"), scope)
        references = {k: scope[k] for k in scope.pop("__names__", [])}
    spec = json.loads(spec_json)
    text = json.dumps(probe(spec, json.loads(inputs_json), namespace, references=references))
    display({PROBE_MIME: text}, raw=True)


INSTRUMENTS = (
    "TanhMap",
    "Conditioner",
    "DiagonalGaussian",
    "GaussianLikelihood",
    "Banana",
    "TanhField",
    "FieldDynamics",
)
