"""The course's assignments: their tasks, the check cells of the notebooks, and the probes.

Each assignment notebook (``solutions/NN_name.ipynb``, released to ``exercises/``) asks for a
few functions with fixed names and signatures (the *tasks* below). After each task a check cell
runs ``flowcourse.exercises.check("name", name)``: it calls the function on inputs chosen here,
compares what comes back with a reference implementation, and prints a verdict in the style of
``flowcourse.checks`` (what passed, what failed, for which input, the likely cause).

The grader (``flowcourse.grading``) uses the same pieces, split across two processes:

- *probe* (runs inside the student's kernel): ``probe(task, inputs, namespace)`` calls the
  student's object on grader-chosen inputs and returns plain data (nested lists of floats). This
  part needs only ``json``, ``math`` and ``torch``: the grader sends this file's source to the
  kernel and runs it in a fresh module, so nothing the notebook did to ``flowcourse`` matters.
- *judge* (runs in the grader's own process): ``judge(task, inputs, payload)`` compares that data
  with the reference, computed here in float64, and writes the verdict. A notebook can print what
  it likes or patch any module in its kernel; the verdict is not computed there.

Each task is graded on its own: while a task runs, the earlier tasks it builds on (``depends``)
are replaced by the reference versions, so one mistake costs its points once.

Set the environment variable ``FLOWCOURSE_GRADING=1`` to turn ``check`` and ``report`` into
no-ops (the grader does, so a submission's check cells cost no time).
"""

from __future__ import annotations

import json
import math
import os
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "Task",
    "Assignment",
    "ASSIGNMENTS",
    "TASKS",
    "NOT_IMPLEMENTED",
    "PROBE_MIME",
    "GRADING_ENV",
    "check",
    "report",
    "make_inputs",
    "probe",
    "judge",
]

NOT_IMPLEMENTED = "not implemented yet"  # the phrase of the stubs (flowcourse.release)
PROBE_MIME = "application/vnd.flowcourse.probe+json"
GRADING_ENV = "FLOWCOURSE_GRADING"
LOG_2PI = math.log(2 * math.pi)
MAX_NUMEL = 200_000  # larger tensors are reported by shape only


# =============================================================================================
# Part 1. Reference implementations (any float dtype). The grader computes references with
# them in float64; the probe substitutes them for the earlier tasks a task depends on.
# =============================================================================================


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension."""
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def ref_histogram_density(samples, edges):
    n = samples.shape[0]
    index = torch.searchsorted(edges, samples, right=True) - 1
    bins = edges.shape[0] - 1
    index = torch.where(samples == edges[-1], bins - 1, index)  # the last bin is closed
    inside = (index >= 0) & (index < bins)
    counts = torch.bincount(index[inside], minlength=bins).to(samples.dtype)
    return counts / (n * (edges[1:] - edges[:-1]))


def ref_lognormal_log_prob(x, mu, sigma):
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    z = (torch.log(x) - mu) / sigma
    return -0.5 * z**2 - 0.5 * LOG_2PI - torch.log(sigma) - torch.log(x)


def ref_linear_log_prob(x, A, b):
    z = torch.linalg.solve(A, (x - b).T).T
    return log_standard_normal(z) - torch.linalg.slogdet(A)[1]


def ref_log_det_jacobian(f, z):
    if isinstance(f, TanhMap):  # the grader's map: its Jacobian in closed form
        slope = f.c * (1 - torch.tanh(z @ f.W.T + f.d) ** 2)
        return torch.linalg.slogdet(f.M + slope.unsqueeze(-1) * f.W)[1]
    out = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], row)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def ref_affine_forward(x, log_scale, shift):
    return x * log_scale.exp() + shift, x.new_zeros(x.shape[0]) + log_scale.sum()


def ref_affine_inverse(y, log_scale, shift):
    return (y - shift) * (-log_scale).exp(), y.new_zeros(y.shape[0]) - log_scale.sum()


def ref_compose_forward(x, layers):
    log_det = x.new_zeros(x.shape[0])
    for log_scale, shift in layers:
        x, step = ref_affine_forward(x, log_scale, shift)
        log_det = log_det + step
    return x, log_det


def ref_compose_inverse(y, layers):
    log_det = y.new_zeros(y.shape[0])
    for log_scale, shift in reversed(list(layers)):
        y, step = ref_affine_inverse(y, log_scale, shift)
        log_det = log_det + step
    return y, log_det


def ref_affine_nll(x, layers):
    z, log_det = ref_compose_inverse(x, layers)
    return -(log_standard_normal(z) + log_det).mean()


def ref_planar_u_hat(u, w):
    wu = (w * u).sum(-1, keepdim=True)
    return u + (F.softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True)


def ref_planar_forward(z, u, w, b):
    u_hat = ref_planar_u_hat(u, w)
    h = torch.tanh((z * w).sum(-1) + b)
    y = z + h.unsqueeze(-1) * u_hat
    return y, torch.log((1 + (1 - h**2) * (w * u_hat).sum(-1)).abs())


def ref_planar_flow_sample(z0, params):
    z, log_q = z0, log_standard_normal(z0)
    for u, w, b in params:
        z, log_det = ref_planar_forward(z, u, w, b)
        log_q = log_q - log_det
    return z, log_q


def ref_alternating_masks(dim, n_layers):
    return [
        ((torch.arange(dim) + k) % 2 == 0).to(torch.get_default_dtype()) for k in range(n_layers)
    ]


def _masked_scale_shift(v, mask, conditioner):
    s, t = conditioner(v * mask)
    return s * (1 - mask), t * (1 - mask)


def ref_coupling_forward(x, mask, conditioner):
    s, t = _masked_scale_shift(x, mask, conditioner)
    return x * s.exp() + t, s.sum(-1)


def ref_coupling_inverse(y, mask, conditioner):
    s, t = _masked_scale_shift(y, mask, conditioner)
    return (y - t) * (-s).exp(), -s.sum(-1)


def ref_realnvp_log_prob(x, masks, conditioners):
    z, log_det = x, x.new_zeros(x.shape[0])
    for mask, conditioner in reversed(list(zip(masks, conditioners, strict=True))):
        z, step = ref_coupling_inverse(z, mask, conditioner)
        log_det = log_det + step
    return log_standard_normal(z) + log_det


def ref_dequantize(x_int, u, levels):
    x = (x_int.to(u.dtype) + u) / levels
    return x, u.new_full((x_int.shape[0],), -x_int.shape[1] * math.log(levels))


def ref_logit_forward(x, alpha):
    p = alpha + (1 - 2 * alpha) * x
    log_p, log_1mp = torch.log(p), torch.log1p(-p)
    return log_p - log_1mp, (math.log1p(-2 * alpha) - log_p - log_1mp).sum(-1)


def ref_bits_per_dim(x_int, u, levels, alpha, log_prob_y):
    x, ld_dequantize = ref_dequantize(x_int, u, levels)
    y, ld_logit = ref_logit_forward(x, alpha)
    return -(log_prob_y(y) + ld_logit + ld_dequantize) / (x_int.shape[1] * math.log(2))


def ref_reparameterize(mean, log_var, eps):
    z0 = mean + (0.5 * log_var).exp() * eps
    return z0, -0.5 * (eps**2 + log_var + LOG_2PI).sum(-1)


def ref_flow_elbo(log_likelihood, mean, log_var, eps, flow):
    z, log_q = ref_reparameterize(mean, log_var, eps)
    for u, w, b in flow:
        z, log_det = ref_planar_forward(z, u, w, b)
        log_q = log_q - log_det
    return log_likelihood(z) + log_standard_normal(z) - log_q


REFERENCES: dict[str, Callable] = {
    name[4:]: value for name, value in dict(globals()).items() if name.startswith("ref_")
}


# =============================================================================================
# Part 2. Grader-defined callables: maps, conditioners and densities handed to a student's
# function. Built from plain data, so the grader can rebuild the same one in float64.
# =============================================================================================


def _tensor(value, dtype=None) -> torch.Tensor:
    dtype = dtype or torch.get_default_dtype()
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype)
    return torch.tensor(value, dtype=dtype)


class TanhMap:
    """``f(z) = z @ M.T + c * tanh(z @ W.T + d)``, row by row: ``(n, D) -> (n, D)``."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.M, self.W = _tensor(spec["M"], dtype), _tensor(spec["W"], dtype)
        self.c, self.d = _tensor(spec["c"], dtype), _tensor(spec["d"], dtype)

    def __call__(self, z):
        return z @ self.M.T + self.c * torch.tanh(z @ self.W.T + self.d)


class Conditioner:
    """``conditioner(x_masked) -> (s, t)``, both ``(n, D)``: ``s = tanh(x W_s^T + b_s)``,
    ``t = x W_t^T + b_t``. Entries of s and t exist for every dimension, kept ones included."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.Ws, self.bs = _tensor(spec["Ws"], dtype), _tensor(spec["bs"], dtype)
        self.Wt, self.bt = _tensor(spec["Wt"], dtype), _tensor(spec["bt"], dtype)

    def __call__(self, x):
        return torch.tanh(x @ self.Ws.T + self.bs), x @ self.Wt.T + self.bt


class DiagonalGaussian:
    """``log_prob(y) = sum_i log N(y_i; mean_i, exp(log_std_i)^2)``: ``(n, D) -> (n,)``."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.mean, self.log_std = _tensor(spec["mean"], dtype), _tensor(spec["log_std"], dtype)

    def __call__(self, y):
        z = (y - self.mean) * (-self.log_std).exp()
        return (-0.5 * z**2 - self.log_std - 0.5 * LOG_2PI).sum(-1)


class GaussianLikelihood:
    """``log p(x_obs | z) = log N(x_obs; tanh(z @ G.T + g), sigma^2 I)``: ``(n, d) -> (n,)``."""

    def __init__(self, spec: dict, dtype=None) -> None:
        self.x, self.G, self.g = (_tensor(spec[k], dtype) for k in ("x", "G", "g"))
        self.sigma = float(spec["sigma"])

    def __call__(self, z):
        mean = torch.tanh(z @ self.G.T + self.g)
        r = (self.x - mean) / self.sigma
        return (-0.5 * r**2 - math.log(self.sigma) - 0.5 * LOG_2PI).sum(-1)


