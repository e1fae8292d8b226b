"""flowcourse.checks: correct layers pass, planted bugs fail with the right diagnosis."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from flowcourse.bijections import (
    ActNorm,
    Affine,
    AffineCoupling,
    Compose,
    Logit,
    Permutation,
    Planar,
    Radial,
    Reverse,
)
from flowcourse.checks import (
    CheckFailed,
    CheckResult,
    Report,
    check_bijection,
    check_inverse_log_det,
    check_log_det,
    check_normalised,
    check_round_trip,
    check_shapes,
    check_state_dict,
    perturbed,
)
from flowcourse.flows import standard_normal

try:  # tests/planted.py: the deliberately broken layers
    import planted
except ImportError:  # tests/ is a package
    from tests import planted

CHECKS = [check_shapes, check_round_trip, check_log_det, check_inverse_log_det, check_state_dict]


def inputs(n: int = 12, dim: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def good_layers() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    mask = torch.tensor([1, 0, 1, 0])
    return [
        Affine(4, scale=torch.tensor([0.5, 1.0, 2.0, 3.0]), shift=1.0),
        perturbed(Planar(4), 1.0),
        perturbed(Radial(4), 1.0),
        perturbed(AffineCoupling(mask, hidden=8), 0.5),
        Permutation.random(4),
        Reverse(4),
        ActNorm(4),
        perturbed(Compose(AffineCoupling(mask, hidden=8), ActNorm(4), Planar(4)), 0.3),
    ]


@pytest.mark.parametrize("layer", good_layers(), ids=lambda layer: type(layer).__name__)
def test_correct_layers_pass_every_check(layer):
    report = check_bijection(layer, inputs())
    assert report.passed, str(report)
    assert len(report.results) == 6 and not any(r.skipped for r in report.results)


def test_logit_passes_on_pixels():
    x = torch.rand(10, 5, generator=torch.Generator().manual_seed(0))
    report = check_bijection(Logit(0.05), x)
    assert report.passed, str(report)


def test_checks_do_not_modify_the_layer():
    layer = ActNorm(4)
    check_bijection(layer, inputs() * 3 + 2)
    assert not layer.initialized and torch.equal(layer.log_scale, torch.zeros(4))


# --- regression tests: planted bugs ---------------------------------------------------------


def test_block_merge_coupling_fails_the_round_trip_beyond_2d():
    torch.manual_seed(0)
    layer = perturbed(planted.BlockMergeCoupling(torch.tensor([1, 0, 1, 0])), 0.3)
    result = check_round_trip(layer, inputs())
    assert not result
    assert "inverse(forward(x)) is not x" in result.message and "at sample" in result.message
    assert "expected [" in result.message and "got [" in result.message
    # the log-det is right (a coupling followed by a permutation): only the round trip sees it
    assert check_log_det(layer, inputs())
    # in 2-D with mask [1, 0] the block order happens to be the mask order: the bug hides
    hidden_bug = perturbed(planted.BlockMergeCoupling(torch.tensor([1, 0])), 0.3)
    assert check_round_trip(hidden_bug, inputs(dim=2))
    # our AffineCoupling merges by the mask: fine for the interleaved mask
    assert check_round_trip(perturbed(AffineCoupling(torch.tensor([1, 0, 1, 0]), 8), 0.3), inputs())


def test_planar_without_u_hat_is_caught():
    u, w = torch.tensor([-3.0, 0.0]), torch.tensor([1.0, 0.0])  # w.u = -3 < -1
    broken = planted.UnconstrainedPlanar(u, w)
    # It folds space: two different inputs share one output, so no inverse can exist.
    a_star = 2.9857
    z = torch.tensor([[0.0, 0.5], [a_star, 0.5]])
    y, _ = broken(z)
    torch.testing.assert_close(y[0], y[1], atol=1e-3, rtol=0)
    x = torch.linspace(-4, 4, 9)[:, None] * torch.tensor([[1.0, 0.3]])
    result = check_log_det(broken, x)
    assert not result and "changes sign" in result.message and "not invertible" in result.message
    report = check_bijection(broken, x)  # no inverse: round trip skipped, log-det still fails
    assert not report.passed and report.results[1].skipped
    # the same raw parameters through the u_hat correction give an invertible layer
    fixed = Planar(2)
    with torch.no_grad():
        fixed.u.copy_(u), fixed.w.copy_(w), fixed.b.zero_()
    assert check_bijection(fixed, x).passed


def test_wrong_sign_inverse_log_det():
    layer = planted.WrongSignInverse(4, torch.tensor([0.5, -1.0, 2.0, 0.1]))
    assert check_log_det(layer, inputs())  # forward is fine
    result = check_inverse_log_det(layer, inputs())
    assert not result and "opposite sign" in result.message
    result = check_log_det(layer, inputs(), direction="inverse")
    assert not result and "opposite sign" in result.message


def test_wrong_sign_forward_log_det():
    layer = planted.WrongSignForward(4, torch.tensor([0.5, -1.0, 2.0, 0.1]))
    result = check_log_det(layer, inputs())
    assert not result and "opposite sign" in result.message


def test_log_det_not_summed_over_dimensions():
    layer = planted.UnsummedLogDet(4, torch.tensor([0.5, -1.0, 2.0, 0.1]))
    for check in (check_shapes, check_log_det):
        result = check(layer, inputs())
        assert not result and "did not sum over dimensions" in result.message
    assert "(12, 4)" in check_shapes(layer, inputs()).message


def test_log_det_averaged_instead_of_summed():
    layer = planted.MeanLogDet(4, torch.tensor([0.5, -1.0, 2.0, 0.1]))
    result = check_log_det(layer, inputs())
    assert not result and "mean over dimensions" in result.message


def test_forgetful_actnorm_fails_the_state_dict_check():
    x = inputs() * 2 + 1
    result = check_state_dict(planted.ForgetfulActNorm(4), x)
    assert not result
    assert "initialized (bool)" in result.message and "register_buffer" in result.message
    assert check_state_dict(ActNorm(4), x)  # the flag is a buffer here


def test_plain_tensor_permutation_fails_the_state_dict_check():
    result = check_state_dict(planted.PlainPermutation(4), inputs())
    assert not result and "perm (tensor)" in result.message
    assert check_state_dict(Permutation.random(4), inputs())


def test_raw_scale_going_negative():
    layer = planted.RawScaleAffine(torch.tensor([1.5, -0.5, 2.0, 1.0]))
    result = check_log_det(layer, inputs())
    assert not result and "exp(log_scale)" in result.message and "nan" in result.message
    assert not check_shapes(layer, inputs())  # NaN log_det
    singular = check_log_det(planted.RawScaleAffine(torch.tensor([1.0, 0.0, 2.0, 1.0])), inputs())
    assert not singular and "singular" in singular.message and "exp(log_scale)" in singular.message


def test_logit_missing_constant():
    x = torch.rand(10, 3, generator=torch.Generator().manual_seed(0))
    result = check_log_det(planted.LogitWithoutConstant(0.05), x)
    assert not result and "same constant" in result.message and "log(1 - 2 alpha)" in result.message


def test_samples_that_depend_on_each_other():
    result = check_log_det(planted.BatchCentering(4), inputs())
    assert not result and "depends on other samples" in result.message


# --- never crash ----------------------------------------------------------------------------


def test_a_crashing_layer_fails_every_check_without_crashing():
    report = check_bijection(planted.Crashing(4), inputs())
    assert not report.passed and len(report.failures) == 6
    assert all("RuntimeError: boom" in r.message for r in report.results)


def test_a_layer_returning_one_tensor():
    report = check_bijection(planted.ReturnsTensor(4), inputs())
    assert not report.passed
    assert all("must return a pair" in r.message for r in report.failures)


def test_wrong_input_is_reported_not_raised():
    for check in CHECKS:
        result = check(Affine(4), inputs(dim=3))
        assert not result and "expects x of shape (batch, 4), got (12, 3)" in result.message
    assert not check_round_trip(Affine(4), "not a tensor")
    assert not check_state_dict("not a layer", inputs())


def test_forward_only_layers_skip_inverse_checks():
    report = check_bijection(planted.ForwardOnly(4), inputs())
    assert report.passed, str(report)
    skipped = [r.name for r in report.results if r.skipped]
    assert skipped == ["round trip", "log-det (inverse)", "inverse log-det"]
    assert "SKIP  round trip" in str(report) and "inverse is not implemented" in str(report)
    assert "only forward checked" in check_shapes(planted.ForwardOnly(4), inputs()).message


# --- results and reports --------------------------------------------------------------------


def test_check_result_and_report_interfaces():
    good = CheckResult("round trip", True, "fine")
    bad = CheckResult("log-det", False, "your log-det has the opposite sign")
    assert good and not bad
    assert str(good) == "PASS round trip: fine"
    assert str(bad) == "FAIL log-det: your log-det has the opposite sign"
    assert good.raise_if_failed() is good
    with pytest.raises(CheckFailed, match="opposite sign"):
        bad.raise_if_failed()
    assert issubclass(CheckFailed, AssertionError)

    report = Report("demo", [good, bad])
    assert not report and report.failures == [bad]
    text = str(report)
    assert text.splitlines()[0] == "FAIL demo: 1 passed, 1 failed, 0 skipped"
    assert "  PASS  round trip  fine" in text and "  FAIL  log-det" in text
    with pytest.raises(CheckFailed, match="FAIL demo"):
        report.raise_if_failed()

    class Printer:
        def text(self, value):
            self.value = value

    printer = Printer()
    report._repr_pretty_(printer, False)
    assert printer.value == text


# --- check_normalised -----------------------------------------------------------------------


def test_check_normalised_on_known_densities():
    assert check_normalised(standard_normal(2))
    narrow = MultivariateNormal(torch.zeros(2), torch.tensor([[0.3, 0.1], [0.1, 0.2]]))
    assert check_normalised(narrow.log_prob, resolution=300)
    shifted = check_normalised(lambda x: standard_normal(2).log_prob(x) - 0.5)
    assert not shifted and "= 0.6065" in shifted.message and "too little mass" in shifted.message
    cut = check_normalised(standard_normal(2), bounds=((-1, 1), (-1, 1)))
    assert not cut and "outside the box" in cut.message


def test_check_normalised_never_crashes():
    assert not check_normalised(lambda x: x.sum(), resolution=20)  # one number, not one per point
    assert "2-D only" in check_normalised(standard_normal(3), bounds=((-4, 4),) * 3).message
    crashing = check_normalised(standard_normal(3), resolution=20)
    assert not crashing and "log_prob raised" in crashing.message
    nan = check_normalised(lambda x: torch.full((len(x),), float("nan")), resolution=20)
    assert not nan and "NaN" in nan.message


# --- claim: the one-line result a notebook states and checks -------------------------------


def test_claim_prints_the_result_and_its_bound(capsys):
    from flowcourse.checks import claim

    claim("gap", 0.0351, below=0.05, unit="nats")
    claim("round-trip error", 3.1e-16, below=1e-12)
    claim("grid mass", 1.0004, near=1, tol=0.01)
    claim("density time", torch.tensor(12.5), above=10, at_most=200, unit="x", fmt=".1f")
    claim("the Jacobian is lower triangular", True)
    assert capsys.readouterr().out.splitlines() == [
        "gap 0.035 nats < 0.05 ✓",
        "round-trip error 3.1e-16 < 1e-12 ✓",
        "grid mass 1.000 = 1 ± 0.01 ✓",
        "density time 12.5 x > 10 and ≤ 200 ✓",
        "the Jacobian is lower triangular ✓",
    ]


@pytest.mark.parametrize(
    "args, kwargs, fragment",
    [
        (("gap", 0.072), {"at_most": 0.05, "unit": "nats"}, "gap is 0.072 nats, expected ≤ 0.05"),
        (("mass", 1.2), {"near": 1, "tol": 0.01}, "mass is 1.200, expected = 1 ± 0.01"),
        (("nll", float("nan")), {"below": 1.0}, "nll is nan"),
        (("speed-up", 3.0), {"above": 10}, "expected > 10"),
        (("the map is monotone", False), {}, "the map is monotone does not hold"),
    ],
)
def test_claim_raises_with_what_was_expected(args, kwargs, fragment, capsys):
    from flowcourse.checks import ClaimFailed, claim

    with pytest.raises(ClaimFailed, match="claim failed") as info:
        claim(*args, **kwargs)
    assert fragment in str(info.value)
    assert capsys.readouterr().out == ""  # nothing reads as a result when it failed


def test_claim_refuses_misuse():
    from flowcourse.checks import claim

    with pytest.raises(TypeError, match="needs a bound"):
        claim("gap", 0.1)
    with pytest.raises(TypeError, match="shape \\(3,\\)"):
        claim("gap", torch.zeros(3), below=1)
    with pytest.raises(TypeError, match="near= and tol= together"):
        claim("gap", 0.1, near=0.1)
    with pytest.raises(TypeError, match="takes no bounds"):
        claim("ok", True, below=1)
    with pytest.raises(TypeError, match="got str"):
        claim("gap", "0.1", below=1)


def test_raises_shows_the_expected_error_in_one_line(capsys):
    from flowcourse.checks import ClaimFailed, raises

    with raises(TypeError):
        torch.nn.Sequential(torch.nn.Linear(2, 2))("not a tensor")
    with raises(ValueError, match="negative"):
        try:
            math.log(-1.0)
        except ValueError as cause:
            raise ValueError("log of a negative scale\nsecond line") from cause
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("TypeError: ") and out[0].endswith("✓ (the error we expected)")
    assert out[1:] == [
        "ValueError: log of a negative scale ... ✓ (the error we expected)",
        "  caused by ValueError: math domain error",
    ]
    with pytest.raises(ClaimFailed, match="ran without error"):
        with raises(TypeError):
            pass
    with pytest.raises(ClaimFailed, match="mentioning 'shape'"):
        with raises(ValueError, match="shape"):
            raise ValueError("something else")
    with pytest.raises(KeyError):  # another kind of error is not swallowed
        with raises(TypeError):
            raise KeyError("k")
