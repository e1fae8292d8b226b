"""One training loop for the whole course: ``fit`` minimises a loss with Adam and records it.

The default loss is the negative log-likelihood ``-mean log q(x)`` of a minibatch; any other
objective (a variational bound, a regulariser) is a function ``loss(model, batch)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["fit", "History", "NonFiniteError", "nll_loss", "evaluate", "progress_bar"]

Loss = Callable[[nn.Module, torch.Tensor | None], torch.Tensor]

EVAL_BATCH = 4096  # rows per forward pass when evaluating: bounds memory on big sets


def progress_bar(total: int, desc: str = "", *, disable: bool = False) -> tqdm:
    """A ``tqdm.auto`` bar for ``total`` steps that a stored notebook shows in its final state.

    In Jupyter the bar is a widget while it runs. A saved notebook keeps only the widget's text
    form, captured when the bar was created (``0%| | 0/N``), which is what GitHub, nbviewer and
    the course site would show; so when the bar closes, its display is replaced by the final
    state as text (steps, time, rate, last postfix). Elsewhere it is tqdm's ordinary bar.
    """
    options = {"total": total, "desc": desc, "disable": disable, "mininterval": 0.5}
    if not disable and _notebook_tqdm is not None and issubclass(tqdm, _notebook_tqdm):
        return _StoredBar(**options, leave=True)
    return tqdm(**options, leave=True)


try:
    from tqdm.notebook import tqdm as _notebook_tqdm
except ImportError:  # no ipywidgets: tqdm.auto falls back to the text bar
    _notebook_tqdm = None

if _notebook_tqdm is not None:

    class _StoredBar(tqdm):
        def __init__(self, **kwargs) -> None:
            from IPython.display import display

            super().__init__(display=False, **kwargs)
            self._handle = display(self.container, display_id=True)
            self.displayed = True
            self._stored = False

        def close(self) -> None:
            fresh = not (self.disable or self._stored)  # tqdm's close() sets disable
            super().close()
            if not fresh:
                return
            self._stored = True
            from tqdm.std import tqdm as text_tqdm

            # No ncols: a fixed width would cut a long description's line short, losing the
            # final loss and the closing bracket that tests/nbval_sanitize.cfg matches.
            state = {**self.format_dict, "ncols": None}
            self._handle.update({"text/plain": text_tqdm.format_meter(**state)}, raw=True)


class NonFiniteError(FloatingPointError):
    """A loss, gradient or parameter became nan or inf; training stopped at that step.

    Attributes: ``step`` (1-based), ``loss`` (its value), ``parameters`` (names of the
    offending parameters, as in ``model.named_parameters()``) and ``history`` up to then.
    """

    def __init__(
        self, message: str, step: int, loss: float, parameters: list[str], history: History
    ) -> None:
        super().__init__(message)
        self.step, self.loss, self.parameters, self.history = step, loss, parameters, history


@dataclass
class History:
    """What ``fit`` saw. ``steps`` counts optimizer steps taken (1-based step numbers below)."""

    steps: int = 0
    train_loss: list[float] = field(default_factory=list)  # one per step
    lr: list[float] = field(default_factory=list)  # learning rate used at each step
    val_steps: list[int] = field(default_factory=list)  # steps after which validation ran
    val_loss: list[float] = field(default_factory=list)
    best_step: int | None = None
    best_val: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def final_train(self) -> float:
        """Mean training loss over the last 5% of steps (a single step is too noisy)."""
        if not self.train_loss:
            return math.nan
        tail = self.train_loss[-max(1, len(self.train_loss) // 20) :]
        return sum(tail) / len(tail)

    @property
    def final_val(self) -> float | None:
        return self.val_loss[-1] if self.val_loss else None

    def __repr__(self) -> str:
        val = "" if self.final_val is None else f", final_val={self.final_val:.4f}"
        best = (
            "" if self.best_step is None else f", best_val={self.best_val:.4f} at {self.best_step}"
        )
        stop = ", stopped early" if self.stopped_early else ""
        return (
            f"History(steps={self.steps}, final_train={self.final_train:.4f}{val}{best}{stop}, "
            f"seconds={self.seconds:.1f})"
        )


def nll_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood ``-model.log_prob(batch).mean()``; batch: (batch, ...)."""
    log_prob = model.log_prob(batch)
    if not isinstance(log_prob, torch.Tensor) or log_prob.shape != batch.shape[:1]:
        got = tuple(log_prob.shape) if isinstance(log_prob, torch.Tensor) else type(log_prob)
        raise ValueError(
            f"model.log_prob(x) must return one value per row, shape ({len(batch)},), got {got}"
        )
    return -log_prob.mean()