class Banana:
    """The log-likelihood of a 2-D model whose posterior is banana-shaped, with known evidence.

    With the prior ``p(z) = N(0, I)``, ``log_likelihood(z) + log p(z)`` is the log-density of
    ``z1 ~ N(0, a^2)``, ``z2 - c z1^2 ~ N(0, s^2)`` plus the constant ``log_evidence``. The shear
    ``z2 -> z2 - c z1^2`` keeps volume, so ``log p(x) = log_evidence`` exactly.
    """

    def __init__(self, spec: dict, dtype=None) -> None:
        self.a, self.c, self.s = float(spec["a"]), float(spec["c"]), float(spec["s"])
        self.log_evidence = float(spec["log_evidence"])

    def log_joint(self, z):
        z1, z2 = z[..., 0], z[..., 1]
        r1, r2 = z1 / self.a, (z2 - self.c * z1**2) / self.s
        normal = -0.5 * (r1**2 + r2**2) - math.log(self.a * self.s) - LOG_2PI
        return normal + self.log_evidence

    def __call__(self, z):
        return self.log_joint(z) - log_standard_normal(z)


# =============================================================================================
# Part 3. Probe side: call a student's object on given inputs; return plain data.
# =============================================================================================


def _layers(spec, dtype):
    return [tuple(_tensor(p, dtype) for p in layer) for layer in spec]


# How each task's inputs (plain data) become the arguments of the student's function.
_ARGS: dict[str, Callable[[dict, Any], tuple]] = {
    "histogram_density": lambda c, dt: (_tensor(c["samples"], dt), _tensor(c["edges"], dt)),
    "lognormal_log_prob": lambda c, dt: (_tensor(c["x"], dt), c["mu"], c["sigma"]),
    "linear_log_prob": lambda c, dt: (
        _tensor(c["x"], dt),
        _tensor(c["A"], dt),
        _tensor(c["b"], dt),
    ),
    "log_det_jacobian": lambda c, dt: (TanhMap(c["f"], dt), _tensor(c["z"], dt)),
    "affine_forward": lambda c, dt: tuple(_tensor(c[k], dt) for k in ("x", "log_scale", "shift")),
    "affine_inverse": lambda c, dt: tuple(_tensor(c[k], dt) for k in ("y", "log_scale", "shift")),
    "compose_forward": lambda c, dt: (_tensor(c["x"], dt), _layers(c["layers"], dt)),
    "compose_inverse": lambda c, dt: (_tensor(c["y"], dt), _layers(c["layers"], dt)),
    "affine_nll": lambda c, dt: (_tensor(c["x"], dt), _layers(c["layers"], dt)),
    "train_affine": lambda c, dt: (_tensor(c["x"], dt),),
    "planar_u_hat": lambda c, dt: (_tensor(c["u"], dt), _tensor(c["w"], dt)),
    "planar_forward": lambda c, dt: tuple(_tensor(c[k], dt) for k in ("z", "u", "w", "b")),
    "planar_flow_sample": lambda c, dt: (_tensor(c["z0"], dt), _layers(c["params"], dt)),
    "alternating_masks": lambda c, dt: (c["dim"], c["n_layers"]),
    "coupling_forward": lambda c, dt: (
        _tensor(c["x"], dt),
        _tensor(c["mask"], dt),
        Conditioner(c["conditioner"], dt),
    ),
    "coupling_inverse": lambda c, dt: (
        _tensor(c["y"], dt),
        _tensor(c["mask"], dt),
        Conditioner(c["conditioner"], dt),
    ),
    "realnvp_log_prob": lambda c, dt: (
        _tensor(c["x"], dt),
        [_tensor(m, dt) for m in c["masks"]],
        [Conditioner(s, dt) for s in c["conditioners"]],
    ),
    "train_realnvp": lambda c, dt: (_tensor(c["x_train"], dt),),
    "dequantize": lambda c, dt: (
        torch.tensor(c["x_int"], dtype=torch.long),
        _tensor(c["u"], dt),
        c["levels"],
    ),
    "logit_forward": lambda c, dt: (_tensor(c["x"], dt), c["alpha"]),
    "bits_per_dim": lambda c, dt: (
        torch.tensor(c["x_int"], dtype=torch.long),
        _tensor(c["u"], dt),
        c["levels"],
        c["alpha"],
        DiagonalGaussian(c["log_prob_y"], dt),
    ),
    "reparameterize": lambda c, dt: tuple(_tensor(c[k], dt) for k in ("mean", "log_var", "eps")),
    "flow_elbo": lambda c, dt: (
        GaussianLikelihood(c["likelihood"], dt),
        _tensor(c["mean"], dt),
        _tensor(c["log_var"], dt),
        _tensor(c["eps"], dt),
        _layers(c["flow"], dt),
    ),
    "fit_flow_posterior": lambda c, dt: (Banana(c["target"], dt),),
}


def _grid(bounds, resolution, dtype=None) -> torch.Tensor:
    (x0, x1), (y0, y1) = bounds
    xs = x0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * (x1 - x0) / resolution
    ys = y0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * (y1 - y0) / resolution
    return torch.cartesian_prod(xs, ys).to(dtype or torch.get_default_dtype())


def _evaluate_density_model(model, case):
    """What the grader needs from a trained 2-D model: log_prob on test points and a grid,
    and samples drawn with the grader's seed."""
    out = {}
    with torch.no_grad():
        x_test = _tensor(case["x_test"])
        out["log_prob_test"] = model.log_prob(x_test)
        grid = _grid(case["grid_bounds"], case["grid_resolution"])
        out["log_prob_grid"] = torch.cat([model.log_prob(part) for part in grid.split(4096)])
        torch.manual_seed(case["sample_seed"])
        out["samples"] = model.sample(case["n_samples"])
    return out


# Tasks whose return value is a model, evaluated further inside the kernel.
_POST: dict[str, Callable[[Any, dict], Any]] = {"train_realnvp": _evaluate_density_model}


def encode(value: Any, depth: int = 0) -> Any:
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
    return {"__other__": type(value).__name__}


def _error_info(error: BaseException) -> dict:
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    for frame in reversed(frames):
        if "ipykernel_" in frame.filename or frame.filename.startswith("<ipython"):
            where = f"line {frame.lineno} of {frame.name}()"
            break
    return {
        "type": type(error).__name__,
        "message": str(error)[:600],
        "where": where,
        "not_implemented": isinstance(error, NotImplementedError) and NOT_IMPLEMENTED in str(error),
    }


def probe(task: str, inputs: dict, namespace: dict, obj: Any = None) -> dict:
    """Call the student's ``namespace[task]`` (or ``obj``) on every case of ``inputs``.

    Returns plain data and never raises: ``{"status": "ok", "cases": [...]}`` where each case is
    ``{"value": ...}`` or ``{"error": {...}}``; or ``{"status": "missing" | "not_callable"}``.
    While it runs, the tasks listed in ``inputs["depends"]`` are the reference versions.
    """
    try:
        if obj is None:
            if task not in namespace:
                return {"status": "missing"}
            obj = namespace[task]
        if not callable(obj):
            return {"status": "not_callable", "type": type(obj).__name__}
        saved = {name: namespace[name] for name in inputs.get("depends", []) if name in namespace}
        for name in inputs.get("depends", []):
            namespace[name] = REFERENCES[name]
        cases = []
        try:
            for case in inputs["cases"]:
                try:
                    if "torch_seed" in case:
                        torch.manual_seed(case["torch_seed"])
                    value = obj(*_ARGS[task](case, torch.get_default_dtype()))
                    if task in _POST:
                        value = _POST[task](value, case)
                    cases.append({"value": encode(value)})
                except Exception as error:  # the student's code: any failure is a finding
                    cases.append({"error": _error_info(error)})
        finally:
            for name in inputs.get("depends", []):
                if name in saved:
                    namespace[name] = saved[name]
                else:
                    namespace.pop(name, None)
        return {"status": "ok", "cases": cases}
    except Exception as error:
        return {"status": "probe_error", "error": _error_info(error)}


def kernel_probe(task: str, inputs_json: str, namespace: dict) -> None:
    """Run inside the student's kernel by the grader: emit the probe's result as display data."""
    from IPython.display import display

    text = json.dumps(probe(task, json.loads(inputs_json), namespace))
    display({PROBE_MIME: text}, raw=True)


# =============================================================================================
# Part 4. Grader side: inputs, decoding and judging.
# =============================================================================================


