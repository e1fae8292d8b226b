"""Contract tests for every layer in flowcourse.bijections.

The contract: shapes, round trip, log-det equal to log|det J| from autograd (float64), inverse
log-det equal to minus the forward one, and a state_dict round trip, for random dims, batch
sizes, seeds and parameters, including extreme ones.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flowcourse.bijections import (
    ActNorm,
    Affine,
    AffineCoupling,
    Bijection,
    Compose,
    Logit,
    Permutation,
    Planar,
    Radial,
    Reverse,
    dequantize,
    planar,
    planar_inverse,
    planar_u_hat,
    radial,
    radial_inverse,
)
from flowcourse.checks import check_bijection

EXAMPLES = settings(max_examples=25, deadline=None)
dims = st.integers(1, 6)
batches = st.integers(1, 16)
seeds = st.integers(0, 2**31 - 1)


def jacobian_log_det(fn, v: torch.Tensor) -> torch.Tensor:
    """log|det J| of ``fn`` per sample, one sample at a time (independent of flowcourse.checks)."""
    rows = []
    for sample in v:
        jac = torch.autograd.functional.jacobian(lambda s: fn(s[None])[0][0], sample)
        rows.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(rows)


def assert_contract(layer: Bijection, x: torch.Tensor, atol: float = 1e-7) -> None:
    n, d = x.shape
    y, log_det = layer(x)
    assert y.shape == (n, d) and log_det.shape == (n,)
    assert y.dtype == x.dtype and log_det.dtype == x.dtype
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()

    x_back, log_det_back = layer.inverse(y)
    torch.testing.assert_close(x_back, x, atol=atol, rtol=atol)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-9, rtol=1e-9)

    torch.testing.assert_close(log_det, jacobian_log_det(layer, x), atol=1e-8, rtol=1e-8)
    inverse_jac = jacobian_log_det(layer.inverse, y.detach())
    torch.testing.assert_close(log_det_back, inverse_jac, atol=1e-8, rtol=1e-8)


def assert_state_dict_round_trip(layer: Bijection, twin: Bijection, x: torch.Tensor) -> None:
    """``twin``: the same class built anew; after loading it must behave identically."""
    twin.load_state_dict(layer.state_dict())
    for a, b in zip(layer(x), twin(x), strict=True):
        assert torch.equal(a, b)
    y = layer(x)[0]
    for a, b in zip(layer.inverse(y), twin.inverse(y), strict=True):
        assert torch.equal(a, b)


def normal(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def set_params(layer: torch.nn.Module, **values: torch.Tensor) -> None:
    with torch.no_grad():
        for name, value in values.items():
            getattr(layer, name).copy_(value)


def randomize(layer: torch.nn.Module, seed: int, std: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


def random_mask(seed: int, dim: int) -> torch.Tensor:
    mask = torch.randint(0, 2, (dim,), generator=torch.Generator().manual_seed(seed))
    mask[seed % dim] = 1  # at least one kept and one transformed entry
    mask[(seed % dim + 1) % dim] = 0
    return mask


# --- contract tests, one per layer ----------------------------------------------------------


@EXAMPLES
@given(dim=dims, n=batches, seed=seeds, log_scale=st.floats(-8, 8), shift=st.floats(-5, 5))
def test_affine_contract(dim, n, seed, log_scale, shift):
    layer = Affine(dim).double()
    set_params(layer, log_scale=log_scale + normal(seed, dim, scale=0.1), shift=shift)
    x = normal(seed + 1, n, dim)
    assert_contract(layer, x, atol=1e-6)
    assert_state_dict_round_trip(layer, Affine(dim).double(), x)


@EXAMPLES
@given(dim=dims, n=batches, seed=seeds, size=st.floats(0.01, 4), b=st.floats(-3, 3))
def test_planar_contract(dim, n, seed, size, b):
    u, w = normal(seed, dim, scale=size), normal(seed + 1, dim, scale=size)
    # Below w.u = -15 softplus(w.u) nears underflow and the map nears a singular one.
    assume((w * u).sum() > -15)
    torch.manual_seed(seed)
    layer = Planar(dim).double()
    set_params(layer, u=u, w=w, b=b)
    x = normal(seed + 2, n, dim, scale=2.0)
    assert_contract(layer, x, atol=1e-7)
    assert_state_dict_round_trip(layer, Planar(dim).double(), x)


@EXAMPLES
@given(dim=dims, n=batches, seed=seeds, a=st.floats(-5, 5), b=st.floats(-5, 5))
def test_radial_contract(dim, n, seed, a, b):
    torch.manual_seed(seed)
    layer = Radial(dim).double()
    set_params(layer, z0=normal(seed, dim), a=a, b=b)
    x = normal(seed + 1, n, dim, scale=2.0)
    assert_contract(layer, x)
    assert_state_dict_round_trip(layer, Radial(dim).double(), x)


@EXAMPLES
@given(
    dim=st.integers(2, 6),
    n=batches,
    seed=seeds,
    std=st.floats(0.05, 2.0),
    depth=st.integers(0, 2),
    bound=st.floats(0.5, 4.0),
)
def test_affine_coupling_contract(dim, n, seed, std, depth, bound):
    mask = random_mask(seed, dim)
    layer = AffineCoupling(mask, hidden=8, depth=depth, scale_bound=bound).double()
    randomize(layer, seed, std)
    x = normal(seed + 1, n, dim, scale=2.0)
    assert_contract(layer, x)
    twin = AffineCoupling(mask, hidden=8, depth=depth, scale_bound=bound).double()
    assert_state_dict_round_trip(layer, twin, x)

    y, log_det = layer(x)
    kept = mask.bool()
    assert torch.equal(y[:, kept], x[:, kept])  # merged by the mask, bit for bit
    assert (log_det.abs() <= bound * (~kept).sum().item() + 1e-9).all()  # soft clamp holds


@EXAMPLES
@given(dim=dims, n=batches, seed=seeds)
def test_permutation_contract(dim, n, seed):
    layer = Permutation.random(dim, torch.Generator().manual_seed(seed))
    x = normal(seed, n, dim)
    assert_contract(layer, x)
    assert_state_dict_round_trip(layer, Permutation.random(dim), x)
    assert_contract(Reverse(dim), x)
    assert torch.equal(Reverse(dim)(x)[0], x.flip(1))


@EXAMPLES
@given(dim=dims, n=st.integers(2, 16), seed=seeds, log_scale=st.floats(-8, 8))
def test_actnorm_contract(dim, n, seed, log_scale):
    layer = ActNorm(dim).double()
    x = normal(seed, n, dim, scale=3.0) + 1.5
    layer(x)  # data-dependent initialisation
    set_params(layer, log_scale=layer.log_scale + log_scale)
    assert_contract(layer, x, atol=1e-6)
    assert_state_dict_round_trip(layer, ActNorm(dim).double(), x)


@EXAMPLES
@given(dim=dims, n=batches, seed=seeds, alpha=st.floats(0.0, 0.45))
def test_logit_contract(dim, n, seed, alpha):
    x = torch.rand(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert_contract(Logit(alpha), 0.01 + 0.98 * x)


@EXAMPLES
@given(dim=st.integers(2, 5), n=batches, seed=seeds)
def test_compose_contract(dim, n, seed):
    torch.manual_seed(seed)
    parts = [Affine(dim), Planar(dim), Reverse(dim), AffineCoupling(random_mask(seed, dim), 8)]
    parts += [Radial(dim), Permutation.random(dim)]
    layer = Compose(*parts).double()
    randomize(layer, seed, 0.5)
    x = normal(seed, n, dim)
    assert_contract(layer, x)

    # the log-det of a chain is the sum of the steps' log-dets
    total, v = torch.zeros(n, dtype=torch.float64), x
    for part in parts:
        v, step = part(v)
        total = total + step
    torch.testing.assert_close(layer(x)[1], total)


def test_layers_work_in_float32():
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    coupling = AffineCoupling(torch.tensor([1, 0, 1]), hidden=8)
    randomize(coupling, 0, 0.5)
    layers = [Affine(3, scale=2.0, shift=1.0), Planar(3), Radial(3), coupling, Reverse(3)]
    layers += [ActNorm(3), Compose(Affine(3), Planar(3))]
    for layer in layers:
        y, log_det = layer(x)
        assert y.dtype == log_det.dtype == torch.float32
        x_back, log_det_back = layer.inverse(y)
        torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(log_det_back, -log_det, atol=1e-5, rtol=1e-5)


# --- layer-specific properties --------------------------------------------------------------


def test_identity_at_initialisation():
    x = torch.randn(5, 4)
    for layer in [Affine(4), AffineCoupling(torch.tensor([0, 1, 1, 0]))]:
        y, log_det = layer(x)
        assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(5))
    assert torch.equal(Affine(4).log_scale, torch.zeros(4))  # initialised, not torch.Tensor(n)


def test_affine_constructor_arguments():
    layer = Affine(2, scale=torch.tensor([2.0, 0.5]), shift=1.0)
    y, log_det = layer(torch.ones(1, 2))
    torch.testing.assert_close(y, torch.tensor([[3.0, 1.5]]))
    torch.testing.assert_close(log_det, torch.zeros(1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="strictly positive"):
        Affine(2, scale=-1.0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        Affine(2, shift=torch.zeros(3))


@EXAMPLES
@given(seed=seeds, dim=dims, size=st.floats(0.01, 10))
def test_planar_u_hat_keeps_the_map_invertible(seed, dim, size):
    u, w = normal(seed, dim, scale=size), normal(seed + 1, dim, scale=size)
    c = (w * planar_u_hat(u, w)).sum()
    assert c >= -1 - 1e-12  # -1 + softplus(w.u), up to rounding
    torch.testing.assert_close(c, torch.nn.functional.softplus((w * u).sum()) - 1)
    # along w the map is alpha -> alpha + c tanh(alpha + b): increasing, hence invertible
    alphas = torch.linspace(-20, 20, 2001, dtype=torch.float64)
    z = alphas[:, None] * w / (w * w).sum()
    y, _ = planar(z, u, w, torch.tensor(0.3, dtype=torch.float64))
    assert ((y * w).sum(-1).diff() >= 0).all()


@EXAMPLES
@given(seed=seeds, dim=dims, n=batches)
def test_planar_and_radial_accept_per_sample_parameters(seed, dim, n):
    z = normal(seed, n, dim)
    u, w, z0 = normal(seed + 1, n, dim), normal(seed + 2, n, dim), normal(seed + 3, n, dim)
    b, a = normal(seed + 4, n), normal(seed + 5, n)
    for fn, inverse, params in [
        (planar, planar_inverse, (u, w, b)),
        (radial, radial_inverse, (z0, a, b)),
    ]:
        y, log_det = fn(z, *params)
        for i in range(n):  # batched parameters = one layer per sample
            y_i, log_det_i = fn(z[i : i + 1], *(p[i] for p in params))
            torch.testing.assert_close(y[i : i + 1], y_i)
            torch.testing.assert_close(log_det[i : i + 1], log_det_i)
        z_back, log_det_back = inverse(y, *params)
        torch.testing.assert_close(z_back, z, atol=1e-7, rtol=1e-7)
        torch.testing.assert_close(log_det_back, -log_det)
    # a (batch, 1) bias must not broadcast into (batch, batch)
    torch.testing.assert_close(planar(z, u, w, b[:, None])[0], planar(z, u, w, b)[0])


def test_planar_parameters_come_from_the_global_generator():
    torch.manual_seed(3)
    first = Planar(4).state_dict()
    torch.manual_seed(3)
    second = Planar(4).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert 0 < first["w"].abs().max() < 1  # small and random


def test_affine_coupling_masks_and_arguments():
    coupling = AffineCoupling(torch.tensor([True, False, True, False, True]), hidden=4)
    assert coupling.dim == 5 and coupling.mask.dtype == torch.get_default_dtype()
    for bad in ([1, 1], [0, 0], [1, 2, 0], [[1, 0]], [1]):
        with pytest.raises(ValueError, match="mask"):
            AffineCoupling(torch.tensor(bad))
    with pytest.raises(ValueError, match="scale_bound"):
        AffineCoupling(torch.tensor([1, 0]), scale_bound=0.0)
    unbounded = AffineCoupling(torch.tensor([1, 0]), hidden=4, scale_bound=None)
    with torch.no_grad():
        unbounded.conditioner[-1].bias.fill_(10.0)
    # No clamp: s = t = 10 on the transformed entry. The paper's direction, data to base, is
    # the inverse: z = x * exp(s) + t; sampling (forward) undoes it.
    z, log_det = unbounded.inverse(torch.tensor([[0.5, 1.0]]))
    assert torch.allclose(z, torch.tensor([[0.5, 1.0 * math.exp(10.0) + 10.0]]))
    assert torch.allclose(log_det, torch.tensor([10.0]))
    x, log_det = unbounded(torch.tensor([[0.5, 20.0]]))
    assert torch.allclose(x, torch.tensor([[0.5, 10.0 * math.exp(-10.0)]]))
    assert torch.allclose(log_det, torch.tensor([-10.0]))


def test_permutation_validation_and_random():
    with pytest.raises(ValueError, match="exactly once"):
        Permutation(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="integer"):
        Permutation(torch.tensor([0.0, 1.0]))
    first = Permutation.random(6, torch.Generator().manual_seed(1)).perm
    assert torch.equal(first, Permutation.random(6, torch.Generator().manual_seed(1)).perm)
    assert "perm" in Permutation(torch.tensor([1, 0])).state_dict()


def test_actnorm_initialises_once_from_the_first_training_batch():
    x = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + 7.0
    layer = ActNorm(3).double()
    y, _ = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(y.std(0, correction=0), torch.ones(3, dtype=torch.float64))
    assert layer.initialized
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(x * 3)  # no second initialisation
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_actnorm_first_inverse_call_standardises_its_output():
    # In a Flow trained by log_prob the data reach ActNorm through inverse first.
    y = torch.randn(400, 2, dtype=torch.float64) * 4 - 2
    layer = ActNorm(2).double()
    x, _ = layer.inverse(y)
    torch.testing.assert_close(x.mean(0), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(x.std(0, correction=0), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(layer.shift, y.mean(0))


def test_actnorm_does_not_initialise_in_eval_mode_or_after_reload():
    layer = ActNorm(2).eval()
    layer(torch.randn(10, 2) * 5)
    assert not layer.initialized
    trained = ActNorm(2)
    trained(torch.randn(10, 2) * 5 + 3)
    reloaded = ActNorm(2)
    reloaded.load_state_dict(trained.state_dict())
    assert reloaded.initialized
    x = torch.randn(10, 2)
    assert torch.equal(reloaded(x)[0], trained(x)[0])
    assert ActNorm(2).double().initialized.dtype == torch.bool


def test_actnorm_batch_of_one_does_not_explode():
    y, log_det = ActNorm(3)(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.equal(y, torch.zeros(1, 3)) and torch.equal(log_det, torch.zeros(1))


def test_logit_log_det_includes_the_squeeze_constant():
    alpha, x = 0.1, torch.full((1, 4), 0.5, dtype=torch.float64)
    _, log_det = Logit(alpha)(x)
    # at x = 0.5: p = 0.5 and dy/dx = (1 - 2 alpha) / (p (1 - p)) in each of 4 dimensions
    assert math.isclose(log_det.item(), 4 * math.log((1 - 2 * alpha) / 0.25), rel_tol=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Logit()(torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.5)


def test_dequantize():
    gen = torch.Generator().manual_seed(0)
    x_int = torch.randint(0, 17, (100, 6), generator=gen)
    x, log_det = dequantize(x_int, 17, torch.Generator().manual_seed(1))
    assert x.dtype == torch.get_default_dtype() and ((0 <= x) & (x < 1)).all()
    assert torch.equal((x * 17).floor().long(), x_int)
    torch.testing.assert_close(log_det, torch.full((100,), -6 * math.log(17)))
    again, _ = dequantize(x_int, 17, torch.Generator().manual_seed(1))
    assert torch.equal(x, again)
    x64, _ = dequantize(x_int.double(), 17)
    assert x64.dtype == torch.float64
    for bad in (x_int + 1, x_int - 1, x_int.double() + 0.5):
        with pytest.raises(ValueError, match="0..16"):
            dequantize(bad, 17)
    with pytest.raises(ValueError, match="levels"):
        dequantize(x_int, 1)
    with pytest.raises(ValueError, match=r"\(batch, D\)"):
        dequantize(x_int[0], 17)


def test_compose_validation():
    chain = Compose([Affine(2), Reverse(2)])
    assert len(chain) == 2 and isinstance(chain[1], Reverse) and chain.dim == 2
    with pytest.raises(ValueError, match="one dim"):
        Compose(Affine(2), Affine(3))
    with pytest.raises(TypeError, match="Linear at position 1"):
        Compose(Affine(2), torch.nn.Linear(2, 2))
    x, log_det = Compose()(torch.ones(3, 2))
    assert torch.equal(x, torch.ones(3, 2)) and torch.equal(log_det, torch.zeros(3))


def test_compose_names_a_layer_that_returns_a_single_tensor():
    class Doubling(Bijection):
        def forward(self, x):
            return 2 * x

        def inverse(self, y):
            return y / 2

    with pytest.raises(TypeError, match=r"Doubling.forward must return a pair \(y, log_det\)"):
        Compose(Affine(2), Doubling())(torch.ones(1, 2))


# --- bad input ------------------------------------------------------------------------------


def all_layers(dim: int = 2) -> list[Bijection]:
    return [
        Affine(dim),
        ActNorm(dim),
        Planar(dim),
        Radial(dim),
        AffineCoupling(torch.tensor([1, 0]), hidden=4),
        Permutation(torch.tensor([1, 0])),
        Reverse(dim),
        Compose(Affine(dim), Reverse(dim)),
    ]


@pytest.mark.parametrize("layer", all_layers(), ids=lambda layer: type(layer).__name__)
@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_bad_input_gets_a_clear_value_error(layer, method):
    call = getattr(layer, method)
    name = "x" if method == "forward" else "y"
    label = re.escape(layer.label())
    with pytest.raises(
        ValueError, match=rf"{label} expects {name} of shape \(batch, 2\), got \(5, 3\)"
    ):
        call(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(batch, 2\), got \(5,\)"):
        call(torch.zeros(5))
    with pytest.raises(ValueError, match=r"\(batch, 2\), got \(5, 2, 1\)"):
        call(torch.zeros(5, 2, 1))
    with pytest.raises(ValueError, match="floating-point.*torch.int64"):
        call(torch.zeros(5, 2, dtype=torch.long))
    if any(p.is_floating_point() for p in layer.parameters()):
        with pytest.raises(ValueError, match="float32 parameters but .* is torch.float64"):
            call(torch.zeros(5, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="tensor"):
        call([[0.0, 0.0]])


def test_bad_dims_are_rejected():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            Affine(bad)
    with pytest.raises(ValueError, match="Logit expects x of shape \\(batch, dim\\), got \\(4,\\)"):
        Logit()(torch.zeros(4))


def test_dtype_check_follows_own_tensors_then_submodules():
    # Own float tensors (a coupling's mask) answer first; containers and permutations, which
    # hold none, fall back to their submodules.
    coupling = AffineCoupling(torch.tensor([1, 0]), hidden=4).double()
    chain = Compose(AffineCoupling(torch.tensor([1, 0]), hidden=4), Reverse(2)).double()
    x64 = torch.zeros(3, 2, dtype=torch.float64)
    for layer in (coupling, chain):
        assert layer(x64)[0].dtype == torch.float64
        with pytest.raises(ValueError, match="float64 parameters but x is torch.float32"):
            layer(torch.zeros(3, 2))
    assert Reverse(2)(torch.zeros(3, 2, dtype=torch.float64))[0].dtype == torch.float64


def test_affine_coupling_takes_an_optional_context():
    torch.manual_seed(0)
    plain = AffineCoupling(torch.tensor([1, 0, 1]), hidden=8)
    conditional = AffineCoupling(torch.tensor([1, 0, 1]), hidden=8, context_dim=2)
    assert conditional.conditioner[0].in_features == 5 and conditional.context_dim == 2
    randomize(conditional, 1, 0.5)
    x, c = torch.randn(16, 3), torch.randn(16, 2)
    report = check_bijection(conditional, x, context=c)
    assert report.passed, str(report)
    y, _ = conditional(x, context=c)
    assert not torch.allclose(y, conditional(x, context=c + 1)[0])  # the context matters
    with pytest.raises(ValueError, match="needs a context of shape"):
        conditional(x)
    with pytest.raises(ValueError, match="takes no context"):
        plain(x, context=c)
    with pytest.raises(ValueError, match="context_dim"):
        AffineCoupling(torch.tensor([1, 0]), context_dim=-1)
