"""Tests for flowcourse.train.fit, on small models of our own (no flows needed)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowcourse.train import History, NonFiniteError, evaluate, fit, nll_loss


class DiagGaussian(nn.Module):
    """A learnable N(mean, diag(exp(log_std))^2): the smallest model with a log_prob."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim))
        self.log_std = nn.Parameter(torch.zeros(dim))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(dim=1)


class Layered(nn.Module):
    """A Gaussian whose mean comes from nested layers, so parameters have dotted names."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        self.calls = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        mean = self.layers(torch.ones(1, 2))
        return (-0.5 * (x - mean) ** 2).sum(dim=1)


def gaussian_data(n: int, mean: float = 2.0, std: float = 0.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, 2, generator=g)


def test_loss_decreases_towards_the_entropy():
    torch.manual_seed(0)
    model, x = DiagGaussian(), gaussian_data(2000)
    h = fit(
        model, x, steps=300, lr=0.05, progress=False, generator=torch.Generator().manual_seed(0)
    )
    entropy = 2 * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.5))
    assert h.steps == 300 and len(h.train_loss) == 300 and len(h.lr) == 300
    assert h.train_loss[0] > h.final_train + 1
    assert abs(h.final_train - entropy) < 0.1
    assert h.val_loss == [] and h.best_step is None and not h.stopped_early
    assert h.seconds > 0 and "steps=300" in repr(h)


def test_validation_schedule_and_default_val_loss():
    torch.manual_seed(0)
    model, x, v = DiagGaussian(), gaussian_data(500), gaussian_data(300, seed=1)
    h = fit(model, x, steps=100, eval_every=30, val_data=v, lr=0.05, progress=False)
    assert h.val_steps == [30, 60, 90, 100]
    assert h.final_val == pytest.approx(evaluate(model, v), abs=1e-6)
    assert h.best_val == min(h.val_loss)
    assert model.training  # validation switches eval mode off again


def test_early_stopping_restores_best_weights():
    # The model starts at the validation optimum and training drags it away, so the
    # validation loss only gets worse: best at the first evaluation.
    torch.manual_seed(0)
    model = DiagGaussian()
    train, val = gaussian_data(1000, mean=3.0, std=1.0), gaussian_data(1000, mean=0.0, std=1.0)
    snapshots = {}

    def spy(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        snapshots[len(snapshots)] = {k: t.clone() for k, t in m.state_dict().items()}
        return nll_loss(m, batch)

    h = fit(
        model,
        train,
        steps=500,
        lr=0.05,
        val_data=val,
        val_loss=spy,
        eval_every=10,
        patience=2,
        progress=False,
    )
    assert h.stopped_early and h.steps == 30
    assert h.val_steps == [10, 20, 30] and h.best_step == 10
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[0][name], rtol=0, atol=0)
    assert evaluate(model, val) == pytest.approx(h.best_val, abs=1e-6)


def test_patience_without_stopping_still_ends_on_best():
    torch.manual_seed(0)
    model, x = DiagGaussian(), gaussian_data(500)
    h = fit(model, x, steps=60, lr=0.05, val_data=x, eval_every=20, patience=5, progress=False)
    assert not h.stopped_early and h.best_step == 60
    assert evaluate(model, x) == pytest.approx(h.best_val, abs=1e-6)


def test_nan_parameter_is_named():
    torch.manual_seed(0)
    model = Layered()
    original = model.log_prob

    def planted(x: torch.Tensor) -> torch.Tensor:
        if model.calls == 6:  # the 7th call: step 7
            with torch.no_grad():
                model.layers[1].bias[0] = float("nan")
        return original(x)

    model.log_prob = planted
    with pytest.raises(NonFiniteError, match="step 7") as info:
        fit(model, gaussian_data(100), steps=20, batch_size=10, progress=False)
    err = info.value
    assert err.step == 7 and math.isnan(err.loss)
    assert err.parameters == ["layers.1.bias"]
    assert "layers.1.bias" in str(err) and "layers.0.weight" not in str(err)
    assert isinstance(err, FloatingPointError) and err.history.steps == 6


def test_nan_gradient_is_named_and_no_step_taken():
    torch.manual_seed(0)
    model = Layered()
    weight = model.layers[0].weight
    weight.register_hook(lambda g: g * float("nan") if model.calls == 5 else g)
    before = {}

    def remember(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        before.update({k: t.clone() for k, t in m.state_dict().items()})
        return nll_loss(m, batch)

    with pytest.raises(NonFiniteError, match="gradients of layers.0.weight") as info:
        fit(model, gaussian_data(100), loss=remember, steps=20, progress=False)
    err = info.value
    assert err.step == 5 and math.isfinite(err.loss) and err.parameters == ["layers.0.weight"]
    for name, value in model.state_dict().items():  # the bad step was not applied
        assert torch.equal(value, before[name])


def test_nan_loss_with_finite_parameters():
    model = DiagGaussian()

    def broken(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return torch.log(-m.log_std.exp().sum())  # log of a negative number

    with pytest.raises(NonFiniteError, match="step 1: the loss is nan") as info:
        fit(model, gaussian_data(50), loss=broken, steps=5, progress=False)
    assert info.value.parameters == [] and "All parameters are finite" in str(info.value)


def _history_numbers(h: History) -> tuple:
    return (h.train_loss, h.val_steps, h.val_loss, h.lr, h.best_step)


def test_same_seeds_same_history():
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = DiagGaussian()
        h = fit(
            model,
            gaussian_data(300),
            steps=50,
            batch_size=32,
            lr=0.02,
            val_data=gaussian_data(100, seed=2),
            eval_every=10,
            schedule="cosine",
            progress=False,
            generator=torch.Generator().manual_seed(5),
        )
        runs.append((_history_numbers(h), [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)


def test_variational_inference_without_data():
    # Reverse KL to N((1, -2), 0.3^2 I), known only up to its normaliser.
    target_mean, target_std = torch.tensor([1.0, -2.0]), 0.3
    torch.manual_seed(0)
    q = DiagGaussian()

    def reverse_kl(model: nn.Module, batch: None) -> torch.Tensor:
        assert batch is None
        eps = torch.randn(128, 2)
        x = model.mean + model.log_std.exp() * eps  # reparameterised sample of q
        log_target = -0.5 * (((x - target_mean) / target_std) ** 2).sum(dim=1)
        return (model.log_prob(x) - log_target).mean()

    h = fit(
        q, loss=reverse_kl, val_loss=reverse_kl, steps=400, lr=0.05, eval_every=100, progress=False
    )
    assert h.val_steps == [100, 200, 300, 400]
    torch.testing.assert_close(q.mean.detach(), target_mean, atol=0.05, rtol=0)
    torch.testing.assert_close(q.log_std.exp().detach(), torch.full((2,), 0.3), atol=0.05, rtol=0)


def test_cosine_schedule_reaches_zero():
    model = DiagGaussian()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    h = fit(
        model, gaussian_data(100), steps=100, optimizer=optimizer, schedule="cosine", progress=False
    )
    assert h.lr[0] == pytest.approx(0.1)
    assert h.lr[-1] < 1e-3 * 0.1
    assert all(a >= b for a, b in zip(h.lr, h.lr[1:], strict=False))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_grad_clip_bounds_an_sgd_step():
    model = DiagGaussian()
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(
        model, gaussian_data(100, mean=50.0), steps=1, optimizer=sgd, grad_clip=0.01, progress=False
    )
    moved = torch.cat([model.mean.detach(), model.log_std.detach()]).norm()
    assert moved <= 0.01 + 1e-6


def test_progress_bar_runs(capsys):
    fit(DiagGaussian(), gaussian_data(100), steps=20, desc="toy", progress=True)
    err = capsys.readouterr().err
    assert "toy" in err and "20/20" in err


def test_evaluate_matches_one_big_batch():
    model, x = DiagGaussian(), gaussian_data(1000)
    assert evaluate(model, x, batch_size=64) == pytest.approx(nll_loss(model, x).item(), rel=1e-6)


class NoLogProb(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


class WrongShape(DiagGaussian):
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return super().log_prob(x)[:, None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"eval_every": -1}, "eval_every must be"),
        ({"lr": 0.0}, "lr must be a positive number, got 0.0"),
        ({"lr": -1e-3}, "lr must be a positive"),
        ({"schedule": "linear"}, "schedule must be None or \"cosine\", got 'linear'"),
        ({"patience": 3}, "patience .* needs validation"),
        ({"patience": 0, "val_data": torch.zeros(3, 2)}, "patience must be None or an integer"),
        ({"grad_clip": 0.0}, "grad_clip must be None or a positive number"),
        ({"generator": 0}, "generator must be a torch.Generator, got int"),
        ({"data": [[0.0, 1.0]]}, "data must be a torch.Tensor"),
        ({"data": torch.zeros(0, 2)}, r"n >= 1, got \(0, 2\)"),
        ({"data": torch.zeros(5, 2, dtype=torch.long)}, "floating-point tensor, got dtype"),
        ({"data": torch.tensor([[0.0, math.nan]])}, "data contains nan"),
        ({"data": None}, "needs data"),
        ({"optimizer": "adam"}, "optimizer must be a torch.optim.Optimizer"),
        ({"loss": 3}, "loss must be a function"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"data": gaussian_data(10), "steps": 5, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit(DiagGaussian(), **args)


def test_bad_models_and_losses():
    x = gaussian_data(10)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        fit(object(), x, steps=1, progress=False)
    with pytest.raises(ValueError, match="needs model.log_prob"):
        fit(NoLogProb(), x, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"one value per row, shape \(10,\), got \(10, 1\)"):
        fit(WrongShape(), x, steps=1, batch_size=10, progress=False)
    with pytest.raises(ValueError, match="scalar tensor"):
        fit(DiagGaussian(), x, loss=lambda m, b: m.log_prob(b), steps=1, progress=False)


def test_nan_inside_a_flow_reaches_the_guard():
    # A nan in z used to stop inside torch.distributions (argument validation) with a
    # ValueError; the guard must see it and name the parameter instead.
    from flowcourse.bijections import Affine
    from flowcourse.flows import Flow, standard_normal

    flow = Flow(standard_normal(2), [Affine(2)])
    with torch.no_grad():
        flow.bijections[0].shift[1] = float("nan")
    assert torch.isnan(flow.log_prob(torch.zeros(3, 2))).all()
    with pytest.raises(NonFiniteError, match="step 1: the loss is nan") as info:
        fit(flow, gaussian_data(50), steps=5, batch_size=10, progress=False)
    assert info.value.parameters == ["transform.layers.0.shift"]


def test_a_stored_notebook_keeps_the_bar_in_its_final_state(tmp_path):
    # GitHub, nbviewer and the site show the text a notebook stored; a widget's text form is
    # captured when it is created (0%), so the bar must replace it when it closes.
    import nbformat

    from flowcourse.notebooks import run

    nb = nbformat.v4.new_notebook()
    code = "from flowcourse.train import progress_bar\nbar = progress_bar(7, 'demo')\n"
    long = "a long description (stopped early at step 1200)"
    nb.cells = [
        nbformat.v4.new_code_cell(code + "bar.update(7)\nbar.close()\nbar.close()"),
        # A long description and postfix keep the whole line: the final loss stays readable
        # and nbval's sanitize pattern still recognises the bar.
        nbformat.v4.new_code_cell(
            f"bar = progress_bar(4000, {long!r})\nbar.set_postfix(loss='17.8450', val='19.5035')\n"
            "bar.update(1120)\nbar.close()"
        ),
    ]
    run(nb, tmp_path, timeout=120)
    (output,) = nb.cells[0].outputs
    assert list(output["data"]) == ["text/plain"], output  # no widget left behind
    text = output["data"]["text/plain"]
    assert text.startswith("demo: 100%|") and "7/7 [" in text, text
    (output,) = nb.cells[1].outputs
    text = output["data"]["text/plain"]
    assert text.startswith(long) and text.endswith("loss=17.8450, val=19.5035]"), text