class Other:
    """A returned value that is not a tensor, number, sequence or dict."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


class Unreadable:
    """A tensor too large to transfer: only its shape is known."""

    def __init__(self, shape, dtype) -> None:
        self.shape, self.dtype = tuple(shape), dtype


def decode(data: Any) -> Any:
    """Inverse of ``encode``: tensors come back as float64 tensors (``.source_dtype`` set)."""
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
        if "__list__" in data:
            return [decode(v) for v in data["__list__"]]
        if "__tuple__" in data:
            return tuple(decode(v) for v in data["__tuple__"])
        if "__dict__" in data:
            return {k: decode(v) for k, v in data["__dict__"].items()}
        if "__other__" in data:
            return Other(str(data["__other__"]))
        return Other("dict")
    if isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if data is None:
        return None
    return Other(type(data).__name__)


class Fail(Exception):
    """A failed case; the message is the learner-facing diagnosis."""


def _kind(value: Any) -> str:
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
    return f"a {value.kind}" if isinstance(value, Other) else type(value).__name__


def _vals(t: torch.Tensor, k: int = 4) -> str:
    flat = t.reshape(-1).tolist()
    text = ", ".join(f"{v:.4g}" for v in flat[:k])
    return f"[{text}{', ...' if len(flat) > k else ''}]" if t.ndim else f"{t.item():.6g}"


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
    raise Fail(f"should return a pair ({names}), got {_kind(value)}")


def expect_tensor(value: Any, shape: tuple, what: str, *, log_det: bool = False) -> torch.Tensor:
    """``value`` must be a tensor of ``shape``; diagnoses the usual shape mistakes."""
    if isinstance(value, Unreadable):
        raise Fail(f"{what} has shape {value.shape}, expected {shape}")
    if isinstance(value, float) and shape == ():
        return torch.tensor(value, dtype=torch.float64)
    if not isinstance(value, torch.Tensor):
        raise Fail(f"{what} should be a tensor of shape {shape}, got {_kind(value)}")
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

    ``bugs``: (what a known mistake would return, message); the first one that matches
    names the mistake.
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
    return_text = (
        f"{what} differs from the reference{_where(index, tuple(got.shape))}: "
        f"expected {expected[index].item():.6g}, got {got[index].item():.6g}"
    )
    raise Fail(return_text)


def _t(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def _ref(task: str, case: dict):
    return REFERENCES[task](*_ARGS[task](case, torch.float64))


def describe(case: dict) -> str:
    """A short description of one input, for messages."""
    parts = []
    for key, value in case.items():
        if key in ("torch_seed", "sample_seed", "grid_bounds", "grid_resolution", "n_samples"):
            continue
        if isinstance(value, list):
            try:
                t = torch.tensor(value) if value and not isinstance(value[0], dict) else None
            except (TypeError, ValueError):
                t = None
            if t is not None and t.numel() <= 6 and t.ndim <= 1:
                parts.append(f"{key}={_vals(t, 6)}")
            elif t is not None:
                parts.append(f"{key} of shape {tuple(t.shape)}")
            else:
                parts.append(f"{key}: {len(value)} items")
        elif isinstance(value, dict):
            parts.append(f"{key}: grader-defined")
        else:
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


# --- input generators (plain data, float32-exact) ---------------------------------------------


def _f32(a) -> list:
    import numpy as np

    return np.asarray(a, dtype=np.float32).tolist()


def _cases_histogram(rng):
    cases = []
    for n, bins, kind in ((400, 6, "normal"), (1000, 12, "lognormal"), (1500, 20, "mixture")):
        if kind == "normal":
            samples = rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), n)
        elif kind == "lognormal":
            samples = rng.lognormal(0.0, rng.uniform(0.4, 0.8), n)
        else:
            samples = rng.normal(0, 1, n) + 3 * (rng.uniform(size=n) < 0.3)
        lo, hi = sorted(rng.choice(samples, 2, replace=False))
        lo, hi = min(lo, float(samples.min()) + 0.3), max(hi, float(samples.max()) - 0.3)
        inner = rng.uniform(lo, hi, bins - 1)
        edges = sorted([lo, *inner.tolist(), hi])
        cases.append({"samples": _f32(samples), "edges": _f32(edges)})
    return cases


def _cases_lognormal(rng):
    cases = []
    for _ in range(4):
        mu, sigma = float(rng.uniform(-1, 1)), float(rng.uniform(0.3, 2.0))
        x = rng.lognormal(mu, sigma, 64)
        cases.append({"x": _f32(x), "mu": float(_f32(mu)), "sigma": float(_f32(sigma))})
    return cases


def _random_matrix(rng, dim, negative_det: bool):
    import numpy as np

    while True:
        A = rng.normal(0, 1, (dim, dim)) + np.eye(dim) * rng.uniform(0.5, 1.5)
        det = np.linalg.det(A)
        if abs(det) > 0.3 and np.linalg.cond(A) < 20:
            break
    if (det < 0) != negative_det:
        A[0] = -A[0]
    return A


def _cases_linear(rng):
    cases = []
    for dim, negative in ((2, True), (3, False), (1, True), (3, True)):
        A = _random_matrix(rng, dim, negative)
        b = rng.normal(0, 1, dim)
        x = rng.normal(0, 1, (64, dim)) @ A.T + b
        cases.append({"x": _f32(x), "A": _f32(A), "b": _f32(b)})
    return cases


def _cases_log_det_jacobian(rng):
    cases = []
    for dim, negative in ((2, True), (3, False), (2, False)):
        spec = {
            "M": _f32(_random_matrix(rng, dim, negative)),
            "W": _f32(rng.normal(0, 0.5, (dim, dim))),
            "c": _f32(rng.uniform(-0.3, 0.3, dim)),
            "d": _f32(rng.normal(0, 0.5, dim)),
        }
        cases.append({"f": spec, "z": _f32(rng.normal(0, 1, (32, dim)))})
    return cases


def _log_scale(rng, dim):
    ls = rng.uniform(-1.5, 1.5, dim)
    ls[rng.integers(dim)] = -rng.uniform(0.2, 1.5)  # at least one scale below 1
    return ls


def _cases_affine(rng, name):
    cases = []
    for dim in (1, 2, 3, 5):
        cases.append(
            {
                name: _f32(rng.normal(0, 1.5, (64, dim))),
                "log_scale": _f32(_log_scale(rng, dim)),
                "shift": _f32(rng.normal(0, 1, dim)),
            }
        )
    return cases


def _random_layers(rng, k, dim):
    return [[_f32(_log_scale(rng, dim)), _f32(rng.normal(0, 1, dim))] for _ in range(k)]


def _cases_compose(rng, name):
    return [
        {name: _f32(rng.normal(0, 1.5, (64, dim))), "layers": _random_layers(rng, k, dim)}
        for k, dim in ((2, 1), (3, 2), (4, 3))
    ]


def _cases_nll(rng):
    cases = []
    for k, dim in ((1, 1), (2, 2), (3, 3)):
        x = rng.normal(rng.normal(0, 2, dim), rng.uniform(0.3, 3, dim), (128, dim))
        cases.append({"x": _f32(x), "layers": _random_layers(rng, k, dim)})
    return cases


def _cases_train_affine(rng):
    mean, std = rng.uniform(-3, 3, 2), rng.uniform(0.4, 2.5, 2)
    x = rng.normal(mean, std, (1000, 2))
    return [
        {
            "x": _f32(x),
            "true_mean": _f32(mean),
            "true_std": _f32(std),
            "torch_seed": int(rng.integers(2**31)),
        }
    ]


def _planar_params(rng, dim, wu_target=None):
    w = rng.normal(0, 1, dim)
    u = rng.normal(0, 1, dim)
    if wu_target is not None:  # set w.u to the target by moving u along w
        u = u + (wu_target - w @ u) * w / (w @ w)
    return u, w


def _cases_u_hat(rng):
    cases = []
    for dim, wu in ((2, -3.0), (3, -1.5), (2, -0.5), (5, 0.7), (3, 2.5), (2, -6.0), (4, None)):
        u, w = _planar_params(rng, dim, wu)
        cases.append({"u": _f32(u), "w": _f32(w)})
    return cases


def _cases_planar_forward(rng):
    cases = []
    for dim, wu in ((2, -2.5), (3, 0.8), (2, None), (5, -1.2)):
        u, w = _planar_params(rng, dim, wu)
        cases.append(
            {
                "z": _f32(rng.normal(0, 1, (64, dim))),
                "u": _f32(u),
                "w": _f32(w),
                "b": float(_f32(rng.normal(0, 0.5))),
            }
        )
    return cases


def _cases_planar_sample(rng):
    cases = []
    for k, dim in ((2, 2), (4, 2), (3, 3)):
        params = []
        for _ in range(k):
            u, w = _planar_params(rng, dim, float(rng.uniform(-3, 2)))
            params.append([_f32(u), _f32(w), float(_f32(rng.normal(0, 0.5)))])
        cases.append({"z0": _f32(rng.normal(0, 1, (64, dim))), "params": params})
    return cases


def _conditioner_spec(rng, dim):
    return {
        "Ws": _f32(rng.normal(0, 0.7, (dim, dim))),
        "bs": _f32(rng.normal(0, 0.5, dim)),
        "Wt": _f32(rng.normal(0, 1.0, (dim, dim))),
        "bt": _f32(rng.normal(0, 0.5, dim)),
    }


def _random_mask(rng, dim):
    while True:
        mask = (rng.uniform(size=dim) < 0.5).astype(float)
        if 0 < mask.sum() < dim:
            return mask.tolist()


def _cases_coupling(rng, name):
    cases = []
    for dim in (2, 3, 4, 5):
        cases.append(
            {
                name: _f32(rng.normal(0, 1.5, (64, dim))),
                "mask": _random_mask(rng, dim),
                "conditioner": _conditioner_spec(rng, dim),
            }
        )
    return cases


def _cases_masks(rng):
    return [{"dim": d, "n_layers": k} for d, k in ((2, 4), (3, 3), (6, 2), (5, 5))]


def _cases_realnvp_log_prob(rng):
    cases = []
    for dim, k in ((2, 2), (2, 4), (3, 3)):
        masks = [[float((i + j) % 2 == 0) for i in range(dim)] for j in range(k)]
        cases.append(
            {
                "x": _f32(rng.normal(0, 1.5, (64, dim))),
                "masks": masks,
                "conditioners": [_conditioner_spec(rng, dim) for _ in range(k)],
            }
        )
    return cases


MOONS_NOISE = 0.1
MOONS_GRID = [[-2.5, 3.5], [-2.0, 2.5]]  # holds all but ~1e-6 of the two-moons mass


def _cases_train_realnvp(rng):
    from flowcourse.data import TwoMoons

    source = TwoMoons(MOONS_NOISE)
    return [
        {
            "x_train": _f32(source.sample(2000, seed=int(rng.integers(2**31))).numpy()),
            "x_test": _f32(source.sample(2000, seed=int(rng.integers(2**31))).numpy()),
            "grid_bounds": MOONS_GRID,
            "grid_resolution": 100,
            "n_samples": 2000,
            "sample_seed": int(rng.integers(2**31)),
            "torch_seed": int(rng.integers(2**31)),
        }
    ]


def _cases_dequantize(rng):
    cases = []
    for levels, dim in ((2, 4), (17, 16), (256, 64), (5, 3)):
        cases.append(
            {
                "x_int": rng.integers(0, levels, (16, dim)).tolist(),
                "u": _f32(rng.uniform(0, 1, (16, dim))),
                "levels": levels,
            }
        )
    return cases


def _cases_logit(rng):
    cases = []
    for alpha, dim in ((0.05, 3), (0.01, 16), (0.1, 64), (0.2, 2)):
        cases.append({"x": _f32(rng.uniform(0, 1, (32, dim))), "alpha": alpha})
    return cases


def _cases_bits(rng):
    cases = []
    for levels, dim, alpha in ((17, 16, 0.05), (256, 64, 0.01), (2, 8, 0.1)):
        cases.append(
            {
                "x_int": rng.integers(0, levels, (16, dim)).tolist(),
                "u": _f32(rng.uniform(0, 1, (16, dim))),
                "levels": levels,
                "alpha": alpha,
                "log_prob_y": {
                    "mean": _f32(rng.normal(0, 1, dim)),
                    "log_std": _f32(rng.uniform(-0.5, 1.0, dim)),
                },
            }
        )
    return cases


def _cases_reparameterize(rng):
    cases = []
    for dim in (1, 2, 4):
        cases.append(
            {
                "mean": _f32(rng.normal(0, 1, (32, dim))),
                "log_var": _f32(rng.uniform(-2, 1, (32, dim))),
                "eps": _f32(rng.normal(0, 1, (32, dim))),
            }
        )
    return cases


def _cases_flow_elbo(rng):
    cases = []
    for k in (0, 2, 4):
        flow = []
        for _ in range(k):
            u, w = _planar_params(rng, 2, float(rng.uniform(-3, 2)))
            flow.append([_f32(u), _f32(w), float(_f32(rng.normal(0, 0.5)))])
        cases.append(
            {
                "likelihood": {
                    "x": _f32(rng.uniform(-0.8, 0.8, 3)),
                    "G": _f32(rng.normal(0, 1, (3, 2))),
                    "g": _f32(rng.normal(0, 0.3, 3)),
                    "sigma": 0.3,
                },
                "mean": _f32(rng.normal(0, 0.5, (64, 2))),
                "log_var": _f32(rng.uniform(-2, 0, (64, 2))),
                "eps": _f32(rng.normal(0, 1, (64, 2))),
                "flow": flow,
            }
        )
    return cases


def _cases_fit_posterior(rng):
    return [
        {
            "target": {
                "a": float(_f32(rng.uniform(0.9, 1.2))),
                "c": float(_f32(rng.uniform(0.7, 1.0))),
                "s": float(_f32(rng.uniform(0.35, 0.5))),
                "log_evidence": float(_f32(rng.uniform(-5, 5))),
            },
            "eval_seed": int(rng.integers(2**31)),
            "torch_seed": int(rng.integers(2**31)),
        }
    ]


# --- judges: one case in, a pass note out (or Fail) -------------------------------------------


def _judge_histogram(case, value):
    samples, edges = _t(case["samples"]), _t(case["edges"])
    expected = _ref("histogram_density", case)
    got = expect_tensor(value, tuple(expected.shape), "the density")
    widths, n = edges[1:] - edges[:-1], samples.shape[0]
    counts = expected * n * widths
    inside = counts.sum()
    bugs = [
        (counts / n, "it is the fraction of samples per bin; divide it by the bin width"),
        (counts / widths, "divide the counts by the total number of samples n as well"),
        (counts, "those are raw counts: divide by n and by each bin's width"),
        (
            counts / (inside * widths),
            f"you divided by the {int(inside)} samples inside the edges; divide by all "
            f"n = {n} samples, so the estimate targets the density itself",
        ),
        (
            counts / (n * widths.mean()),
            "divide each bin by its own width (these bins have different widths)",
        ),
    ]
    return compare(got, expected, "the density", bugs=bugs, atol=1e-5)


def _judge_lognormal(case, value):
    x = _t(case["x"])
    expected = _ref("lognormal_log_prob", case)
    got = expect_tensor(value, tuple(expected.shape), "log p_X(x)")
    log_x, log_sigma = torch.log(x), math.log(case["sigma"])
    bugs = [
        (
            expected + log_x + log_sigma,
            "the Jacobian term is missing: add log|dz/dx| = -log x - log sigma, where "
            "z = (log x - mu) / sigma",
        ),
        (expected + log_x, "the term -log x is missing (the derivative of log x is 1/x)"),
        (expected + log_sigma, "the term -log sigma is missing (dz/dx has a 1/sigma)"),
        (
            expected + 2 * log_x + 2 * log_sigma,
            "the Jacobian term has the wrong sign: it is log|dz/dx| = -log x - log sigma",
        ),
    ]
    return compare(got, expected, "log p_X(x)", bugs=bugs, nan_hint="is x > 0 handled?")


def _judge_linear(case, value):
    x, A, b = _t(case["x"]), _t(case["A"]), _t(case["b"])
    expected = _ref("linear_log_prob", case)
    got = expect_tensor(value, tuple(expected.shape), "log p_X(x)")
    log_det = torch.linalg.slogdet(A)[1]
    bugs = [
        (expected + log_det, "the term -log|det A| is missing"),
        (expected + 2 * log_det, "log|det A| has the wrong sign: it is subtracted"),
        (
            log_standard_normal((x - b) @ A.T) - log_det,
            "z is A^{-1}(x - b): solve with A (torch.linalg.solve), do not multiply by A",
        ),
    ]
    sign = "negative" if torch.linalg.det(A) < 0 else "positive"
    return compare(
        got,
        expected,
        "log p_X(x)",
        bugs=bugs,
        nan_hint=f"det A is {sign} here ({torch.linalg.det(A).item():.4g}): take log|det A| "
        "(torch.linalg.slogdet), not log det A",
    )


def _judge_log_det_jacobian(case, value):
    expected = _ref("log_det_jacobian", case)
    n, d = _t(case["z"]).shape
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (n, d, n, d):
        raise Fail(
            f"returned shape {(n, d, n, d)}: that is the Jacobian of the whole batch; take the "
            "block of each sample, jac[i, :, i, :], or use torch.func.vmap(torch.func.jacrev(f))"
        )
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (n, d, d):
        raise Fail(f"returned shape {(n, d, d)}: those are the Jacobians; return log|det| of each")
    got = expect_tensor(value, (n,), "log|det J|")
    bugs = [
        (expected.exp(), "that is |det J|; return its log"),
        (-expected, "it has the wrong sign"),
    ]
    return compare(
        got,
        expected,
        "log|det J|",
        bugs=bugs,
        nan_hint="det J is negative for this map: take log|det J| (torch.linalg.slogdet)",
    )


def _judge_affine_forward(case, value):
    x, log_scale, shift = (_t(case[k]) for k in ("x", "log_scale", "shift"))
    y_ref, ld_ref = _ref("affine_forward", case)
    y, log_det = expect_pair(value, "y, log_det")
    y = expect_tensor(y, tuple(y_ref.shape), "y")
    compare(
        y,
        y_ref,
        "y",
        bugs=[
            (
                x * log_scale + shift,
                "you used log_scale as the scale itself, an unconstrained scale that can be "
                "negative or zero: the scale is exp(log_scale), positive whatever log_scale is",
            )
        ],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    d = x.shape[1]
    error = compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (-ld_ref, "it has the wrong sign: forward's log-det is +sum(log_scale)"),
            (ld_ref / d, "that is the mean of log_scale; the log-det is the sum"),
            (ld_ref.exp(), "that is the product of the scales; the log-det is its log"),
        ],
        nan_hint="log of a negative number: log_scale is already the log of the scale. Treating "
        "it as the scale itself (an unconstrained scale) breaks as soon as it is negative",
    )
    return error


def _judge_affine_inverse(case, value):
    y_in, log_scale, shift = (_t(case[k]) for k in ("y", "log_scale", "shift"))
    x_ref, ld_ref = _ref("affine_inverse", case)
    x, log_det = expect_pair(value, "x, log_det")
    x = expect_tensor(x, tuple(x_ref.shape), "x")
    compare(
        x,
        x_ref,
        "x",
        bugs=[
            ((y_in - shift) * log_scale.exp(), "divide by the scale: multiply by exp(-log_scale)"),
            (y_in * (-log_scale).exp() - shift, "subtract the shift first, then divide"),
            (y_in * log_scale.exp() + shift, "that is the forward map, not its inverse"),
        ],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[(-ld_ref, "the inverse's log-det is minus the forward one: -sum(log_scale)")],
    )


def _compose_variants(v, layers, forward: bool):
    """What composing in the wrong order, or keeping one layer's log-det, would return."""
    step = ref_affine_forward if forward else ref_affine_inverse
    order = layers if forward else list(reversed(layers))
    wrong_order = list(reversed(order))
    out_wrong = v
    for log_scale, shift in wrong_order:
        out_wrong, _ = step(out_wrong, log_scale, shift)
    lds = [step(v, ls, sh)[1] for ls, sh in order]
    return out_wrong, lds