@torch.no_grad()
def evaluate(
    model: nn.Module, data: torch.Tensor, loss: Loss = nll_loss, batch_size: int = EVAL_BATCH
) -> float:
    """Mean ``loss`` over ``data: (n, ...)`` in chunks, in eval mode and without gradients.

    Chunk means are weighted by chunk size, which is exact for a mean over rows (the NLL).
    """
    _check_data(data, "data", floating=loss is nll_loss)
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for chunk in data.split(batch_size):
            total += float(loss(model, chunk)) * len(chunk)
    finally:
        model.train(was_training)
    return total / len(data)


def fit(
    model: nn.Module,
    data: torch.Tensor | None = None,
    *,
    loss: Loss | None = None,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: str | None = None,
    val_data: torch.Tensor | None = None,
    val_loss: Loss | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    grad_clip: float | None = None,
    progress: bool = True,
    desc: str = "training",
    generator: torch.Generator | None = None,
) -> History:
    """Train ``model`` for ``steps`` minibatch steps and return its ``History``.

    - data: (n, ...) training rows; minibatches of ``batch_size`` rows are drawn from random
      permutations of the rows (a new one each epoch, drawn with ``generator`` or torch's
      global generator), full batches only: the few rows left over in an epoch wait for the
      next. ``batch_size >= n`` means full-batch training. ``data=None`` suits losses that
      need no data, e.g. variational inference, which calls ``loss(model, None)``.
    - loss: ``loss(model, batch) -> scalar``; default ``nll_loss``.
    - optimizer: default ``Adam(model.parameters(), lr)``; ``lr`` is ignored if one is given.
    - schedule: None (constant) or "cosine" (from the initial lr down to 0 at the last step).
    - val_data / val_loss: validation every ``eval_every`` steps and after the last step, in
      eval mode under ``torch.no_grad()``. The default is the NLL on ``val_data`` in chunks;
      a custom ``val_loss(model, val_data)`` is called once per evaluation (wrap its body in
      ``torch.enable_grad()`` if it needs autograd).
    - patience: stop after this many evaluations in a row without a new best validation
      loss, and in any case end with the best weights seen (restored into ``model``).
    - grad_clip: clip the global gradient norm to this value.
    - progress: a tqdm bar (a widget in Jupyter) updated about 50 times in all.

    A nan or inf in the loss or a gradient raises ``NonFiniteError`` at once, naming the step
    and the parameters involved: a skipped step would hide the bug.
    """
    _check_fit_args(
        model,
        data,
        loss,
        steps,
        batch_size,
        lr,
        optimizer,
        schedule,
        val_data,
        val_loss,
        eval_every,
        patience,
        grad_clip,
        generator,
    )
    loss_fn = loss if loss is not None else nll_loss
    validating = val_data is not None or val_loss is not None
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = None
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batches = _minibatches(data, batch_size, generator) if data is not None else None

    history = History()
    best_state: dict[str, torch.Tensor] | None = None
    evals_since_best = 0
    report_every = max(1, steps // 50)
    bar = progress_bar(steps, desc, disable=not progress)
    start = time.perf_counter()
    model.train()
    try:
        for step in range(1, steps + 1):
            batch = next(batches) if batches is not None else None
            optimizer.zero_grad(set_to_none=True)
            value = loss_fn(model, batch)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(f"loss must return a scalar tensor, got {got}")
            loss_value = value.detach().item()
            if not math.isfinite(loss_value):
                _raise_non_finite(model, step, loss_value, history, gradients=False)
            value.backward()
            _check_gradients(model, step, loss_value, history)
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            history.lr.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            history.train_loss.append(loss_value)
            history.steps = step

            if validating and (step % eval_every == 0 or step == steps):
                v = _validate(model, val_data, val_loss, step, history)
                history.val_steps.append(step)
                history.val_loss.append(v)
                if history.best_val is None or v < history.best_val:
                    history.best_val, history.best_step = v, step
                    evals_since_best = 0
                    if patience is not None:
                        best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
                else:
                    evals_since_best += 1
                if patience is not None and evals_since_best >= patience:
                    history.stopped_early = step < steps
                    bar.set_description(f"{desc} (stopped early at step {step})", refresh=False)
                    break

            if step % report_every == 0 or step == steps:
                recent = history.train_loss[-report_every:]
                postfix = {"loss": f"{sum(recent) / len(recent):.4f}"}
                if history.val_loss:
                    postfix["val"] = f"{history.val_loss[-1]:.4f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(step - bar.n)
    finally:
        bar.close()
        history.seconds = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


# --- helpers --------------------------------------------------------------------------------


def _minibatches(
    data: torch.Tensor, batch_size: int, generator: torch.Generator | None
) -> Iterator[torch.Tensor]:
    """Endless full minibatches, one random permutation of the rows per epoch."""
    n = len(data)
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n - size + 1, size):
            yield data[order[begin : begin + size]]


