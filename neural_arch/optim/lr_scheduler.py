"""Learning-rate schedulers with PyTorch's semantics, for any optimizer and any backend.

A schedule is a function of the step ``t`` (``last_epoch``, counted from 0 at
construction). A scheduler object evaluates it and writes the result, a Python
``float``, into ``optimizer.param_groups[i]["lr"]``; arrays never enter here,
so the same scheduler drives an optimizer over NumPy, CuPy, PyTorch or JAX
parameters.

PyTorch's conventions, kept on purpose:

- Constructing a scheduler performs step 0: it stores ``group["initial_lr"]``
  (the ``base_lrs``) and writes the schedule's first value. Call
  ``scheduler.step()`` after ``optimizer.step()``, once per step (or epoch).
- The "chainable" schedulers (StepLR, MultiStepLR, ConstantLR, LinearLR,
  ExponentialLR, PolynomialLR, CosineAnnealingLR, MultiplicativeLR) update the
  *current* lr by the ratio ``f(t) / f(t-1)`` of their schedule ``f``, so that
  several of them compose multiplicatively (ChainedScheduler) and a manual
  change to ``group["lr"]`` is carried on. The closed form ``base_lr * f(t)``
  is used where PyTorch uses it: ``step(epoch)`` and SequentialLR's milestones.
- ``last_epoch=k`` resumes a schedule: the groups must already hold
  ``initial_lr`` (load the optimizer's state dict first).
- ``state_dict()`` holds every attribute except the optimizer; functions and
  lambdas given by the user are not saved (callable objects save ``__dict__``).
"""

from __future__ import annotations

import copy
import math
import types
import warnings
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from typing import Any
from weakref import ref

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
    "get_cosine_schedule_with_warmup",
    "get_linear_schedule_with_warmup",
]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available."
)
_STEP_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "You should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in skipping the first value of the learning rate schedule."
)
_STEP_OVERRIDDEN_WARNING = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before "
    "`lr_scheduler.step()`."
)
_GET_LR_WARNING = (
    "To get the last learning rate computed by the scheduler, please use `get_last_lr()`."
)


# --------------------------------------------------------------------------- validation


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(getattr(optimizer, "param_groups", None), list):
        raise TypeError(
            f"optimizer must be an Optimizer (an object with a param_groups list), "
            f"got {type(optimizer).__name__}"
        )


def _check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        expected = "a positive integer" if integer else "> 0"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float, *, low_open=False) -> None:
    if not isinstance(value, (int, float)) or not (
        (low < value if low_open else low <= value) and value <= high
    ):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")