def _judge_compose(task, case, value):
    forward = task == "compose_forward"
    key = "x" if forward else "y"
    v = _t(case[key])
    layers = _layers(case["layers"], torch.float64)
    out_ref, ld_ref = _ref(task, case)
    out_name = "y" if forward else "x"
    out, log_det = expect_pair(value, f"{out_name}, log_det")
    out = expect_tensor(out, tuple(out_ref.shape), out_name)
    wrong_order, lds = _compose_variants(v, layers, forward)
    order_message = (
        "apply the layers in the order of the list"
        if forward
        else "undo the layers in reverse order: the last layer first"
    )
    compare(out, out_ref, out_name, bugs=[(wrong_order, order_message)])
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (lds[-1], "only the last layer's log-det is there: add up the log-dets of all layers"),
            (lds[0], "only one layer's log-det is there: add up the log-dets of all layers"),
            (-ld_ref, "it has the wrong sign"),
        ],
    )


def _judge_nll(case, value):
    x = _t(case["x"])
    layers = _layers(case["layers"], torch.float64)
    expected = _ref("affine_nll", case)
    got = expect_tensor(value, (), "the NLL")
    z, log_det = ref_compose_inverse(x, layers)
    per_sample = log_standard_normal(z) + log_det
    d = x.shape[1]
    bugs = [
        (-(log_standard_normal(z) - log_det).mean(), "the log-det has the wrong sign"),
        (-per_sample.mean() - 0.5 * d * LOG_2PI, "the constant 0.5 D log(2 pi) is missing"),
        (-per_sample.sum(), "that is the sum over samples; take the mean"),
        (per_sample.mean(), "that is the log-likelihood; the NLL is its negative"),
        (-log_standard_normal(z).mean(), "the log-det term is missing"),
    ]
    return compare(got, expected, "the NLL", bugs=bugs)


def _layers_value(value) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not isinstance(value, list | tuple) or not value:
        raise Fail(
            f"should return a non-empty list of (log_scale, shift) pairs, got {_kind(value)}"
        )
    layers = []
    for k, layer in enumerate(value):
        if not (isinstance(layer, list | tuple) and len(layer) == 2):
            raise Fail(f"layer {k} should be a pair (log_scale, shift), got {_kind(layer)}")
        pair = tuple(
            expect_tensor(p, (2,), f"layer {k}'s {n}")
            for p, n in zip(layer, ("log_scale", "shift"), strict=True)
        )
        layers.append(pair)
    return layers