def _validate(
    model: nn.Module,
    val_data: torch.Tensor | None,
    val_loss: Loss | None,
    step: int,
    history: History,
) -> float:
    if val_loss is None:
        value = evaluate(model, val_data)
    else:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = float(val_loss(model, val_data))
        finally:
            model.train(was_training)
    if not math.isfinite(value):
        raise NonFiniteError(
            f"step {step}: the validation loss is {value} while the training loss was finite; "
            "the model may give the validation data zero density (log_prob = -inf)",
            step,
            value,
            [],
            history,
        )
    return value


def _check_gradients(model: nn.Module, step: int, loss_value: float, history: History) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
        _raise_non_finite(model, step, loss_value, history, gradients=True)


def _raise_non_finite(
    model: nn.Module, step: int, loss_value: float, history: History, *, gradients: bool
) -> None:
    bad_values = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if gradients:
        names = [
            n
            for n, p in model.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ]
        message = (
            f"step {step}: the loss is finite ({loss_value:.6g}) but the gradients of "
            f"{', '.join(names)} contain nan or inf."
        )
    else:
        names = bad_values
        message = f"step {step}: the loss is {loss_value}."
    if bad_values:
        message += f" Parameters holding nan or inf: {', '.join(bad_values)}."
        names = list(dict.fromkeys(names + bad_values))
    elif not gradients:
        message += (
            " All parameters are finite, so the forward computation produced it: an overflow, "
            "or a function used outside its domain."
        )
    message += (
        " Training stopped before the optimizer step. Common causes: a learning rate too large, "
        "exp() of a large scale, log of 0 or of a negative number (e.g. log(scale) with a scale "
        "that crossed zero: parametrise it as exp(log_scale)); try a smaller lr, "
        "grad_clip=..., or check the data."
    )
    raise NonFiniteError(message, step, loss_value, names, history)


def _check_data(x: object, name: str, *, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(x).__name__}")
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains nan or inf values")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fit_args(
    model: nn.Module,
    data: torch.Tensor | None,
    loss: Loss | None,
    steps: int,
    batch_size: int,
    lr: float,
    optimizer: torch.optim.Optimizer | None,
    schedule: str | None,
    val_data: torch.Tensor | None,
    val_loss: Loss | None,
    eval_every: int,
    patience: int | None,
    grad_clip: float | None,
    generator: torch.Generator | None,
) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if loss is None:
        if not callable(getattr(model, "log_prob", None)):
            raise ValueError("the default loss (NLL) needs model.log_prob; pass loss=... instead")
        if data is None:
            raise ValueError("the default loss (NLL) needs data; pass data or loss=...")
    elif not callable(loss):
        raise ValueError(f"loss must be a function loss(model, batch), got {type(loss).__name__}")
    if data is not None:
        _check_data(data, "data", floating=loss is None)
    if val_data is not None:
        _check_data(val_data, "val_data", floating=val_loss is None)
    if val_loss is not None and not callable(val_loss):
        raise ValueError(f"val_loss must be a function, got {type(val_loss).__name__}")
    if val_loss is None and val_data is not None and not callable(getattr(model, "log_prob", None)):
        raise ValueError("validation by NLL needs model.log_prob; pass val_loss=...")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if schedule not in (None, "cosine"):
        raise ValueError(f'schedule must be None or "cosine", got {schedule!r}')
    if patience is not None:
        if not _is_int(patience) or patience < 1:
            raise ValueError(f"patience must be None or an integer >= 1, got {patience!r}")
        if val_data is None and val_loss is None:
            raise ValueError(
                "patience (early stopping) needs validation: pass val_data or val_loss"
            )
    if grad_clip is not None and (
        isinstance(grad_clip, bool) or not isinstance(grad_clip, int | float) or not grad_clip > 0
    ):
        raise ValueError(f"grad_clip must be None or a positive number, got {grad_clip!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not any(p.requires_grad for p in model.parameters()) and optimizer is None:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