def _per_group(name: str, optimizer: Any, value: Any) -> list:
    """One value per param group: a scalar is repeated, a sequence must match."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} must have one value per param group ({n}), got {len(value)} values"
            )
        return list(value)
    return [value] * n


def _group_lrs(optimizer: Any) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def _set_momentum(group: dict, momentum: float, use_beta1: bool) -> None:
    # Adam's momentum is beta1; SGD's is "momentum" (PyTorch's convention).
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


def _track_optimizer_step(optimizer: Any) -> None:
    """Wrap ``optimizer.step`` so that ``_opt_called`` records its first call (as PyTorch)."""
    step = optimizer.step
    if hasattr(step, "_wrapped_by_lr_sched"):
        return
    opt_ref = ref(optimizer)
    func = getattr(step, "__func__", None)

    @wraps(func if func is not None else step)
    def wrapper(*args, **kwargs):
        opt = opt_ref()
        opt._opt_called = True
        if func is not None:
            return func.__get__(opt, type(opt))(*args, **kwargs)
        return step(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    optimizer.step = wrapper


# --------------------------------------------------------------------------- base class


class LRScheduler:
    """Base class: owns ``base_lrs``, ``last_epoch`` and writes lrs into the groups.

    A subclass implements :meth:`get_lr` (the lrs for step ``self.last_epoch``)
    and, where the schedule has one, ``_get_closed_form_lr``.
    """

    _get_lr_called_within_step = False
    _is_initial = False

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when "
                        f"resuming scheduler with last_epoch={last_epoch}: load the "
                        "optimizer's state dict first, or use last_epoch=-1 for a fresh run"
                    )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        _track_optimizer_step(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer (a deep copy)."""
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "optimizer"})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(copy.deepcopy(state_dict))

    def get_last_lr(self) -> list[float]:
        """The lrs written by the last step, one per param group."""
        return list(self._last_lr)

    def get_lr(self) -> list[float]:
        """The lrs of step ``last_epoch`` (called by :meth:`step`; use get_last_lr)."""
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:
        """Advance one step (call after ``optimizer.step()``).

        ``epoch`` is PyTorch's deprecated form: it sets ``last_epoch`` and uses
        the closed form where there is one, with a deprecation warning.
        """
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(_STEP_OVERRIDDEN_WARNING, UserWarning, stacklevel=2)
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(_STEP_ORDER_WARNING, UserWarning, stacklevel=2)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        self._write(values)

    def _write(self, values: Iterable[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = float(lr)
        self._last_lr = _group_lrs(self.optimizer)

    def _warn_outside_step(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn(_GET_LR_WARNING, UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- lambdas


class _LambdaState:
    """state_dict support for user callables: functions are dropped, objects keep __dict__."""

    lr_lambdas: list[Callable[[int], float]]

    def _set_lambdas(self, optimizer: Any, lr_lambda) -> None:
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(
                    f"lr_lambda must have one function per param group ({n}), got {len(lr_lambda)}"
                )
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for fn in lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda must be callable, got {type(fn).__name__}")
        self.lr_lambdas = lambdas

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state = copy.deepcopy(state)
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else copy.deepcopy(fn.__dict__)
            for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {k: v for k, v in state_dict.items() if k != "lr_lambdas"}
        self.__dict__.update(copy.deepcopy(state))
        for fn, saved in zip(self.lr_lambdas, state_dict["lr_lambdas"], strict=True):
            if saved is not None:
                fn.__dict__.update(copy.deepcopy(saved))


class LambdaLR(_LambdaState, LRScheduler):
    """``lr = base_lr * lr_lambda(t)``; one function, or one per param group."""

    def __init__(self, optimizer: Any, lr_lambda, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self._set_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        t = self.last_epoch
        return [base * fn(t) for fn, base in zip(self.lr_lambdas, self.base_lrs, strict=True)]


class MultiplicativeLR(_LambdaState, LRScheduler):
    """``lr_t = lr_{t-1} * lr_lambda(t)`` for t >= 1 (step 0 leaves the lr as it is)."""

    def __init__(self, optimizer: Any, lr_lambda, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self._set_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        lrs = _group_lrs(self.optimizer)
        if self._is_initial:
            return lrs
        t = self.last_epoch
        return [lr * fn(t) for fn, lr in zip(self.lr_lambdas, lrs, strict=True)]


# --------------------------------------------------------------------------- chainable


class _ChainableLR(LRScheduler):
    """A schedule ``lr = base_lr * f(t)`` applied as ``lr_t = lr_{t-1} * f(t) / f(t-1)``.

    Subclasses define the schedule ``_factor(t)`` and the ratio ``_ratio(t)``
    (``f(t)/f(t-1)`` simplified, which PyTorch evaluates; the results agree
    with PyTorch to the last bit). Step 0 multiplies by ``f(0)``.
    """

    # PyTorch re-applies the ratio when resuming with last_epoch >= 0 for some
    # schedulers (StepLR, MultiStepLR, ConstantLR) and not for the others.
    _ratio_on_resume = False

    def _factor(self, t: int) -> float:
        raise NotImplementedError

    def _ratio(self, t: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        lrs = _group_lrs(self.optimizer)
        t = self.last_epoch
        if t == 0:
            factor = self._factor(0)
        elif self._is_initial and not self._ratio_on_resume:
            return lrs
        else:
            factor = self._ratio(t)
        return [lr * factor for lr in lrs]

    def _get_closed_form_lr(self) -> list[float]:
        factor = self._factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]


class StepLR(_ChainableLR):
    """Decay by ``gamma`` every ``step_size`` steps: ``f(t) = gamma ** (t // step_size)``.

    The seed's ``if epoch % 30 == 0 and epoch > 0: lr *= 0.1`` is
    ``StepLR(optimizer, step_size=30, gamma=0.1)``.
    """

    _ratio_on_resume = True

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch=-1) -> None:
        _check_positive("step_size", step_size, integer=True)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return self.gamma ** (t // self.step_size)

    def _ratio(self, t):
        return self.gamma if t % self.step_size == 0 else 1.0


class MultiStepLR(_ChainableLR):
    """Decay by ``gamma`` at each milestone: ``f(t) = gamma ** #{m in milestones : m <= t}``.

    A milestone listed twice decays twice.
    """

    _ratio_on_resume = True

    def __init__(self, optimizer, milestones: Iterable[int], gamma: float = 0.1, last_epoch=-1):
        self.milestones = sorted(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return self.gamma ** bisect_right(self.milestones, t)

    def _ratio(self, t):
        return self.gamma ** self.milestones.count(t) if t in self.milestones else 1.0


class ConstantLR(_ChainableLR):
    """``f(t) = factor`` for ``t < total_iters``, then 1 (a constant warmup)."""

    _ratio_on_resume = True

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch=-1):
        _check_range("factor", factor, 0.0, 1.0)
        _check_positive("total_iters", total_iters, integer=True)
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return self.factor if t < self.total_iters else 1.0

    def _ratio(self, t):
        return 1.0 / self.factor if t == self.total_iters else 1.0

    def get_lr(self):
        if self.last_epoch == self.total_iters and self.factor == 0:
            # No ratio leads back from 0 (PyTorch divides by zero): restart from base_lr.
            self._warn_outside_step()
            return list(self.base_lrs)
        return super().get_lr()


class LinearLR(_ChainableLR):
    """``f(t) = start + (end - start) * min(t, total_iters) / total_iters``."""

    def __init__(
        self,
        optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_range("start_factor", start_factor, 0.0, 1.0, low_open=True)
        _check_range("end_factor", end_factor, 0.0, 1.0)
        _check_positive("total_iters", total_iters, integer=True)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        return s + (e - s) * min(n, t) / n

    def _ratio(self, t):
        if t > self.total_iters:
            return 1.0
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        return 1.0 + (e - s) / (n * s + (t - 1) * (e - s))


class ExponentialLR(_ChainableLR):
    """``f(t) = gamma ** t``."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return self.gamma**t

    def _ratio(self, t):
        return self.gamma


class PolynomialLR(_ChainableLR):
    """``f(t) = (1 - min(t, total_iters) / total_iters) ** power``: reaches 0 at total_iters."""

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch=-1):
        _check_positive("total_iters", total_iters, integer=True)
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return (1.0 - min(self.total_iters, t) / self.total_iters) ** self.power

    def _ratio(self, t):
        if t > self.total_iters:
            return 1.0
        n = self.total_iters
        return ((1.0 - t / n) / (1.0 - (t - 1) / n)) ** self.power


class CosineAnnealingLR(_ChainableLR):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (SGDR, no restarts).

    Past ``T_max`` the cosine goes on: the lr rises back to ``base_lr`` at
    ``2 * T_max`` (PyTorch's behaviour). Applied in PyTorch's chainable form:
    ``lr_t = eta_min + (lr_{t-1} - eta_min) * g(t) / g(t-1)`` with
    ``g(t) = 1 + cos(pi t / T_max)``, and additively where ``g(t-1) = 0``.
    """

    def __init__(self, optimizer, T_max: float, eta_min: float = 0.0, last_epoch=-1) -> None:
        _check_positive("T_max", T_max)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return (1 + math.cos(math.pi * t / self.T_max)) / 2

    def get_lr(self):
        self._warn_outside_step()
        lrs = _group_lrs(self.optimizer)
        if self._is_initial:
            return lrs
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if (t - 1 - T) % (2 * T) == 0:  # g(t-1) == 0: the minimum of the cosine
            rise = (1 - math.cos(math.pi / T)) / 2
            return [
                lr + (base - eta_min) * rise for lr, base in zip(lrs, self.base_lrs, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - eta_min) + eta_min for lr in lrs]

    def _get_closed_form_lr(self):
        f = self._factor(self.last_epoch)
        return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]


# --------------------------------------------------------------------------- closed forms


def _restart_position(epoch: float, T_0: int, T_mult: int) -> tuple[float, int]:
    """(T_cur, T_i): the position of ``epoch`` in its cycle, and that cycle's length."""
    start, length = 0, T_0
    while epoch >= start + length:
        start += length
        length *= T_mult
    return epoch - start, length


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing restarted every cycle; cycle ``i`` lasts ``T_0 * T_mult**i`` steps.

    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``
    (Loshchilov & Hutter, SGDR). ``step(epoch)`` accepts fractional epochs
    without a warning, as in PyTorch.
    """

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch=-1):
        _check_positive("T_0", T_0, integer=True)
        if isinstance(T_mult, bool) or not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"T_mult must be an integer >= 1, got {T_mult!r}")
        if isinstance(eta_min, bool) or not isinstance(eta_min, (int, float)):
            raise ValueError(f"eta_min must be a float, got {eta_min!r}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_outside_step()
        f = (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
        return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        if epoch is None:
            epoch = self.last_epoch + 1
        elif epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        self.T_cur, self.T_i = _restart_position(epoch, self.T_0, self.T_mult)
        self.last_epoch = math.floor(epoch)
        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        self._write(values)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin): warm up to ``max_lr``, anneal to ``min_lr``.

    Per group: ``initial_lr = max_lr / div_factor``,
    ``min_lr = initial_lr / final_div_factor``. Phases (``T = total_steps``):
    ``[0, pct_start*T - 1]`` initial_lr -> max_lr, then max_lr -> min_lr at
    ``T - 1``; with ``three_phase`` the second phase returns to initial_lr at
    ``2*pct_start*T - 2`` and a third goes to min_lr. Each phase anneals by
    cosine (``end + (start - end) * (1 + cos(pi * pct)) / 2``) or linearly.
    Momentum (SGD's ``momentum`` or Adam's ``beta1``) moves inversely between
    ``max_momentum`` and ``base_momentum`` when ``cycle_momentum``.
    """

    def __init__(
        self,
        optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if total_steps is not None:
            _check_positive("total_steps", total_steps, integer=True)
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            _check_positive("epochs", epochs, integer=True)
            _check_positive("steps_per_epoch", steps_per_epoch, integer=True)
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("give either total_steps or both epochs and steps_per_epoch")
        _check_range("pct_start", pct_start, 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        T = self.total_steps
        if three_phase:
            self._schedule_phases = [
                [
                    float(pct_start * T) - 1,
                    "initial_lr",
                    "max_lr",
                    "max_momentum",
                    "base_momentum",
                ],
                [
                    float(2 * pct_start * T) - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ],
                [T - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"],
            ]
        else:
            self._schedule_phases = [
                [
                    float(pct_start * T) - 1,
                    "initial_lr",
                    "max_lr",
                    "max_momentum",
                    "base_momentum",
                ],
                [T - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"],
            ]
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, max_lrs, strict=True):
                group["initial_lr"] = lr / div_factor
                group["max_lr"] = lr
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer)
            if last_epoch == -1:
                _init_momentum(optimizer, base_momentum, max_momentum, self.use_beta1)
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        self._warn_outside_step()
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(
                f"Tried to step {t} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, (end, lr0, lr1, m0, m1) in enumerate(self._schedule_phases):
                if t <= end or i == len(self._schedule_phases) - 1:
                    pct = (t - start) / (end - start)
                    lrs.append(self._anneal(group[lr0], group[lr1], pct))
                    if self.cycle_momentum:
                        momentum = self._anneal(group[m0], group[m1], pct)
                        _set_momentum(group, momentum, self.use_beta1)
                    break
                start = end
        return lrs


def _momentum_key(optimizer) -> bool:
    """True when the optimizer's momentum is Adam's beta1, False for SGD's momentum."""
    defaults = getattr(optimizer, "defaults", {})
    if "momentum" not in defaults and "betas" not in defaults:
        raise ValueError(
            "cycle_momentum=True needs an optimizer with 'momentum' or 'betas' in its "
            "defaults; pass cycle_momentum=False"
        )
    return "betas" in defaults


def _init_momentum(optimizer, base_momentum, max_momentum, use_beta1: bool) -> None:
    bases = _per_group("base_momentum", optimizer, base_momentum)
    maxes = _per_group("max_momentum", optimizer, max_momentum)
    for group, b, m in zip(optimizer.param_groups, bases, maxes, strict=True):
        _set_momentum(group, m, use_beta1)
        group["max_momentum"] = m
        group["base_momentum"] = b


class CyclicLR(LRScheduler):
    """Cyclical learning rates (Smith, 2017) between ``base_lr`` and ``max_lr``.

    With ``c = floor(1 + t / (up + down))`` and ``x = 1 + t / (up + down) - c``,
    the triangle is ``h = x / r`` for ``x <= r`` else ``(x - 1) / (r - 1)``
    (``r = up / (up + down)``), and ``lr = base_lr + (max_lr - base_lr) * h * s``
    with ``s = 1`` (triangular), ``1 / 2 ** (c - 1)`` (triangular2),
    ``gamma ** t`` (exp_range) or ``scale_fn(c or t)``. Momentum moves
    inversely, from ``max_momentum`` down to ``base_momentum``.
    """

    def __init__(
        self,
        optimizer,
        base_lr: float | Sequence[float],
        max_lr: float | Sequence[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.8,
        max_momentum: float | Sequence[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr
        self.max_lrs = _per_group("max_lr", optimizer, max_lr)
        _check_positive("step_size_up", step_size_up)
        if step_size_down is not None:
            _check_positive("step_size_down", step_size_down)
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        if scale_fn is None and mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(
                f"mode must be 'triangular', 'triangular2' or 'exp_range' when scale_fn is "
                f"None, got {mode!r}"
            )
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        if scale_fn is None:
            self.scale_mode = "iterations" if mode == "exp_range" else "cycle"
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer)
            self.base_momentums = _per_group("base_momentum", optimizer, base_momentum)
            self.max_momentums = _per_group("max_momentum", optimizer, max_momentum)
            if last_epoch == -1:
                _init_momentum(optimizer, base_momentum, max_momentum, self.use_beta1)
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x: float) -> float:
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma**x

    def get_lr(self):
        self._warn_outside_step()
        t = self.last_epoch
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        r = self.step_ratio
        height = x / r if x <= r else (x - 1) / (r - 1)
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else t)
        lrs = [
            base + (top - base) * height * scale
            for base, top in zip(self.base_lrs, self.max_lrs, strict=True)
        ]
        if self.cycle_momentum:
            for group, base, top in zip(
                self.optimizer.param_groups, self.base_momentums, self.max_momentums, strict=True
            ):
                _set_momentum(group, top - (top - base) * height * scale, self.use_beta1)
        return lrs

    def state_dict(self) -> dict[str, Any]:
        fn = self._scale_fn_custom
        state = {
            k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_scale_fn_custom")
        }
        state = copy.deepcopy(state)
        keep = fn is not None and not isinstance(fn, types.FunctionType)
        state["_scale_fn_custom"] = copy.deepcopy(fn.__dict__) if keep else None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {k: v for k, v in state_dict.items() if k != "_scale_fn_custom"}
        self.__dict__.update(copy.deepcopy(state))
        saved = state_dict.get("_scale_fn_custom")
        if saved is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(copy.deepcopy(saved))


# --------------------------------------------------------------------------- combinations


def _check_members(owner: str, optimizer, schedulers: Sequence[LRScheduler]) -> None:
    for i, s in enumerate(schedulers):
        if not hasattr(s, "optimizer"):
            raise TypeError(f"{owner}: schedulers[{i}] has no `optimizer` attribute")
        if isinstance(s, ReduceLROnPlateau):
            raise ValueError(
                f"{owner} does not support ReduceLROnPlateau (its step needs a metric), "
                f"got one at schedulers[{i}]"
            )
        if s.optimizer is not optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, but "
                f"schedulers[{i}] ({type(s).__name__}) has another one"
            )


class _Composite(LRScheduler):
    """state_dict support for schedulers made of schedulers."""

    _schedulers: list[LRScheduler]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state = copy.deepcopy(state)
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {k: v for k, v in state_dict.items() if k != "_schedulers"}
        self.__dict__.update(copy.deepcopy(state))
        for s, saved in zip(self._schedulers, state_dict["_schedulers"], strict=True):
            s.load_state_dict(saved)


class SequentialLR(_Composite):
    """Run ``schedulers[i]`` from ``milestones[i-1]`` on; each starts from its closed form at 0.

    The usual warmup-then-decay::

        SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5), CosineAnnealingLR(opt, 95)], [5])
    """

    def __init__(
        self,
        optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch=-1,
    ) -> None:
        if len(schedulers) < 1:
            raise ValueError("schedulers must hold at least one scheduler, got none")
        _check_members("SequentialLR", optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"milestones must have len(schedulers) - 1 = {len(schedulers) - 1} entries, "
                f"got {len(milestones)}"
            )
        self._schedulers = list(schedulers)
        self._milestones = list(milestones)
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        # Each scheduler took its step 0 when built; undo those and start the first one.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self._undo_initial_steps(self)
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    @classmethod
    def _undo_initial_steps(cls, scheduler) -> None:
        if hasattr(scheduler, "_schedulers"):
            for s in scheduler._schedulers:
                cls._undo_initial_steps(s)
        elif hasattr(scheduler, "last_epoch"):
            scheduler.last_epoch -= 1

    def step(self) -> None:
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_Composite):
    """Step every scheduler, in order, at each step: chainable schedules multiply."""

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer=None) -> None:
        if len(schedulers) < 1:
            raise ValueError("schedulers must hold at least one scheduler, got none")
        if optimizer is None:
            optimizer = schedulers[0].optimizer
        _check_members("ChainedScheduler", optimizer, schedulers)
        self._schedulers = list(schedulers)
        self.optimizer = optimizer
        self._last_lr = _group_lrs(optimizer)

    def step(self) -> None:
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _group_lrs(self.optimizer)


# --------------------------------------------------------------------------- plateau


class ReduceLROnPlateau(LRScheduler):
    """Multiply the lr by ``factor`` when a metric stops improving for ``patience`` steps.

    ``step(metric)`` counts a step as an improvement when the metric beats
    ``best`` by the threshold: ``a < best * (1 - threshold)`` (min, rel),
    ``a < best - threshold`` (min, abs), ``a > best * (1 + threshold)`` (max,
    rel), ``a > best + threshold`` (max, abs). After more than ``patience``
    steps without improvement, ``lr = max(lr * factor, min_lr)`` unless that
    changes the lr by ``eps`` or less; then ``cooldown`` steps are not counted.
    """

    def __init__(
        self,
        optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        _check_optimizer(optimizer)
        if not isinstance(factor, (int, float)) or not factor < 1.0:
            raise ValueError(f"factor must be < 1.0, got {factor!r}")
        self.factor = factor
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            self.default_min_lr = None
            self.min_lrs = _per_group("min_lr", optimizer, min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _group_lrs(optimizer)
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.mode_worse = math.inf if mode == "min" else -math.inf

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return a < best * (1.0 - self.threshold)
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics: float, epoch: int | None = None) -> None:
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _group_lrs(self.optimizer)

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"the optimizer has {len(groups)} param groups but min_lrs has "
                    f"{len(self.min_lrs)} entries (a group was added): set `min_lrs`"
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs, strict=True):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)


# --------------------------------------------------------------------------- warmup helpers


def _linear_warmup_decay(t: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if t < num_warmup_steps:
        return float(t) / float(max(1, num_warmup_steps))
    return max(
        0.0, float(num_training_steps - t) / float(max(1, num_training_steps - num_warmup_steps))
    )


def _cosine_warmup_decay(
    t: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float
) -> float:
    if t < num_warmup_steps:
        return float(t) / float(max(1, num_warmup_steps))
    progress = float(t - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


_WARMUP_SCHEDULES = {"linear": _linear_warmup_decay, "cosine": _cosine_warmup_decay}


class _WarmupLambda:
    """``t -> schedule(t, **kwargs)``; an object, so that LambdaLR.state_dict saves it."""

    def __init__(self, schedule: str, **kwargs: Any) -> None:
        self.schedule = schedule
        self.kwargs = kwargs

    def __call__(self, t: int) -> float:
        return _WARMUP_SCHEDULES[self.schedule](t, **self.kwargs)


def get_linear_schedule_with_warmup(
    optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1
) -> LambdaLR:
    """Hugging Face's linear warmup then linear decay, as a LambdaLR.

    ``f(t) = t / max(1, W)`` for ``t < W``, then
    ``max(0, (N - t) / max(1, N - W))`` (W warmup steps, N training steps).
    """
    fn = _WarmupLambda(
        "linear",
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
    )
    return LambdaLR(optimizer, fn, last_epoch)


def get_cosine_schedule_with_warmup(
    optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
) -> LambdaLR:
    """Hugging Face's linear warmup then cosine decay, as a LambdaLR.

    ``f(t) = t / max(1, W)`` for ``t < W``, then with
    ``p = (t - W) / max(1, N - W)``: ``max(0, (1 + cos(2 pi num_cycles p)) / 2)``;
    the default half cycle decays from 1 to 0 at ``t = N``.
    """
    fn = _WarmupLambda(
        "cosine",
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
        num_cycles=num_cycles,
    )
    return LambdaLR(optimizer, fn, last_epoch)