def _judge_train_affine(case, value):
    layers = _layers_value(value)
    scale, shift = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for log_scale, sh in layers:
        scale, shift = scale * log_scale.exp(), shift * log_scale.exp() + sh
    if not (scale.isfinite().all() and shift.isfinite().all()):
        raise Fail("the trained parameters hold NaN or inf: the training diverged (learning rate?)")
    mean, std = _t(case["true_mean"]), _t(case["true_std"])
    # KL(N(mean, std^2) || N(shift, scale^2)), summed over the two dimensions
    kl = (torch.log(scale / std) + (std**2 + (mean - shift) ** 2) / (2 * scale**2) - 0.5).sum()
    if kl > 0.05:
        raise Fail(
            f"the trained flow is N(mean={_vals(shift)}, std={_vals(scale)}) but the data come "
            f"from N(mean={_vals(mean)}, std={_vals(std)}): KL = {kl.item():.3f} nats > 0.05. "
            "Train longer or with a larger learning rate, and minimise the NLL"
        )
    return f"trained flow within KL {kl.item():.4f} nats of the data's Gaussian"


def _judge_u_hat(case, value):
    u, w = _t(case["u"]), _t(case["w"])
    expected = _ref("planar_u_hat", case)
    got = expect_tensor(value, tuple(expected.shape), "u_hat")
    wu = (w @ u).item()
    w_sq = (w @ w).item()
    bugs = [
        (
            u,
            f"u_hat is u: no correction (here w.u = {wu:.3g}, and the map is invertible only if "
            "w.u_hat >= -1)",
        ),
        (
            u + (F.softplus(torch.tensor(wu)) - wu) * w / w_sq,
            "w.u_hat = softplus(w.u) > 0: the constraint is w.u_hat > -1, so "
            "m(a) = -1 + softplus(a)",
        ),
        (
            u + (F.softplus(torch.tensor(wu)) - 1 - wu) * w,
            "the correction along w must be divided by |w|^2",
        ),
    ]
    try:
        return compare(got, expected, "u_hat", bugs=bugs)
    except Fail as failure:
        w_u_hat = (w @ got).item()
        if w_u_hat <= -1:
            raise Fail(
                f"{failure}; w.u_hat = {w_u_hat:.4g} <= -1, so the map is not invertible"
            ) from None
        raise


def _judge_planar_forward(case, value):
    z, u, w = _t(case["z"]), _t(case["u"]), _t(case["w"])
    b = case["b"]
    y_ref, ld_ref = _ref("planar_forward", case)
    y, log_det = expect_pair(value, "y, log_det")
    y = expect_tensor(y, tuple(y_ref.shape), "y")
    h = torch.tanh(z @ w + b)
    compare(
        y,
        y_ref,
        "y",
        bugs=[(z + h[:, None] * u, "you used u; the map uses u_hat = planar_u_hat(u, w)")],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    u_hat = ref_planar_u_hat(u, w)
    det_u = 1 + (1 - h**2) * (w @ u)
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (det_u.abs().log(), "the log-det must use u_hat too, not u"),
            (torch.log((1 + w @ u_hat).abs()).expand_as(ld_ref), "psi is (1 - tanh^2(w.z + b)) w"),
            (-ld_ref, "it has the wrong sign"),
            ((1 + (1 - h**2) * (w @ u_hat)), "that is det J; return log|det J|"),
        ],
        nan_hint="det J = 1 + u_hat.psi can be negative: take its absolute value before the log",
    )


def _judge_planar_sample(case, value):
    z0 = _t(case["z0"])
    params = _layers(case["params"], torch.float64)
    z_ref, lq_ref = _ref("planar_flow_sample", case)
    z, log_q = expect_pair(value, "zK, log_q")
    z = expect_tensor(z, tuple(z_ref.shape), "zK")
    z_rev = z0
    for u, w, b in reversed(params):
        z_rev, _ = ref_planar_forward(z_rev, u, w, b)
    compare(z, z_ref, "zK", bugs=[(z_rev, "apply the layers in the order of the list")])
    log_q = expect_tensor(log_q, tuple(lq_ref.shape), "log_q", log_det=True)
    total = log_standard_normal(z0) - lq_ref
    return compare(
        log_q,
        lq_ref,
        "log_q",
        bugs=[
            (log_standard_normal(z0) + total, "subtract the log-dets: log q(zK) = log p(z0) - sum"),
            (-total, "the base log-density log p(z0) is missing"),
            (log_standard_normal(z_ref) - total, "the base density is evaluated at z0, not zK"),
        ],
    )


def _judge_masks(case, value):
    expected = REFERENCES["alternating_masks"](case["dim"], case["n_layers"])
    if not isinstance(value, list | tuple) or len(value) != case["n_layers"]:
        raise Fail(f"should return a list of {case['n_layers']} masks, got {_kind(value)}")
    for k, (mask, want) in enumerate(zip(value, expected, strict=True)):
        mask = expect_tensor(mask, (case["dim"],), f"mask {k}")
        if not torch.equal(mask, want.double()):
            raise Fail(
                f"mask {k} is {mask.tolist()}, expected {want.tolist()}: the first mask keeps "
                "entries 0, 2, 4, ... (mask 1) and the masks alternate"
            )
    return 0.0


def _judge_coupling(task, case, value):
    forward = task == "coupling_forward"
    key = "x" if forward else "y"
    v, mask = _t(case[key]), _t(case["mask"])
    conditioner = Conditioner(case["conditioner"], torch.float64)
    out_ref, ld_ref = _ref(task, case)
    out_name = "y" if forward else "x"
    out, log_det = expect_pair(value, f"{out_name}, log_det")
    out = expect_tensor(out, tuple(out_ref.shape), out_name)
    kept = mask.bool()
    if not close(out[:, kept], v[:, kept], 1e-5, 1e-5):
        raise Fail(
            f"{out_name} changes entries where mask is 1 (mask = {mask.int().tolist()}): those "
            "must pass through unchanged; multiply s and t by (1 - mask)"
        )
    s_all, t_all = conditioner(v * mask)
    s_full, t_full = conditioner(v)
    s, t = s_all * (1 - mask), t_all * (1 - mask)
    if forward:
        bugs = [
            (v * s_full.exp() + t_full, "the conditioner must only see x * mask"),
            (
                v * mask + (1 - mask) * (v * s_full.exp() + t_full),
                "the conditioner sees x * mask only",
            ),
        ]
    else:
        bugs = [
            (v * (-s).exp() - t, "subtract t before dividing by exp(s): x = (y - t) * exp(-s)"),
            ((v - t) * s.exp(), "divide by exp(s) (multiply by exp(-s)); do not multiply"),
            (
                v * mask + (1 - mask) * (v - t_full) * (-s_full).exp(),
                "the conditioner sees y * mask only",
            ),
        ]
    compare(out, out_ref, out_name, bugs=bugs)
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    sign = 1 if forward else -1
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (sign * s_all.sum(-1), "it also sums s over the kept entries (mask 1); mask s first"),
            (
                -ld_ref,
                "it has the wrong sign" + (": the inverse's log-det is -sum(s)" * (not forward)),
            ),
            (
                sign * (s_full * (1 - mask)).sum(-1),
                "the conditioner must only see the kept entries",
            ),
        ],
    )


def _judge_realnvp_log_prob(case, value):
    x = _t(case["x"])
    masks = [_t(m) for m in case["masks"]]
    conditioners = [Conditioner(c, torch.float64) for c in case["conditioners"]]
    expected = _ref("realnvp_log_prob", case)
    got = expect_tensor(value, tuple(expected.shape), "log_prob")
    z, lds = x, x.new_zeros(x.shape[0])
    for mask, cond in zip(masks, conditioners, strict=True):  # wrong order: first layer first
        z, step = ref_coupling_inverse(z, mask, cond)
        lds = lds + step
    z_ok, ld_ok = x, x.new_zeros(x.shape[0])
    for mask, cond in reversed(list(zip(masks, conditioners, strict=True))):
        z_ok, step = ref_coupling_inverse(z_ok, mask, cond)
        ld_ok = ld_ok + step
    return compare(
        got,
        expected,
        "log_prob",
        bugs=[
            (log_standard_normal(z) + lds, "undo the layers from the last to the first"),
            (log_standard_normal(z_ok) - ld_ok, "add the inverse log-dets; do not subtract them"),
            (ld_ok, "the base log-density log N(z; 0, I) is missing"),
        ],
    )


def _judge_density_model(case, value):
    from flowcourse.data import TwoMoons

    if not isinstance(value, dict):
        raise Fail(f"the model could not be evaluated, got {_kind(value)}")
    n_test, res = len(case["x_test"]), case["grid_resolution"]
    lp_test = expect_tensor(value.get("log_prob_test"), (n_test,), "model.log_prob(x_test)")
    lp_grid = expect_tensor(value.get("log_prob_grid"), (res * res,), "model.log_prob(grid)")
    samples = expect_tensor(value.get("samples"), (case["n_samples"], 2), "model.sample(n)")
    for what, t in (("log_prob", lp_test), ("log_prob on the grid", lp_grid), ("samples", samples)):
        if t.isnan().any():
            raise Fail(f"the model's {what} holds NaN: the training diverged, or a log of <= 0")
    source = TwoMoons(MOONS_NOISE)
    entropy = source.entropy()
    nll = -lp_test.mean().item()
    (x0, x1), (y0, y1) = case["grid_bounds"]
    cell = (x1 - x0) * (y1 - y0) / res**2
    mass = (torch.logsumexp(lp_grid, 0) + math.log(cell)).exp().item()
    sample_nll = -source.log_prob(samples.clamp(-50, 50)).mean().item()
    facts = f"test NLL {nll:.3f} nats (exact entropy {entropy:.3f}, one Gaussian ~1.91)"
    if abs(mass - 1) > 0.05:
        raise Fail(
            f"{facts}, but exp(log_prob) integrates to {mass:.3f} over the box, not 1: the "
            "log-det has the wrong sign or a term is missing"
        )
    if nll > 1.6:
        raise Fail(f"{facts}: above the pass mark 1.6; train longer or with a larger learning rate")
    if sample_nll > 4.0:
        raise Fail(
            f"{facts}, but the samples miss the moons (mean -log p_data(sample) = "
            f"{sample_nll:.2f} > 4.0): sample() must run the layers forward, first to last"
        )
    return f"{facts}; integral {mass:.3f}; sample NLL under the data density {sample_nll:.3f}"


def _judge_dequantize(case, value):
    x_int, u, levels = _t(case["x_int"]), _t(case["u"]), case["levels"]
    x_ref, ld_ref = _ref("dequantize", case)
    x, log_det = expect_pair(value, "x, log_det")
    x = expect_tensor(x, tuple(x_ref.shape), "x")
    compare(
        x,
        x_ref,
        "x",
        bugs=[
            (x_int / levels + u, "add the noise before dividing: x = (x_int + u) / levels"),
            (x_int + u, "divide by levels, so that x lies in [0, 1)"),
        ],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    d = x_int.shape[1]
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (
                torch.zeros_like(ld_ref),
                f"the constant is missing: dividing by levels shrinks volume by levels^D, "
                f"so log_det = -D log(levels) = {-d * math.log(levels):.4g} here",
            ),
            (-ld_ref, "it has the wrong sign: dividing by levels shrinks volume"),
            (ld_ref / d, "one -log(levels) per dimension: multiply by D"),
        ],
    )


def _judge_logit(case, value):
    x, alpha = _t(case["x"]), case["alpha"]
    y_ref, ld_ref = _ref("logit_forward", case)
    y, log_det = expect_pair(value, "y, log_det")
    y = expect_tensor(y, tuple(y_ref.shape), "y")
    compare(
        y,
        y_ref,
        "y",
        bugs=[(torch.log(x) - torch.log1p(-x), "squeeze first: p = alpha + (1 - 2 alpha) x")],
    )
    log_det = expect_tensor(log_det, tuple(ld_ref.shape), "log_det", log_det=True)
    d = x.shape[1]
    const = d * math.log1p(-2 * alpha)
    return compare(
        log_det,
        ld_ref,
        "log_det",
        bugs=[
            (ld_ref - const, f"the constant D log(1 - 2 alpha) = {const:.4g} is missing"),
            (-ld_ref, "it has the wrong sign"),
        ],
    )


def _judge_bits(case, value):
    x_int, u = _t(case["x_int"]), _t(case["u"])
    levels, alpha = case["levels"], case["alpha"]
    expected = _ref("bits_per_dim", case)
    got = expect_tensor(value, tuple(expected.shape), "bits per dim", log_det=True)
    d = x_int.shape[1]
    ln2 = math.log(2)
    x, _ = ref_dequantize(x_int, u, levels)
    y, ld_logit = ref_logit_forward(x, alpha)
    log_p_y = DiagonalGaussian(case["log_prob_y"], torch.float64)(y)
    nats = expected * d * ln2
    bugs = [
        (
            expected - math.log2(levels),
            f"the dequantization constant -D log(levels) is missing: every value is "
            f"log2({levels}) = {math.log2(levels):.4g} bits/dim too low",
        ),
        (expected * ln2, "those are nats per dimension: divide by ln 2 for bits"),
        (expected * d, "divide by the number of dimensions D"),
        (nats, "those are nats per image: divide by D ln 2"),
        (-expected, "bits/dim is the negative log-likelihood: flip the sign"),
        (
            -(log_p_y - d * math.log(levels)) / (d * ln2),
            "the logit's log-det is missing",
        ),
    ]
    return compare(got, expected, "bits per dim", bugs=bugs)


def _judge_reparameterize(case, value):
    mean, log_var, eps = (_t(case[k]) for k in ("mean", "log_var", "eps"))
    z_ref, lq_ref = _ref("reparameterize", case)
    z0, log_q0 = expect_pair(value, "z0, log_q0")
    z0 = expect_tensor(z0, tuple(z_ref.shape), "z0")
    compare(
        z0,
        z_ref,
        "z0",
        bugs=[
            (mean + log_var.exp() * eps, "the standard deviation is exp(log_var / 2)"),
            (mean + log_var * eps, "log_var is a log-variance: sigma = exp(log_var / 2)"),
        ],
    )
    log_q0 = expect_tensor(log_q0, tuple(lq_ref.shape), "log_q0", log_det=True)
    return compare(
        log_q0,
        lq_ref,
        "log_q0",
        bugs=[
            (lq_ref + 0.5 * log_var.sum(-1), "the term -0.5 sum(log_var) is missing"),
            (lq_ref + 0.5 * LOG_2PI * mean.shape[1], "the constant -0.5 D log(2 pi) is missing"),
            (-lq_ref, "it has the wrong sign"),
        ],
    )


def _judge_flow_elbo(case, value):
    mean, log_var, eps = (_t(case[k]) for k in ("mean", "log_var", "eps"))
    likelihood = GaussianLikelihood(case["likelihood"], torch.float64)
    flow = _layers(case["flow"], torch.float64)
    expected = _ref("flow_elbo", case)
    got = expect_tensor(value, tuple(expected.shape), "the ELBO", log_det=True)
    z0, log_q0 = ref_reparameterize(mean, log_var, eps)
    z, total = z0, torch.zeros_like(log_q0)
    for u, w, b in flow:
        z, log_det = ref_planar_forward(z, u, w, b)
        total = total + log_det
    ll_k, ll_0 = likelihood(z), likelihood(z0)
    prior_k, prior_0 = log_standard_normal(z), log_standard_normal(z0)
    bugs = [
        (
            ll_k + prior_0 - (log_q0 - total),
            "the prior is evaluated at z0; evaluate it at zK, the sample the decoder sees: "
            "log p(zK)",
        ),
        (ll_0 + prior_k - (log_q0 - total), "the likelihood must be evaluated at zK, not z0"),
        (ll_k + prior_k - (log_q0 + total), "log q(zK) = log q0(z0) - sum log|det J|: subtract"),
        (ll_k + prior_k + total, "the term -log q0(z0) is missing"),
        (ll_k + prior_k - log_q0, "the flow's log-dets are missing"),
    ]
    if not flow:
        bugs = bugs[3:4]
    return compare(got, expected, "the ELBO", bugs=bugs)


def _judge_fit_posterior(case, value):
    if not isinstance(value, dict):
        raise Fail(f"should return a dict with 'mean', 'log_var' and 'flow', got {_kind(value)}")
    missing = [k for k in ("mean", "log_var", "flow") if k not in value]
    if missing:
        raise Fail(f"the returned dict has no {', '.join(map(repr, missing))}")
    mean = expect_tensor(value["mean"], (2,), "mean")
    log_var = expect_tensor(value["log_var"], (2,), "log_var")
    flow_value = value["flow"]
    if not isinstance(flow_value, list | tuple):
        raise Fail(f"'flow' should be a list of (u, w, b), got {_kind(flow_value)}")
    flow = []
    for k, layer in enumerate(flow_value):
        if not (isinstance(layer, list | tuple) and len(layer) == 3):
            raise Fail(f"flow layer {k} should be (u, w, b), got {_kind(layer)}")
        u = expect_tensor(layer[0], (2,), f"flow layer {k}'s u")
        w = expect_tensor(layer[1], (2,), f"flow layer {k}'s w")
        b = layer[2]
        b = torch.tensor(b, dtype=torch.float64) if isinstance(b, float) else b
        if not isinstance(b, torch.Tensor) or b.numel() != 1:
            raise Fail(f"flow layer {k}'s b should be a single number, got {_kind(layer[2])}")
        flow.append((u, w, b.reshape(())))
    params = [mean, log_var] + [p for layer in flow for p in layer]
    if not all(p.isfinite().all() for p in params):
        raise Fail("the fitted parameters hold NaN or inf: the optimisation diverged")
    target = Banana(case["target"], torch.float64)
    gen = torch.Generator().manual_seed(case["eval_seed"])
    eps = torch.randn(20000, 2, generator=gen, dtype=torch.float64)
    elbo = ref_flow_elbo(target, mean.expand(20000, 2), log_var.expand(20000, 2), eps, flow)
    if elbo.isnan().any():
        raise Fail("the ELBO of the fitted posterior is NaN")
    gap = target.log_evidence - elbo.mean().item()
    gaussian = _best_gaussian_gap(target, eps)
    facts = (
        f"ELBO {elbo.mean().item():.3f} vs log p(x) = {target.log_evidence:.3f}: gap "
        f"{gap:.3f} nats with {len(flow)} planar layers; the best diagonal Gaussian: "
        f"{gaussian:.3f} nats"
    )
    if not gap <= GAP_RATIO * gaussian:
        raise Fail(
            f"{facts}. A flow posterior must close at least {1 - GAP_RATIO:.0%} of the "
            "Gaussian's gap: train longer or with more layers, and minimise minus the ELBO"
        )
    return facts


GAP_RATIO = 0.8  # a flow posterior must beat the best diagonal Gaussian's gap by 20%


def _best_gaussian_gap(target: Banana, eps: torch.Tensor) -> float:
    """``log p(x) - ELBO`` of the best diagonal Gaussian posterior, by L-BFGS on fixed noise."""
    params = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    fit_eps = eps[:4000]
    optimizer = torch.optim.LBFGS([params], max_iter=100, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        mean, log_var = params[:2], params[2:]
        value = -ref_flow_elbo(target, mean, log_var, fit_eps, []).mean()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        elbo = ref_flow_elbo(target, params[:2], params[2:], eps, [])
    return target.log_evidence - elbo.mean().item()


# --- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One function a student writes. ``depends``: earlier tasks it may call (replaced by the
    reference versions while it is graded). ``timeout``: seconds for the grader's probe."""

    name: str
    points: int
    signature: str
    make_cases: Callable[[Any], list[dict]]
    judge_case: Callable[[dict, Any], Any]
    depends: tuple[str, ...] = ()
    timeout: float = 30.0


@dataclass(frozen=True)
class Assignment:
    key: str
    title: str
    tasks: tuple[Task, ...]

    @property
    def points(self) -> int:
        return sum(task.points for task in self.tasks)


def _task(name, points, signature, cases, judge_case, depends=(), timeout=30.0) -> Task:
    return Task(name, points, signature, cases, judge_case, tuple(depends), timeout)


ASSIGNMENTS: dict[str, Assignment] = {
    a.key: a
    for a in (
        Assignment(
            "01_change_of_variables",
            "Density of a transformed variable",
            (
                _task(
                    "histogram_density",
                    2,
                    "histogram_density(samples, edges) -> density",
                    _cases_histogram,
                    _judge_histogram,
                ),
                _task(
                    "lognormal_log_prob",
                    2,
                    "lognormal_log_prob(x, mu, sigma) -> log_p",
                    _cases_lognormal,
                    _judge_lognormal,
                ),
                _task(
                    "linear_log_prob",
                    3,
                    "linear_log_prob(x, A, b) -> log_p",
                    _cases_linear,
                    _judge_linear,
                ),
                _task(
                    "log_det_jacobian",
                    3,
                    "log_det_jacobian(f, z) -> log_det",
                    _cases_log_det_jacobian,
                    _judge_log_det_jacobian,
                ),
            ),
        ),
        Assignment(
            "02_affine_flow",
            "The corrected affine flow",
            (
                _task(
                    "affine_forward",
                    2,
                    "affine_forward(x, log_scale, shift) -> (y, log_det)",
                    lambda r: _cases_affine(r, "x"),
                    _judge_affine_forward,
                ),
                _task(
                    "affine_inverse",
                    2,
                    "affine_inverse(y, log_scale, shift) -> (x, log_det)",
                    lambda r: _cases_affine(r, "y"),
                    _judge_affine_inverse,
                ),
                _task(
                    "compose_forward",
                    1,
                    "compose_forward(x, layers) -> (y, log_det)",
                    lambda r: _cases_compose(r, "x"),
                    lambda c, v: _judge_compose("compose_forward", c, v),
                    ("affine_forward",),
                ),
                _task(
                    "compose_inverse",
                    2,
                    "compose_inverse(y, layers) -> (x, log_det)",
                    lambda r: _cases_compose(r, "y"),
                    lambda c, v: _judge_compose("compose_inverse", c, v),
                    ("affine_inverse",),
                ),
                _task(
                    "affine_nll",
                    2,
                    "affine_nll(x, layers) -> nll",
                    _cases_nll,
                    _judge_nll,
                    ("affine_inverse", "compose_inverse"),
                ),
                _task(
                    "train_affine",
                    3,
                    "train_affine(x) -> layers",
                    _cases_train_affine,
                    _judge_train_affine,
                    (
                        "affine_forward",
                        "affine_inverse",
                        "compose_forward",
                        "compose_inverse",
                        "affine_nll",
                    ),
                    timeout=60.0,
                ),
            ),
        ),
        Assignment(
            "03_planar_flow",
            "Planar flows",
            (
                _task("planar_u_hat", 3, "planar_u_hat(u, w) -> u_hat", _cases_u_hat, _judge_u_hat),
                _task(
                    "planar_forward",
                    4,
                    "planar_forward(z, u, w, b) -> (y, log_det)",
                    _cases_planar_forward,
                    _judge_planar_forward,
                    ("planar_u_hat",),
                ),
                _task(
                    "planar_flow_sample",
                    3,
                    "planar_flow_sample(z0, params) -> (zK, log_q)",
                    _cases_planar_sample,
                    _judge_planar_sample,
                    ("planar_u_hat", "planar_forward"),
                ),
            ),
        ),
        Assignment(
            "04_coupling_layers",
            "Affine coupling layers and a small RealNVP",
            (
                _task(
                    "alternating_masks",
                    1,
                    "alternating_masks(dim, n_layers) -> masks",
                    _cases_masks,
                    _judge_masks,
                ),
                _task(
                    "coupling_forward",
                    3,
                    "coupling_forward(x, mask, conditioner) -> (y, log_det)",
                    lambda r: _cases_coupling(r, "x"),
                    lambda c, v: _judge_coupling("coupling_forward", c, v),
                ),
                _task(
                    "coupling_inverse",
                    3,
                    "coupling_inverse(y, mask, conditioner) -> (x, log_det)",
                    lambda r: _cases_coupling(r, "y"),
                    lambda c, v: _judge_coupling("coupling_inverse", c, v),
                ),
                _task(
                    "realnvp_log_prob",
                    2,
                    "realnvp_log_prob(x, masks, conditioners) -> log_p",
                    _cases_realnvp_log_prob,
                    _judge_realnvp_log_prob,
                    ("coupling_inverse",),
                ),
                _task(
                    "train_realnvp",
                    3,
                    "train_realnvp(x_train) -> model",
                    _cases_train_realnvp,
                    _judge_density_model,
                    (
                        "alternating_masks",
                        "coupling_forward",
                        "coupling_inverse",
                        "realnvp_log_prob",
                    ),
                    timeout=120.0,
                ),
            ),
        ),
        Assignment(
            "05_dequantization",
            "Dequantization and bits per dimension",
            (
                _task(
                    "dequantize",
                    2,
                    "dequantize(x_int, u, levels) -> (x, log_det)",
                    _cases_dequantize,
                    _judge_dequantize,
                ),
                _task(
                    "logit_forward",
                    3,
                    "logit_forward(x, alpha) -> (y, log_det)",
                    _cases_logit,
                    _judge_logit,
                ),
                _task(
                    "bits_per_dim",
                    3,
                    "bits_per_dim(x_int, u, levels, alpha, log_prob_y) -> bits",
                    _cases_bits,
                    _judge_bits,
                    ("dequantize", "logit_forward"),
                ),
            ),
        ),
        Assignment(
            "06_flow_elbo",
            "The ELBO with a flow posterior",
            (
                _task(
                    "reparameterize",
                    2,
                    "reparameterize(mean, log_var, eps) -> (z0, log_q0)",
                    _cases_reparameterize,
                    _judge_reparameterize,
                ),
                _task(
                    "flow_elbo",
                    4,
                    "flow_elbo(log_likelihood, mean, log_var, eps, flow) -> elbo",
                    _cases_flow_elbo,
                    _judge_flow_elbo,
                    ("reparameterize",),
                ),
                _task(
                    "fit_flow_posterior",
                    4,
                    "fit_flow_posterior(log_joint) -> params",
                    _cases_fit_posterior,
                    _judge_fit_posterior,
                    ("reparameterize", "flow_elbo"),
                    timeout=120.0,
                ),
            ),
        ),
    )
}

TASKS: dict[str, Task] = {t.name: t for a in ASSIGNMENTS.values() for t in a.tasks}
ASSIGNMENT_OF: dict[str, str] = {t.name: a.key for a in ASSIGNMENTS.values() for t in a.tasks}


def make_inputs(task: str, seed: int) -> dict:
    """The plain-data inputs of one probe: ``{"cases": [...], "depends": [...]}``."""
    import numpy as np

    spec = TASKS[task]
    rng = np.random.default_rng(seed)
    return {"cases": spec.make_cases(rng), "depends": list(spec.depends)}


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


def _fail(task: Task, message: str) -> Verdict:
    return Verdict(task.name, 0, task.points, "FAIL", message)


def judge(task_name: str, inputs: dict, payload: dict) -> Verdict:
    """The verdict for one task, from the probe's plain-data ``payload``. Never raises."""
    task = TASKS[task_name]
    try:
        return _judge(task, inputs, payload)
    except Exception as error:  # a malformed payload is the submission's problem
        return _fail(task, f"could not read the result ({type(error).__name__}: {error})")


def _judge(task: Task, inputs: dict, payload: dict) -> Verdict:
    status = payload.get("status") if isinstance(payload, dict) else None
    if status == "missing":
        return _fail(
            task,
            f"function `{task.name}` not found: the notebook does not define it (was its cell "
            f"deleted, or the function renamed?). Expected {task.signature}",
        )
    if status == "not_callable":
        return _fail(task, f"`{task.name}` is a {payload.get('type')}, expected a function")
    if status != "ok":
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        return _fail(
            task, f"the grader's probe failed: {error.get('type')}: {error.get('message')}"
        )
    cases, results = inputs["cases"], payload.get("cases", [])
    if len(results) != len(cases):
        return _fail(
            task,
            "the reply to the grader's probe does not match its request (were json, torch or "
            "IPython.display patched in the notebook?)",
        )
    notes = []
    for k, (case, result) in enumerate(zip(cases, results, strict=True)):
        where = f"input {k + 1} of {len(cases)}" if len(cases) > 1 else "the input"
        if "error" in result:
            error = result["error"]
            if error.get("not_implemented"):
                hint = error.get("message", "").partition("Hint:")[2].strip()
                return _fail(
                    task,
                    f"{NOT_IMPLEMENTED} (its stub still raises NotImplementedError)"
                    + (f". Hint: {hint}" if hint else ""),
                )
            at = f" ({error['where']})" if error.get("where") else ""
            return _fail(
                task,
                f"raised {error.get('type')}{at} on {where} ({describe(case)}): "
                f"{error.get('message')}",
            )
        try:
            notes.append(task.judge_case(case, decode(result["value"])))
        except Fail as failure:
            return _fail(task, f"{failure} (on {where}: {describe(case)})")
    numbers = [n for n in notes if isinstance(n, float)]
    if numbers:
        message = f"matches the reference on {len(cases)} input(s) (max error {max(numbers):.1e})"
    else:
        message = "; ".join(str(n) for n in notes)
    return Verdict(task.name, task.points, task.points, "PASS", message)


# =============================================================================================
# Part 5. Notebook side: the check cells.
# =============================================================================================

_RESULTS: dict[str, Verdict] = {}


def _grading() -> bool:
    return os.environ.get(GRADING_ENV, "") not in ("", "0")


def check(name: str, obj: Any, seed: int = 0, plot: bool = True) -> None:
    """Check the function ``obj`` for the task ``name`` and print a verdict; never raises.

    The inputs are fixed by ``seed`` (the grader draws fresh ones), so the verdict is
    reproducible. Earlier tasks that ``name`` calls are replaced by reference versions while it
    runs, so each task is checked on its own. Some tasks draw a figure when they pass.
    """
    import textwrap

    if _grading():
        print(f"(check of {name} skipped while grading)")
        return
    if name not in TASKS:
        print(f"FAIL {name}: no such task; the tasks are {', '.join(TASKS)}")
        return
    task = TASKS[name]
    inputs = make_inputs(name, zlib.crc32(name.encode()) + seed)
    namespace = getattr(obj, "__globals__", None)
    if not isinstance(namespace, dict):
        namespace = {}
    with torch.random.fork_rng(devices=[]):
        payload = probe(name, inputs, namespace, obj=obj)
    # The verdict is computed from plain data, exactly as the grader does it.
    payload = json.loads(json.dumps(payload))
    verdict = judge(name, inputs, payload)
    _RESULTS[name] = verdict
    lines = [textwrap.fill(str(verdict), 100, subsequent_indent="    ")]
    if verdict.passed and task.depends:
        note = f"(checked with the reference {', '.join(task.depends)}: each task counts once)"
        lines.append(textwrap.fill(note, 100, initial_indent="    ", subsequent_indent="    "))
    print("\n".join(lines), flush=True)
    if plot and verdict.passed and name in _PLOTS:
        import matplotlib.pyplot as plt

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _PLOTS[name](obj, inputs["cases"], [decode(c["value"]) for c in payload["cases"]])
        plt.show()


# --- figures drawn by passing checks: the student's own function at work --------------------


def _plot_histogram(obj, cases, values):
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(0)
    samples = torch.exp(0.5 * torch.randn(5000, generator=gen))
    edges = torch.linspace(0.2, 3.5, 34)
    density = obj(samples, edges).detach()
    x = torch.linspace(0.05, 3.5, 400)
    exact = ref_lognormal_log_prob(x, 0.0, 0.5).exp()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.stairs(density.numpy(), edges.numpy(), fill=True, alpha=0.4, label="your histogram_density")
    ax.plot(x, exact, color="C1", label="exact density of exp(0.5 Z)")
    ax.set(
        title="5000 samples of exp(0.5 Z): histogram estimate vs exact density",
        xlabel="x",
        ylabel="density",
    )
    ax.legend()


def _plot_lognormal(obj, cases, values):
    import matplotlib.pyplot as plt

    mu, sigma = 0.2, 0.6
    gen = torch.Generator().manual_seed(0)
    samples = torch.exp(mu + sigma * torch.randn(20000, generator=gen))
    x = torch.linspace(0.02, 5.0, 400)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(
        samples.numpy(),
        bins=80,
        range=(0, 5),
        density=True,
        alpha=0.4,
        label="histogram of 20000 samples",
    )
    ax.plot(x, obj(x, mu, sigma).detach().exp(), color="C1", label="your lognormal_log_prob, exp'd")
    ax.set(
        title=f"X = exp({mu} + {sigma} Z): formula against samples", xlabel="x", ylabel="density"
    )
    ax.legend()


def _plot_linear(obj, cases, values):
    import matplotlib.pyplot as plt

    A = torch.tensor([[1.0, 0.6], [-0.4, 0.5]])
    b = torch.tensor([0.5, -0.2])
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(1500, 2, generator=gen) @ A.T + b
    xs, ys = torch.linspace(-3, 4, 150), torch.linspace(-2.5, 2, 120)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    density = obj(grid, A, b).detach().exp().reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter(
        samples[:, 0], samples[:, 1], s=2, color="0.5", alpha=0.5, label="samples of A z + b"
    )
    contours = ax.contour(gx, gy, density, levels=6, cmap="viridis")
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    ax.plot([], [], color="C2", label="contours of your linear_log_prob, exp'd")
    ax.set(title="X = A Z + b in 2-D: your density over samples", xlabel="$x_1$", ylabel="$x_2$")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)


def _plot_train_affine(obj, cases, values):
    import matplotlib.pyplot as plt

    case, layers = cases[0], values[0]
    x = torch.tensor(case["x"])
    scale, shift = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for log_scale, sh in layers:
        scale, shift = scale * log_scale.exp(), shift * log_scale.exp() + sh
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for d, ax in enumerate(axes):
        grid = torch.linspace(float(x[:, d].min()) - 1, float(x[:, d].max()) + 1, 300)
        fitted = torch.distributions.Normal(shift[d], scale[d]).log_prob(grid.double()).exp()
        ax.hist(x[:, d].numpy(), bins=40, density=True, alpha=0.4, label="training data")
        ax.plot(grid, fitted, color="C1", label="trained affine flow")
        ax.set(
            title=f"dimension {d + 1}: scale {scale[d].item():.3f}, shift {shift[d].item():.3f}",
            xlabel=f"$x_{d + 1}$",
            ylabel="density",
        )
        ax.legend(fontsize=8)
    fig.suptitle("The trained affine flow is a Gaussian fitted by maximum likelihood")
    fig.tight_layout()


def _plot_planar_sample(obj, cases, values):
    import matplotlib.pyplot as plt

    case, (z, log_q) = cases[1], values[1]
    z0 = torch.tensor(case["z0"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True, sharey=True)
    for ax, points, title in (
        (axes[0], z0, "z0 ~ N(0, I)"),
        (axes[1], z, f"zK after {len(case['params'])} planar layers"),
    ):
        art = ax.scatter(points[:, 0], points[:, 1], c=log_q.numpy(), s=14, cmap="viridis")
        ax.set(title=title, xlabel="$z_1$", ylabel="$z_2$")
        ax.set_aspect("equal")
    fig.colorbar(art, ax=axes, label="log q(zK), your planar_flow_sample")
    fig.suptitle("The same 64 points before and after the flow, coloured by their log-density")


def _plot_train_realnvp(obj, cases, values):
    import matplotlib.pyplot as plt

    case, value = cases[0], values[0]
    res = case["grid_resolution"]
    (x0, x1), (y0, y1) = case["grid_bounds"]
    density = value["log_prob_grid"].exp().reshape(res, res).T  # rows follow x2
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].imshow(density.numpy(), origin="lower", extent=(x0, x1, y0, y1), cmap="viridis")
    axes[0].grid(False)
    axes[0].set(title="density of the trained RealNVP", xlabel="$x_1$", ylabel="$x_2$")
    data, samples = torch.tensor(case["x_train"]), value["samples"][:1000]
    axes[1].scatter(data[:1000, 0], data[:1000, 1], s=3, color="0.6", alpha=0.5, label="data")
    axes[1].scatter(samples[:, 0], samples[:, 1], s=3, color="C0", alpha=0.6, label="model.sample")
    axes[1].set(
        title="1000 samples over 1000 training points",
        xlabel="$x_1$",
        ylabel="$x_2$",
        xlim=(x0, x1),
        ylim=(y0, y1),
    )
    axes[1].set_aspect("equal")
    axes[1].legend(loc="upper right", markerscale=4)
    fig.tight_layout()


def _plot_fit_posterior(obj, cases, values):
    import matplotlib.pyplot as plt

    case, params = cases[0], values[0]
    target = Banana(case["target"], torch.float64)
    flow = [
        (u, w, b if isinstance(b, torch.Tensor) else torch.tensor(b)) for u, w, b in params["flow"]
    ]
    eps = torch.randn(2000, 2, dtype=torch.float64)
    z, _ = ref_reparameterize(params["mean"], params["log_var"], eps)
    for u, w, b in flow:
        z, _ = ref_planar_forward(z, u, w, b.reshape(()))
    xs, ys = torch.linspace(-3.0, 3.0, 240), torch.linspace(-1.5, 5.0, 240)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).double()
    posterior = (target.log_joint(grid) - target.log_evidence).exp().reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.contour(gx, gy, posterior, levels=6, cmap="Greys")
    ax.scatter(z[:, 0], z[:, 1], s=3, alpha=0.4, color="C0", label="samples of the fitted q")
    ax.plot([], [], color="0.3", label="exact posterior (contours)")
    ax.set(
        title="A planar-flow posterior fitted by maximising the ELBO",
        xlabel="$z_1$",
        ylabel="$z_2$",
    )
    ax.legend(loc="upper right", fontsize=8, markerscale=4)


def _plot_bits(obj, cases, values):
    import matplotlib.pyplot as plt

    from flowcourse.data import load_digits

    digits, alpha = load_digits("integer"), 0.05
    levels, dim = digits.levels, digits.train.shape[1]
    gen = torch.Generator().manual_seed(0)
    train_int, test_int = digits.train.long(), digits.test.long()
    u_train = torch.rand(train_int.shape, generator=gen)
    u_test = torch.rand(test_int.shape, generator=gen)
    y_train, _ = ref_logit_forward(ref_dequantize(train_int, u_train, levels)[0], alpha)
    gaussian = DiagonalGaussian({"mean": y_train.mean(0), "log_std": y_train.std(0).log()})
    bits = obj(test_int, u_test, levels, alpha, gaussian).detach().mean().item()
    names = [
        "uniform\n(log2 17)",
        "diagonal Gaussian\nin logit space\n(your bits_per_dim)",
        "factorized\ncategorical\n(108.3 nats)",
        "RealNVP\n(about 101 nats)",
    ]
    values_ = [math.log2(levels), bits, 108.3 / (dim * math.log(2)), 101.0 / (dim * math.log(2))]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bars = ax.bar(names, values_, color=["0.6", "C0", "0.75", "0.75"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set(
        title="8x8 digits, 270 test images: bits per dimension (lower is better)",
        ylabel="bits / dim",
        ylim=(0, 5),
    )
    ax.tick_params(axis="x", labelsize=8)


_PLOTS: dict[str, Callable] = {
    "bits_per_dim": _plot_bits,
    "histogram_density": _plot_histogram,
    "lognormal_log_prob": _plot_lognormal,
    "linear_log_prob": _plot_linear,
    "train_affine": _plot_train_affine,
    "planar_flow_sample": _plot_planar_sample,
    "train_realnvp": _plot_train_realnvp,
    "fit_flow_posterior": _plot_fit_posterior,
}


def report(assignment: str) -> None:
    """Print the verdicts of this session's check cells for ``assignment`` and the total."""
    if _grading():
        return
    spec = ASSIGNMENTS[assignment]
    width = max(len(t.name) for t in spec.tasks)
    total = 0
    print(f"{spec.title}: verdicts of the check cells run in this session")
    for task in spec.tasks:
        verdict = _RESULTS.get(task.name)
        status = verdict.status if verdict else "----"
        points = verdict.points if verdict else 0
        total += points
        note = "" if verdict else "  (its check cell has not run)"
        print(f"  {status}  {task.name:<{width}}  {points}/{task.points}{note}")
    print(f"  total {total}/{spec.points} points. The grader re-checks with fresh inputs.")
