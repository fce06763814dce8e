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

Where PyTorch is lenient, these are strict, and every refusal is clean:

- Arguments are checked in the constructor before the optimizer is touched:
  Python or NumPy real scalars (converted once to ``int``/``float``), never
  bools, strings, ``None``, NaN or inf where a number is meant; flags are real
  bools. A refusal is a ValueError/TypeError naming the argument.
- Construction, ``step`` and ``load_state_dict`` are all-or-nothing: on any
  error the optimizer's groups and the scheduler's attributes are as before.
- Every lr (and momentum) written into a group is a finite Python float;
  a schedule that would write NaN/inf refuses the step instead.
"""

from __future__ import annotations

import copy
import math
import numbers
import types
import warnings
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import wraps
from typing import Any, ClassVar
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

# Step counts and other integers fit an int64 (and convert to float without overflow).
_MAX_INT = 2**63 - 1


def _show(value: Any) -> str:
    """``value`` for a message: its repr (shortened), with its type unless it is a number."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return text
    return f"{text} ({type(value).__name__})"


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return "" if low is None else f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> int | float:
    """``value`` as a Python int (integral input) or float, or a ValueError/TypeError.

    Python and NumPy real scalars qualify; bools, strings, None and arrays do
    not. NaN never does; inf only with ``finite=False``.
    """
    rng = _range_text(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number{' ' + rng if rng else ''}, got {_show(value)}"
        )
    v = int(value) if isinstance(value, numbers.Integral) else float(value)
    try:
        fv = float(v)
    except OverflowError:  # an int beyond the float range
        fv = math.inf if v > 0 else -math.inf
    if math.isnan(fv) or (finite and math.isinf(fv)):
        raise ValueError(
            f"{name} must be a finite number{' ' + rng if rng else ''}, got {value!r}"
        )
    if (low is not None and not (fv > low if low_open else fv >= low)) or (
        high is not None and not (fv < high if high_open else fv <= high)
    ):
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return v


def _integer(
    name: str, value: Any, *, low: int, expected: str | None = None, high: int | None = _MAX_INT
) -> int:
    """``value`` as a Python int ``>= low`` (Python or NumPy integers; not bools, not 2.0)."""
    if expected is None:
        expected = {1: "a positive integer", 0: "a non-negative integer"}.get(
            low, f"an integer >= {low}"
        )
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        v = int(value)
        if v < low:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        if high is not None and v > high:
            raise ValueError(f"{name} must be {expected} <= {high}, got {value!r}")
        return v
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    raise (ValueError if real else TypeError)(f"{name} must be {expected}, got {_show(value)}")


def _flag(name: str, value: Any) -> bool:
    """A real bool: True/False or a NumPy bool (not "False", 0, None)."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ in ("bool", "bool_") and type(value).__module__ == "numpy":
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {_show(value)}")


def _choice(name: str, value: Any, options: Sequence[str], suffix: str = "") -> str:
    listed = ", ".join(repr(o) for o in options[:-1]) + f" or {options[-1]!r}"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {listed}{suffix}, got {_show(value)}")
    if value not in options:
        raise ValueError(f"{name} must be {listed}{suffix}, got {value!r}")
    return str(value)


def _scalar(name: str, value: Any) -> float:
    """A finite real number returned by user code or given as a metric, as a float.

    Python/NumPy real scalars and 0-d real arrays of any backend (a loss
    tensor) qualify; bools, complex numbers, strings and None do not.
    """
    out = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        out = value
    elif getattr(value, "shape", None) == () and not isinstance(value, (str, bytes)):
        dtype = str(getattr(value, "dtype", ""))
        if "bool" not in dtype and "complex" not in dtype:
            try:
                out = value.item() if hasattr(value, "item") else float(value)
            except (TypeError, ValueError):
                out = None
            if isinstance(out, bool) or not isinstance(out, numbers.Real):
                out = None
    if out is None:
        raise TypeError(f"{name} must be a real number, got {_show(value)}")
    try:
        result = float(out)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return result


def _per_group(name: str, optimizer: Any, value: Any, **limits: Any) -> list:
    """One checked number per param group: a scalar is repeated, a list must match."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} must have one value per param group ({n}), got {len(value)} values"
            )
        return [_real(f"{name}[{i}]", v, **limits) for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        rng = _range_text(
            limits.get("low"),
            limits.get("high"),
            limits.get("low_open", False),
            limits.get("high_open", False),
        )
        raise TypeError(
            f"{name} must be a real number {rng} or a list of one per param group ({n}), "
            f"got {_show(value)}"
        )
    return [_real(name, value, **limits)] * n


def _group_list(name: str, value: Any, n: int, **limits: Any) -> list:
    """A saved per-group list: a list of ``n`` checked numbers."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of {n} numbers, got {_show(value)}")
    if len(value) != n:
        raise ValueError(
            f"{name} must have one value per param group ({n}), got {len(value)} values"
        )
    return [_real(f"{name}[{i}]", v, **limits) for i, v in enumerate(value)]


def _milestones(name: str, value: Any, *, increasing: bool) -> list[int]:
    expected = "an iterable of non-negative integers"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be {expected}, got {_show(value)}")
    items = list(value)
    out = [_integer(f"{name}[{i}]", m, low=0) for i, m in enumerate(items)]
    if increasing and out != sorted(out):
        raise ValueError(f"{name} must be in increasing order, got {out}")
    return out


def _check_optimizer(optimizer: Any) -> None:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise TypeError(
            f"optimizer must be an Optimizer (an object with a param_groups list), "
            f"got {type(optimizer).__name__}"
        )
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise TypeError(f"optimizer.param_groups[{i}] must be a dict, got {_show(group)}")


def _group_value(i: int, key: str, group: dict) -> float:
    """``group[key]`` (an lr kept in the group) as a finite float >= 0."""
    if key not in group:
        raise ValueError(
            f"param_groups[{i}] has no {key!r} (a scheduler that keeps values in the groups "
            "needs the optimizer's state dict saved with it)"
        )
    value = _scalar(f"param_groups[{i}][{key!r}]", group[key])  # a 0-d tensor lr is fine
    if value < 0:
        raise ValueError(f"param_groups[{i}][{key!r}] must be >= 0, got {group[key]!r}")
    return value


def _group_lrs(optimizer: Any) -> list[float]:
    return [_group_value(i, "lr", g) for i, g in enumerate(optimizer.param_groups)]


def _pow(base: float, exponent: float) -> float:
    """``base ** exponent``, inf where Python raises OverflowError (the write refuses it)."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


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


_MISSING = object()


class _Undo:
    """All-or-nothing: on an exception, restore the optimizer's groups and the schedulers.

    Snapshots each group dict and each scheduler's ``__dict__`` (shallow: the
    schedulers replace values, they never mutate them) and the optimizer's own
    ``step`` attribute (the wrapper above).
    """

    def __init__(self, optimizer: Any, schedulers: Iterable[Any] = ()) -> None:
        self.groups = [(g, dict(g)) for g in optimizer.param_groups]
        self.objects = [(s, dict(s.__dict__)) for s in schedulers]
        self.attrs = getattr(optimizer, "__dict__", None)
        self.step = _MISSING if self.attrs is None else self.attrs.get("step", _MISSING)

    def __enter__(self) -> _Undo:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            return False
        for group, saved in self.groups:
            group.clear()
            group.update(saved)
        for obj, saved in self.objects:
            obj.__dict__.clear()
            obj.__dict__.update(saved)
        if self.attrs is not None:
            if self.step is _MISSING:
                self.attrs.pop("step", None)
            else:
                self.attrs["step"] = self.step
        return False


def _nested(scheduler: Any) -> list:
    """``scheduler`` and every scheduler inside it (SequentialLR, ChainedScheduler)."""
    out = [scheduler]
    for s in getattr(scheduler, "_schedulers", ()):
        out.extend(_nested(s))
    return out


# --------------------------------------------------------------------------- state checks

# A state check takes (scheduler, name, value) and returns the value to load.
Check = Callable[[Any, str, Any], Any]
Spec = dict[str, Check | None]  # None: the key is not an attribute of this class


def _s_int(low: int, expected: str | None = None) -> Check:
    return lambda s, name, v: _integer(name, v, low=low, expected=expected)


def _s_real(**limits: Any) -> Check:
    return lambda s, name, v: _real(name, v, **limits)


def _s_flag(s: Any, name: str, v: Any) -> bool:
    return _flag(name, v)


def _s_choice(*options: str) -> Check:
    return lambda s, name, v: _choice(name, v, options)


def _s_groups(**limits: Any) -> Check:
    return lambda s, name, v: _group_list(name, v, len(s.optimizer.param_groups), **limits)


def _s_dict_or_none(s: Any, name: str, v: Any) -> dict | None:
    if v is None:
        return None
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        raise TypeError(f"{name} must be None or a dict with str keys, got {_show(v)}")
    return copy.deepcopy(dict(v))


_GAMMA = _s_real(low=0, low_open=True)
_LR = _s_real(low=0)


# --------------------------------------------------------------------------- base class


class LRScheduler:
    """Base class: owns ``base_lrs``, ``last_epoch`` and writes lrs into the groups.

    A subclass checks all its arguments, then calls ``super().__init__``; it
    implements :meth:`get_lr` (the lrs for step ``self.last_epoch``) and, where
    the schedule has one, ``_get_closed_form_lr``. What it writes into the
    groups of a fresh run goes in ``_prepare`` (run by the base, undone with
    everything else if construction fails). ``_STATE`` lists the checks
    ``load_state_dict`` applies to the subclass's own attributes.
    """

    _get_lr_called_within_step = False
    _is_initial = False

    # key -> check; _OPTIONAL keys may be absent from a state dict.
    _STATE: ClassVar[Spec] = {
        "last_epoch": _s_int(-1),
        "base_lrs": _s_groups(low=0),
        "_last_lr": _s_groups(),
        "_step_count": _s_int(0),
        "_is_initial": _s_flag,
        "_get_lr_called_within_step": _s_flag,
    }
    _OPTIONAL: frozenset[str] = frozenset(
        {"_last_lr", "_step_count", "_is_initial", "_get_lr_called_within_step"}
    )

    def __init__(
        self, optimizer: Any, last_epoch: int = -1, *, _prepare: Callable[[], None] | None = None
    ) -> None:
        _check_optimizer(optimizer)
        last_epoch = _integer("last_epoch", last_epoch, low=-1)
        with _Undo(optimizer):
            self.optimizer = optimizer
            if last_epoch == -1 and _prepare is not None:
                _prepare()
            if last_epoch == -1:
                for i, group in enumerate(optimizer.param_groups):
                    if "initial_lr" not in group:
                        group["initial_lr"] = _group_value(i, "lr", group)
            else:
                for i, group in enumerate(optimizer.param_groups):
                    if "initial_lr" not in group:
                        raise KeyError(
                            f"param 'initial_lr' is not specified in param_groups[{i}] when "
                            f"resuming scheduler with last_epoch={last_epoch}: load the "
                            "optimizer's state dict first, or use last_epoch=-1 for a fresh run"
                        )
            self.base_lrs = [
                _group_value(i, "initial_lr", g) for i, g in enumerate(optimizer.param_groups)
            ]
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

    # ----------------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer (a deep copy)."""
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "optimizer"})

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict saved by the same kind of scheduler: all or nothing.

        Every entry is checked (kinds, ranges, one value per param group)
        before anything is loaded; an entry this scheduler does not have, or a
        missing one, is refused (a state dict of another scheduler class).
        """
        self._stage(state_dict, "state_dict")()

    def _stage(self, state_dict: Any, where: str) -> Callable[[], None]:
        """Check ``state_dict``; return the function that loads it (which cannot fail)."""
        staged = self._checked_state(state_dict, where)

        def commit() -> None:
            self.__dict__.update(staged)

        return commit

    @classmethod
    def _state_spec(cls) -> tuple[dict[str, Check], frozenset[str]]:
        spec: dict[str, Check | None] = {}
        optional: set[str] = set()
        for klass in reversed(cls.__mro__):
            spec.update(vars(klass).get("_STATE", {}))
            optional |= vars(klass).get("_OPTIONAL", frozenset())
        return {k: c for k, c in spec.items() if c is not None}, frozenset(optional)

    def _checked_state(self, state_dict: Any, where: str) -> dict[str, Any]:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{where} must be a dict, got {_show(state_dict)}")
        name = type(self).__name__
        spec, optional = self._state_spec()
        known = set(spec) | (set(self.__dict__) - {"optimizer"})
        unknown = [k for k in state_dict if k not in known]
        if unknown:
            raise ValueError(
                f"{where} has entries that {name} does not have: "
                f"{', '.join(map(repr, unknown))} (is it the state dict of another scheduler?)"
            )
        missing = [k for k in spec if k not in state_dict and k not in optional]
        if missing:
            raise ValueError(
                f"{where} lacks {', '.join(map(repr, missing))}, which {name} needs "
                "(is it the state dict of another scheduler?)"
            )
        staged = {}
        for key, value in state_dict.items():
            check = spec.get(key)
            staged[key] = (
                check(self, f"{where}[{key!r}]", value) if check else copy.deepcopy(value)
            )
        self._check_staged(staged, where)
        return staged

    def _check_staged(self, staged: dict[str, Any], where: str) -> None:
        """Checks across entries (a subclass's); ``staged`` holds the checked values."""

    # ----------------------------------------------------------------- stepping

    def get_last_lr(self) -> list[float]:
        """The lrs written by the last step, one per param group."""
        return list(self._last_lr)

    def get_lr(self) -> list[float]:
        """The lrs of step ``last_epoch`` (called by :meth:`step`; use get_last_lr)."""
        raise NotImplementedError

    def _get_lr_and_momenta(self) -> tuple[list[float], list[float] | None]:
        """The lrs of step ``last_epoch``, and the momenta where the schedule cycles them."""
        return self.get_lr(), None

    def step(self, epoch: int | None = None) -> None:
        """Advance one step (call after ``optimizer.step()``).

        ``epoch`` is PyTorch's deprecated form: it sets ``last_epoch`` and uses
        the closed form where there is one, with a deprecation warning. A step
        that fails (a schedule value that is not finite) changes nothing.
        """
        if epoch is not None:
            epoch = _integer("epoch", epoch, low=0)
        with _Undo(self.optimizer, [self]):
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
            closed_form = None
            if epoch is None:
                self.last_epoch += 1
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
            if closed_form is not None:
                values, momenta = closed_form(), None
            else:
                values, momenta = self._get_lr_and_momenta()
        finally:
            self._get_lr_called_within_step = False
        self._write(values, momenta)

    def _write(self, values: Iterable[float], momenta: Iterable[float] | None = None) -> None:
        """Check every value, then write them all (a refused step writes nothing)."""
        groups = self.optimizer.param_groups
        values = list(values)
        if len(values) != len(groups):
            raise ValueError(
                f"{type(self).__name__} computed {len(values)} lrs for {len(groups)} param groups"
            )
        lrs = [self._checked(f"lr for param_groups[{i}]", v) for i, v in enumerate(values)]
        ms = None
        if momenta is not None:
            high = 1.0 if self.use_beta1 else None  # Adam's beta1 < 1
            ms = [
                self._checked(f"momentum for param_groups[{i}]", m, high)
                for i, m in enumerate(momenta)
            ]
        for group, lr in zip(groups, lrs, strict=True):
            group["lr"] = lr
        if ms is not None:
            for group, m in zip(groups, ms, strict=True):
                _set_momentum(group, m, self.use_beta1)
        self._last_lr = [g["lr"] for g in groups]

    def _checked(self, what: str, value: Any, high: float | None = None) -> float:
        """A value to write: a finite float >= 0 (and < ``high``), as the optimizers accept."""
        try:
            v = _scalar(what, value)
        except (TypeError, ValueError) as err:
            kind = type(err)
        else:
            if v >= 0 and (high is None or v < high):
                return v
            kind = ValueError
        rng = ">= 0" if high is None else f"in [0, {high})"
        raise kind(
            f"{type(self).__name__} computed {what} = {value!r} at step {self.last_epoch}; "
            f"a scheduler writes only finite numbers {rng} (check its arguments and the "
            "groups' values)"
        )

    def _warn_outside_step(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn(_GET_LR_WARNING, UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- lambdas


def _s_lambdas(s: Any, name: str, value: Any) -> list:
    """Saved ``lr_lambdas``: one entry per function, None or the object's ``__dict__``."""
    n = len(s.lr_lambdas)
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(
            f"{name} must be a list of {n} entries (None or dicts), got {_show(value)}"
        )
    out = []
    for i, (fn, saved) in enumerate(zip(s.lr_lambdas, value, strict=True)):
        saved = _s_dict_or_none(s, f"{name}[{i}]", saved)
        if saved is not None and isinstance(fn, _WarmupLambda):
            saved = _WarmupLambda.checked_state(f"{name}[{i}]", saved)
        out.append(saved)
    return out


class _LambdaState:
    """state_dict support for user callables: functions are dropped, objects keep __dict__."""

    lr_lambdas: list[Callable[[int], float]]
    _STATE: ClassVar[Spec] = {"lr_lambdas": _s_lambdas}

    def _set_lambdas(self, optimizer: Any, lr_lambda) -> None:
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(
                    f"lr_lambda must have one function per param group ({n}), got {len(lr_lambda)}"
                )
            for i, fn in enumerate(lr_lambda):
                if not callable(fn):
                    raise TypeError(f"lr_lambda[{i}] must be callable, got {type(fn).__name__}")
            lambdas = list(lr_lambda)
        elif callable(lr_lambda):
            lambdas = [lr_lambda] * n
        else:
            raise TypeError(
                f"lr_lambda must be callable, got {type(lr_lambda).__name__} "
                f"(a function of the step, or a list of {n}, one per param group)"
            )
        self.lr_lambdas = lambdas

    def _factors(self) -> list[float]:
        """``lr_lambdas[i](t)`` for each group, each a finite real number."""
        t = self.last_epoch
        out = []
        for i, fn in enumerate(self.lr_lambdas):
            value = fn(t)
            _scalar(f"lr_lambda[{i}]({t})", value)
            out.append(value)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state = copy.deepcopy(state)
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else copy.deepcopy(fn.__dict__)
            for fn in self.lr_lambdas
        ]
        return state

    def _stage(self, state_dict: Any, where: str) -> Callable[[], None]:
        staged = self._checked_state(state_dict, where)
        saved = staged.pop("lr_lambdas")

        def commit() -> None:
            self.__dict__.update(staged)
            for fn, entry in zip(self.lr_lambdas, saved, strict=True):
                if entry is not None:
                    fn.__dict__.update(entry)

        return commit


class LambdaLR(_LambdaState, LRScheduler):
    """``lr = base_lr * lr_lambda(t)``; one function, or one per param group.

    Each function must return a finite real number (a Python/NumPy scalar or a
    0-d array); anything else refuses the step with the function named.
    """

    def __init__(self, optimizer: Any, lr_lambda, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self._set_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        return [base * f for f, base in zip(self._factors(), self.base_lrs, strict=True)]


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
        return [lr * f for f, lr in zip(self._factors(), lrs, strict=True)]


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
    _STATE: ClassVar[Spec] = {"step_size": _s_int(1), "gamma": _GAMMA}

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch=-1) -> None:
        self.step_size = _integer("step_size", step_size, low=1)
        self.gamma = _real("gamma", gamma, low=0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return _schedules.step_decay(1.0, self.step_size, self.gamma)(t)

    def _ratio(self, t):
        return self.gamma if t % self.step_size == 0 else 1.0


def _s_milestones(s: Any, name: str, v: Any) -> list[int]:
    return sorted(_milestones(name, v, increasing=False))


class MultiStepLR(_ChainableLR):
    """Decay by ``gamma`` at each milestone: ``f(t) = gamma ** #{m in milestones : m <= t}``.

    A milestone listed twice decays twice.
    """

    _ratio_on_resume = True
    _STATE: ClassVar[Spec] = {"milestones": _s_milestones, "gamma": _GAMMA}

    def __init__(self, optimizer, milestones: Iterable[int], gamma: float = 0.1, last_epoch=-1):
        self.milestones = sorted(_milestones("milestones", milestones, increasing=False))
        self.gamma = _real("gamma", gamma, low=0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return _schedules.multistep(1.0, self.milestones, self.gamma)(t)

    def _ratio(self, t):
        return _pow(self.gamma, self.milestones.count(t)) if t in self.milestones else 1.0


class ConstantLR(_ChainableLR):
    """``f(t) = factor`` for ``t < total_iters``, then 1 (a constant warmup)."""

    _ratio_on_resume = True
    _STATE: ClassVar[Spec] = {"factor": _s_real(low=0.0, high=1.0), "total_iters": _s_int(1)}

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch=-1):
        self.factor = _real("factor", factor, low=0.0, high=1.0)
        self.total_iters = _integer("total_iters", total_iters, low=1)
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

    _STATE: ClassVar[Spec] = {
        "start_factor": _s_real(low=0.0, high=1.0, low_open=True),
        "end_factor": _s_real(low=0.0, high=1.0),
        "total_iters": _s_int(1),
    }

    def __init__(
        self,
        optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        self.start_factor = _real("start_factor", start_factor, low=0.0, high=1.0, low_open=True)
        self.end_factor = _real("end_factor", end_factor, low=0.0, high=1.0)
        self.total_iters = _integer("total_iters", total_iters, low=1)
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return _schedules.linear(self.start_factor, self.end_factor, self.total_iters)(t)

    def _ratio(self, t):
        if t > self.total_iters:
            return 1.0
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        # f(t) / f(t-1) >= 0; PyTorch's form rounds to -2e-16 on the way to end_factor=0.
        return max(0.0, 1.0 + (e - s) / (n * s + (t - 1) * (e - s)))


class ExponentialLR(_ChainableLR):
    """``f(t) = gamma ** t``; with ``gamma > 1`` (an lr range test) the step that would
    overflow to inf is refused."""

    _STATE: ClassVar[Spec] = {"gamma": _GAMMA}

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _real("gamma", gamma, low=0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return _schedules.exponential(1.0, self.gamma)(t)

    def _ratio(self, t):
        return self.gamma


class PolynomialLR(_ChainableLR):
    """``f(t) = (1 - min(t, total_iters) / total_iters) ** power``: reaches 0 at total_iters.

    ``power >= 0`` (a negative power divides by zero at ``total_iters``).
    """

    _STATE: ClassVar[Spec] = {"total_iters": _s_int(1), "power": _s_real(low=0)}

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch=-1):
        self.total_iters = _integer("total_iters", total_iters, low=1)
        self.power = _real("power", power, low=0)
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return _schedules.polynomial(1.0, 0.0, self.power, self.total_iters)(t)

    def _ratio(self, t):
        if t > self.total_iters:
            return 1.0
        n = self.total_iters
        return _pow((1.0 - t / n) / (1.0 - (t - 1) / n), self.power)


def _cos_pi(t: float, T: float) -> float:
    """``cos(pi * t / T)``; a T_max so small that the angle overflows is named."""
    angle = math.pi * t / T
    if not math.isfinite(angle):
        raise ValueError(f"T_max = {T!r} is too small: pi * {t} / T_max overflows")
    return math.cos(angle)


class CosineAnnealingLR(_ChainableLR):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (SGDR, no restarts).

    Past ``T_max`` the cosine goes on: the lr rises back to ``base_lr`` at
    ``2 * T_max`` (PyTorch's behaviour). Applied in PyTorch's chainable form:
    ``lr_t = eta_min + (lr_{t-1} - eta_min) * g(t) / g(t-1)`` with
    ``g(t) = 1 + cos(pi t / T_max)``, and additively where ``g(t-1) = 0``.
    """

    _STATE: ClassVar[Spec] = {"T_max": _s_real(low=0, low_open=True), "eta_min": _LR}

    def __init__(self, optimizer, T_max: float, eta_min: float = 0.0, last_epoch=-1) -> None:
        self.T_max = _real("T_max", T_max, low=0, low_open=True)
        self.eta_min = _real("eta_min", eta_min, low=0)
        super().__init__(optimizer, last_epoch)

    def _factor(self, t):
        return _schedules.cosine_annealing(1.0, 0.0, self.T_max)(t)

    def get_lr(self):
        self._warn_outside_step()
        lrs = _group_lrs(self.optimizer)
        if self._is_initial:
            return lrs
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if (t - 1 - T) % (2 * T) == 0:  # g(t-1) == 0: the minimum of the cosine
            rise = (1 - _cos_pi(1, T)) / 2
            return [
                lr + (base - eta_min) * rise for lr, base in zip(lrs, self.base_lrs, strict=True)
            ]
        ratio = (1 + _cos_pi(t, T)) / (1 + _cos_pi(t - 1, T))
        return [ratio * (lr - eta_min) + eta_min for lr in lrs]

    def _get_closed_form_lr(self):
        f = self._factor(self.last_epoch)
        return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]


# --------------------------------------------------------------------------- closed forms


def _restart_position(epoch: float, T_0: int, T_mult: int) -> tuple[float, int]:
    """(T_cur, T_i): the position of ``epoch`` in its cycle, and that cycle's length."""
    if T_mult == 1:
        return epoch % T_0, T_0
    start, length = 0, T_0
    while epoch >= start + length:  # cycles grow geometrically: few iterations
        start += length
        length *= T_mult
    return epoch - start, length


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing restarted every cycle; cycle ``i`` lasts ``T_0 * T_mult**i`` steps.

    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``
    (Loshchilov & Hutter, SGDR). ``step(epoch)`` accepts fractional epochs
    without a warning, as in PyTorch.
    """

    _STATE: ClassVar[Spec] = {
        "T_0": _s_int(1),
        "T_i": lambda s, name, v: _integer(name, v, low=1, high=None),  # grows past 2**63
        "T_mult": _s_int(1, "an integer >= 1"),
        "eta_min": _LR,
        "T_cur": _s_real(low=-1),
    }

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch=-1):
        self.T_0 = _integer("T_0", T_0, low=1)
        self.T_i = self.T_0
        self.T_mult = _integer("T_mult", T_mult, low=1, expected="an integer >= 1")
        self.eta_min = _real("eta_min", eta_min, low=0)
        self.T_cur = _integer("last_epoch", last_epoch, low=-1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_outside_step()
        f = (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
        return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """Advance one step, or go to ``epoch`` (a finite number >= 0, fractions allowed)."""
        epoch = self.last_epoch + 1 if epoch is None else _real("epoch", epoch, low=0)
        with _Undo(self.optimizer, [self]):
            self.T_cur, self.T_i = _restart_position(epoch, self.T_0, self.T_mult)
            self.last_epoch = math.floor(epoch)
            self._get_lr_called_within_step = True
            try:
                values = self.get_lr()
            finally:
                self._get_lr_called_within_step = False
            self._write(values)


_PHASE_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def _s_phases(s: Any, name: str, value: Any) -> list:
    expected = "a list of 2 or 3 phases [end_step, start_lr, end_lr, start_m, end_m]"
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3):
        raise ValueError(f"{name} must be {expected}, got {_show(value)}")
    out = []
    for i, phase in enumerate(value):
        if not isinstance(phase, (list, tuple)) or len(phase) != 5:
            raise ValueError(f"{name}[{i}] must be [end_step, 4 group keys], got {_show(phase)}")
        end = _real(f"{name}[{i}][0]", phase[0], low=-1)
        keys = [_choice(f"{name}[{i}][{j}]", k, _PHASE_KEYS) for j, k in enumerate(phase[1:], 1)]
        out.append([end, *keys])
    return out


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

    Two edges PyTorch gets wrong: a phase of zero length (``pct_start * T == 1``,
    or ``pct_start = 1``) is at its end value (PyTorch divides by zero), and
    ``pct`` stops at 1, so step ``T`` (one past the last phase, which PyTorch
    allows) holds ``min_lr`` instead of extrapolating (a negative lr when linear).
    With ``three_phase`` the first two phases must fit: ``2*pct_start*T - 2 <= T - 1``.
    """

    _STATE: ClassVar[Spec] = {
        "total_steps": _s_int(1),
        "anneal_strategy": _s_choice("cos", "linear"),
        "_schedule_phases": _s_phases,
        "cycle_momentum": _s_flag,
        "use_beta1": _s_flag,
    }
    _OPTIONAL = frozenset({"use_beta1"})

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
        if epochs is not None:
            epochs = _integer("epochs", epochs, low=1)
        if steps_per_epoch is not None:
            steps_per_epoch = _integer("steps_per_epoch", steps_per_epoch, low=1)
        if total_steps is not None:
            self.total_steps = _integer("total_steps", total_steps, low=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("give either total_steps or both epochs and steps_per_epoch")
        T = self.total_steps
        pct_start = _real("pct_start", pct_start, low=0.0, high=1.0)
        three_phase = _flag("three_phase", three_phase)
        if three_phase and 2 * pct_start * T - 2 > T - 1:
            raise ValueError(
                f"pct_start must be <= (total_steps + 1) / (2 * total_steps) = "
                f"{(T + 1) / (2 * T)!r} with three_phase=True (the first two phases, "
                f"2 * pct_start * total_steps - 2 steps, must fit in total_steps), "
                f"got {pct_start!r}"
            )
        self.anneal_strategy = _choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        max_lrs = _per_group("max_lr", optimizer, max_lr, low=0)
        div_factor = _real("div_factor", div_factor, low=0, low_open=True)
        final_div_factor = _real("final_div_factor", final_div_factor, low=0, low_open=True)
        group_lrs = []
        for i, lr in enumerate(max_lrs):
            initial = lr / div_factor
            values = {"initial_lr": initial, "max_lr": lr, "min_lr": initial / final_div_factor}
            if not math.isfinite(initial):
                raise ValueError(
                    f"max_lr / div_factor overflows for param group {i}: {lr!r} / {div_factor!r}"
                )
            group_lrs.append(values)
        self.cycle_momentum = _flag("cycle_momentum", cycle_momentum)
        momenta = _momenta(optimizer, self.cycle_momentum, base_momentum, max_momentum)
        if self.cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer)
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

        def prepare() -> None:
            for group, values in zip(optimizer.param_groups, group_lrs, strict=True):
                group.update(values)
            if self.cycle_momentum:
                _write_momenta(optimizer, *momenta, self.use_beta1)

        super().__init__(optimizer, last_epoch, _prepare=prepare)

    def _check_staged(self, staged: dict[str, Any], where: str) -> None:
        phases, T = staged["_schedule_phases"], staged["total_steps"]
        if phases[-1][0] != T - 1 or phases[-2][0] > T - 1:
            raise ValueError(
                f"{where}['_schedule_phases'] does not fit total_steps = {T}: the last phase "
                f"must end at {T - 1} and start no later, got {phases}"
            )
        _check_momentum_state(self, staged, where, ("use_beta1",))

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _phase(self, t: int) -> tuple[list, float]:
        """The phase of step ``t`` and the fraction ``pct`` of it done (0 to 1)."""
        start = 0.0
        last = len(self._schedule_phases) - 1
        for i, phase in enumerate(self._schedule_phases):
            end = phase[0]
            if t <= end or i == last:
                pct = 1.0 if end <= start else min(1.0, (t - start) / (end - start))
                return phase, pct
            start = end
        raise AssertionError("unreachable: the last phase always matches")

    def get_lr(self):
        self._warn_outside_step()
        return self._get_lr_and_momenta()[0]

    def _get_lr_and_momenta(self):
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(
                f"Tried to step {t} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        (_, lr0, lr1, m0, m1), pct = self._phase(t)
        lrs, momenta = [], []
        for i, group in enumerate(self.optimizer.param_groups):
            lrs.append(self._anneal(_group_value(i, lr0, group), _group_value(i, lr1, group), pct))
            if self.cycle_momentum:
                start, end = _group_value(i, m0, group), _group_value(i, m1, group)
                momenta.append(self._anneal(start, end, pct))
        return lrs, (momenta if self.cycle_momentum else None)


def _momentum_key(optimizer) -> bool:
    """True when the optimizer's momentum is Adam's beta1, False for SGD's momentum."""
    defaults = getattr(optimizer, "defaults", {})
    if not isinstance(defaults, Mapping) or (
        "momentum" not in defaults and "betas" not in defaults
    ):
        raise ValueError(
            "cycle_momentum=True needs an optimizer with 'momentum' or 'betas' in its "
            "defaults; pass cycle_momentum=False"
        )
    return "betas" in defaults


def _momenta(optimizer, cycle: bool, base_momentum, max_momentum) -> tuple[list, list]:
    """Checked (base, max) momenta per group: >= 0, and < 1 where they are Adam's beta1."""
    high = {"high": 1.0, "high_open": True} if cycle and _momentum_key(optimizer) else {}
    bases = _per_group("base_momentum", optimizer, base_momentum, low=0.0, **high)
    maxes = _per_group("max_momentum", optimizer, max_momentum, low=0.0, **high)
    return bases, maxes


def _check_momentum_state(s, staged: dict, where: str, keys: tuple[str, ...]) -> None:
    """A state that cycles momentum has its keys and matches this optimizer's momentum."""
    if not staged["cycle_momentum"]:
        return
    for key in keys:
        if key not in staged and key not in vars(s):
            raise ValueError(f"{where} has cycle_momentum=True but lacks {key!r}")
    try:
        use_beta1 = _momentum_key(s.optimizer)
    except ValueError as err:
        raise ValueError(f"{where} has cycle_momentum=True: {err}") from None
    if staged.get("use_beta1", getattr(s, "use_beta1", None)) is not use_beta1:
        raise ValueError(
            f"{where}['use_beta1'] must be {use_beta1} for this optimizer (its momentum is "
            f"{'betas[0]' if use_beta1 else 'momentum'})"
        )
    if use_beta1:
        for key in ("base_momentums", "max_momentums"):
            if any(m >= 1 for m in staged.get(key, ())):
                raise ValueError(f"{where}[{key!r}] must be < 1 (Adam's beta1), got {staged[key]}")


def _write_momenta(optimizer, bases, maxes, use_beta1: bool) -> None:
    for group, b, m in zip(optimizer.param_groups, bases, maxes, strict=True):
        _set_momentum(group, m, use_beta1)
        group["max_momentum"] = m
        group["base_momentum"] = b


def _s_mode(s: Any, name: str, v: Any) -> Any:
    if getattr(s, "_scale_fn_custom", None) is None:
        return _choice(name, v, ("triangular", "triangular2", "exp_range"))
    return copy.deepcopy(v)  # unused with a custom scale_fn, as in PyTorch


class CyclicLR(LRScheduler):
    """Cyclical learning rates (Smith, 2017) between ``base_lr`` and ``max_lr``.

    With ``c = floor(1 + t / (up + down))`` and ``x = 1 + t / (up + down) - c``,
    the triangle is ``h = x / r`` for ``x <= r`` else ``(x - 1) / (r - 1)``
    (``r = up / (up + down)``), and ``lr = base_lr + (max_lr - base_lr) * h * s``
    with ``s = 1`` (triangular), ``1 / 2 ** (c - 1)`` (triangular2),
    ``gamma ** t`` (exp_range) or ``scale_fn(c or t)``. Momentum moves
    inversely, from ``max_momentum`` down to ``base_momentum``. The step sizes
    are numbers of steps (>= 1); ``scale_fn`` must return finite numbers.
    """

    _STATE: ClassVar[Spec] = {
        "max_lrs": _s_groups(low=0),
        "total_size": _s_real(low=2),
        "step_ratio": _s_real(low=0.0, high=1.0, low_open=True, high_open=True),
        "mode": _s_mode,
        "gamma": _GAMMA,
        "scale_mode": _s_choice("cycle", "iterations"),
        "cycle_momentum": _s_flag,
        "use_beta1": _s_flag,
        "base_momentums": _s_groups(low=0),
        "max_momentums": _s_groups(low=0),
        "_scale_fn_custom": _s_dict_or_none,
    }
    _OPTIONAL = frozenset({"use_beta1", "base_momentums", "max_momentums"})

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
        base_lrs = _per_group("base_lr", optimizer, base_lr, low=0)
        self.max_lrs = _per_group("max_lr", optimizer, max_lr, low=0)
        up = float(_real("step_size_up", step_size_up, low=1))
        down = (
            up if step_size_down is None else float(_real("step_size_down", step_size_down, low=1))
        )
        self.total_size = up + down
        if not math.isfinite(self.total_size):
            raise ValueError(
                f"step_size_up + step_size_down must be finite, got {up!r} + {down!r}"
            )
        self.step_ratio = up / self.total_size
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be None or callable, got {_show(scale_fn)}")
        if scale_fn is None:
            mode = _choice(
                "mode", mode, ("triangular", "triangular2", "exp_range"), " when scale_fn is None"
            )
        self.mode = mode
        self.gamma = _real("gamma", gamma, low=0, low_open=True)
        self._scale_fn_custom = scale_fn
        self.scale_mode = _choice("scale_mode", scale_mode, ("cycle", "iterations"))
        if scale_fn is None:
            self.scale_mode = "iterations" if mode == "exp_range" else "cycle"
        self.cycle_momentum = _flag("cycle_momentum", cycle_momentum)
        momenta = _momenta(optimizer, self.cycle_momentum, base_momentum, max_momentum)
        if self.cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer)
            self.base_momentums, self.max_momentums = momenta

        def prepare() -> None:
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr
            if self.cycle_momentum:
                _write_momenta(optimizer, *momenta, self.use_beta1)

        super().__init__(optimizer, last_epoch, _prepare=prepare)
        self.base_lrs = base_lrs

    def _check_staged(self, staged: dict[str, Any], where: str) -> None:
        _check_momentum_state(
            self, staged, where, ("use_beta1", "base_momentums", "max_momentums")
        )

    def scale_fn(self, x: float) -> float:
        if self._scale_fn_custom is not None:
            value = self._scale_fn_custom(x)
            _scalar(f"scale_fn({x})", value)
            return value
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / _pow(2.0, x - 1)
        return _pow(self.gamma, x)

    def get_lr(self):
        self._warn_outside_step()
        return self._get_lr_and_momenta()[0]

    def _get_lr_and_momenta(self):
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
        if not self.cycle_momentum:
            return lrs, None
        momenta = [
            top - (top - base) * height * scale
            for base, top in zip(self.base_momentums, self.max_momentums, strict=True)
        ]
        return lrs, momenta

    def state_dict(self) -> dict[str, Any]:
        fn = self._scale_fn_custom
        state = {
            k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_scale_fn_custom")
        }
        state = copy.deepcopy(state)
        keep = fn is not None and not isinstance(fn, types.FunctionType)
        state["_scale_fn_custom"] = copy.deepcopy(fn.__dict__) if keep else None
        return state

    def _stage(self, state_dict: Any, where: str) -> Callable[[], None]:
        staged = self._checked_state(state_dict, where)
        saved = staged.pop("_scale_fn_custom", None)

        def commit() -> None:
            self.__dict__.update(staged)
            if saved is not None and self._scale_fn_custom is not None:
                self._scale_fn_custom.__dict__.update(saved)

        return commit


# --------------------------------------------------------------------------- combinations


def _scheduler_list(owner: str, optimizer, schedulers: Any) -> list[LRScheduler]:
    if isinstance(schedulers, (str, bytes, Mapping)) or not isinstance(schedulers, Iterable):
        raise TypeError(f"schedulers must be a list of LRSchedulers, got {_show(schedulers)}")
    schedulers = list(schedulers)
    if len(schedulers) < 1:
        raise ValueError("schedulers must hold at least one scheduler, got none")
    for i, s in enumerate(schedulers):
        if not isinstance(s, LRScheduler):
            raise TypeError(f"{owner}: schedulers[{i}] must be an LRScheduler, got {_show(s)}")
        if isinstance(s, ReduceLROnPlateau):
            raise ValueError(
                f"{owner} does not support ReduceLROnPlateau (its step needs a metric), "
                f"got one at schedulers[{i}]"
            )
    if optimizer is None:
        optimizer = schedulers[0].optimizer
    for i, s in enumerate(schedulers):
        if s.optimizer is not optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, but "
                f"schedulers[{i}] ({type(s).__name__}) has another one"
            )
    return schedulers


def _s_children(s: Any, name: str, v: Any) -> list:
    n = len(s._schedulers)
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ValueError(f"{name} must be a list of {n} state dicts, got {_show(v)}")
    return list(v)  # each is checked by its scheduler


class _Composite(LRScheduler):
    """state_dict support for schedulers made of schedulers."""

    _schedulers: list[LRScheduler]
    _STATE: ClassVar[Spec] = {"base_lrs": None, "_step_count": None, "_schedulers": _s_children}

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state = copy.deepcopy(state)
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def _stage(self, state_dict: Any, where: str) -> Callable[[], None]:
        staged = self._checked_state(state_dict, where)
        saved = staged.pop("_schedulers")
        commits = [
            s._stage(sd, f"{where}['_schedulers'][{i}]")
            for i, (s, sd) in enumerate(zip(self._schedulers, saved, strict=True))
        ]

        def commit() -> None:
            self.__dict__.update(staged)
            for load in commits:
                load()

        return commit

    def _undo(self) -> _Undo:
        return _Undo(self.optimizer, _nested(self))


def _s_sequential_milestones(s: Any, name: str, v: Any) -> list[int]:
    out = _milestones(name, v, increasing=True)
    if len(out) != len(s._schedulers) - 1:
        raise ValueError(f"{name} must have {len(s._schedulers) - 1} entries, got {len(out)}")
    return out


class SequentialLR(_Composite):
    """Run ``schedulers[i]`` from ``milestones[i-1]`` on; each starts from its closed form at 0.

    ``milestones`` are non-negative integers in increasing order. The usual
    warmup-then-decay::

        SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5), CosineAnnealingLR(opt, 95)], [5])
    """

    _STATE: ClassVar[Spec] = {"_milestones": _s_sequential_milestones}

    def __init__(
        self,
        optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch=-1,
    ) -> None:
        _check_optimizer(optimizer)
        schedulers = _scheduler_list("SequentialLR", optimizer, schedulers)
        milestones = _milestones("milestones", milestones, increasing=True)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"milestones must have len(schedulers) - 1 = {len(schedulers) - 1} entries, "
                f"got {len(milestones)}"
            )
        last_epoch = _integer("last_epoch", last_epoch, low=-1)
        for i, group in enumerate(optimizer.param_groups):
            _group_value(i, "initial_lr", group)
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        with self._undo():
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
        with self._undo():
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

    _STATE: ClassVar[Spec] = {"last_epoch": None}

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer=None) -> None:
        if optimizer is not None:
            _check_optimizer(optimizer)
        schedulers = _scheduler_list("ChainedScheduler", optimizer, schedulers)
        optimizer = schedulers[0].optimizer if optimizer is None else optimizer
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _group_lrs(optimizer)

    def step(self) -> None:
        with self._undo():
            for scheduler in self._schedulers:
                scheduler.step()
            self._last_lr = _group_lrs(self.optimizer)


# --------------------------------------------------------------------------- plateau


def _s_min_lrs(s: Any, name: str, v: Any) -> list:
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{name} must be a list of numbers >= 0, got {_show(v)}")
    return [_real(f"{name}[{i}]", x, low=0) for i, x in enumerate(v)]


class ReduceLROnPlateau(LRScheduler):
    """Multiply the lr by ``factor`` when a metric stops improving for ``patience`` steps.

    ``step(metric)`` counts a step as an improvement when the metric beats
    ``best`` by the threshold: ``a < best * (1 - threshold)`` (min, rel),
    ``a < best - threshold`` (min, abs), ``a > best * (1 + threshold)`` (max,
    rel), ``a > best + threshold`` (max, abs). After more than ``patience``
    steps without improvement, ``lr = max(lr * factor, min_lr)`` unless that
    changes the lr by ``eps`` or less; then ``cooldown`` steps are not counted.

    The metric is a finite real number (a Python/NumPy scalar or a 0-d array,
    such as a loss tensor); NaN, inf, None and strings are refused and change
    nothing (PyTorch counts a NaN as a step without improvement).
    """

    _STATE: ClassVar[Spec] = {
        "base_lrs": None,
        "_step_count": None,
        "last_epoch": _s_int(0),
        "factor": _s_real(low=0.0, high=1.0, high_open=True),
        "min_lrs": _s_min_lrs,
        "default_min_lr": lambda s, name, v: None if v is None else _real(name, v, low=0),
        "patience": _s_int(0),
        "cooldown": _s_int(0),
        "cooldown_counter": _s_int(0),
        "eps": _LR,
        "mode": _s_choice("min", "max"),
        "threshold": _s_real(low=0),
        "threshold_mode": _s_choice("rel", "abs"),
        "mode_worse": _s_real(finite=False),
        "best": _s_real(finite=False),
        "num_bad_epochs": _s_int(0),
    }
    _OPTIONAL = frozenset({"mode_worse"})

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
        factor = _real("factor", factor)
        if not factor < 1.0:
            raise ValueError(f"factor must be < 1.0, got {factor!r}")
        self.factor = _real("factor", factor, low=0.0, high=1.0, high_open=True)
        if isinstance(min_lr, (list, tuple)):
            self.default_min_lr = None
            self.min_lrs = _per_group("min_lr", optimizer, min_lr, low=0)
        else:
            self.default_min_lr = _real("min_lr", min_lr, low=0)
            self.min_lrs = [self.default_min_lr] * len(optimizer.param_groups)
        self.patience = _integer("patience", patience, low=0)
        self.cooldown = _integer("cooldown", cooldown, low=0)
        self.eps = _real("eps", eps, low=0)
        mode = _choice("mode", mode, ("min", "max"))
        threshold = _real("threshold", threshold, low=0)
        threshold_mode = _choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self._last_lr = _group_lrs(optimizer)
        self.optimizer = optimizer
        self.last_epoch = 0
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
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
        """Record ``metrics`` (a finite number); reduce the lr after a plateau."""
        current = _scalar("metrics", metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            epoch = _integer("epoch", epoch, low=0)
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        with _Undo(self.optimizer, [self]):
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
        old = _group_lrs(self.optimizer)
        for group, old_lr, min_lr in zip(groups, old, self.min_lrs, strict=True):
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def _check_staged(self, staged: dict[str, Any], where: str) -> None:
        n = len(self.optimizer.param_groups)
        if staged["default_min_lr"] is None and len(staged["min_lrs"]) != n:
            raise ValueError(
                f"{where}['min_lrs'] must have one value per param group ({n}), "
                f"got {len(staged['min_lrs'])} values"
            )

    def _stage(self, state_dict: Any, where: str) -> Callable[[], None]:
        commit = super()._stage(state_dict, where)

        def load() -> None:
            commit()
            self._init_is_better(self.mode, self.threshold, self.threshold_mode)

        return load


# The schedules' formulas (imported last: schedules imports this module's validators).
from . import schedules as _schedules  # noqa: E402

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


def _warmup_kwargs(where: str, schedule: str, kwargs: Any) -> dict[str, Any]:
    """The checked arguments of a warmup schedule (named ``where[key]`` when loading)."""

    def name(key: str) -> str:
        return f"{where}[{key!r}]" if where else key

    expected = {"num_warmup_steps", "num_training_steps"} | (
        {"num_cycles"} if schedule == "cosine" else set()
    )
    if not isinstance(kwargs, Mapping) or set(kwargs) != expected:
        raise ValueError(f"{where} must be a dict with keys {sorted(expected)}, got {kwargs!r}")
    w = _integer(name("num_warmup_steps"), kwargs["num_warmup_steps"], low=0)
    n = _integer(name("num_training_steps"), kwargs["num_training_steps"], low=1)
    if n < w:
        raise ValueError(
            f"{name('num_training_steps')} must be >= num_warmup_steps ({w}), got {n} "
            "(the decay would start after the training ends)"
        )
    out = {"num_warmup_steps": w, "num_training_steps": n}
    if schedule == "cosine":
        out["num_cycles"] = _real(name("num_cycles"), kwargs["num_cycles"], low=0)
    return out


class _WarmupLambda:
    """``t -> schedule(t, **kwargs)``; an object, so that LambdaLR.state_dict saves it."""

    def __init__(self, schedule: str, **kwargs: Any) -> None:
        self.schedule = schedule
        self.kwargs = _warmup_kwargs("", schedule, kwargs)

    def __call__(self, t: int) -> float:
        return _WARMUP_SCHEDULES[self.schedule](t, **self.kwargs)

    @staticmethod
    def checked_state(name: str, saved: dict) -> dict:
        if set(saved) != {"schedule", "kwargs"}:
            raise ValueError(f"{name} must have the keys 'schedule' and 'kwargs', got {saved!r}")
        schedule = _choice(f"{name}['schedule']", saved["schedule"], tuple(_WARMUP_SCHEDULES))
        kwargs = _warmup_kwargs(f"{name}['kwargs']", schedule, saved["kwargs"])
        return {"schedule": schedule, "kwargs": kwargs}


def get_linear_schedule_with_warmup(
    optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1
) -> LambdaLR:
    """Hugging Face's linear warmup then linear decay, as a LambdaLR.

    ``f(t) = t / max(1, W)`` for ``t < W``, then
    ``max(0, (N - t) / max(1, N - W))`` (W warmup steps, N training steps;
    ``0 <= W <= N``, ``N >= 1``).
    """
    _check_optimizer(optimizer)
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
    the default half cycle decays from 1 to 0 at ``t = N`` (``0 <= W <= N``,
    ``N >= 1``, ``num_cycles >= 0``).
    """
    _check_optimizer(optimizer)
    fn = _WarmupLambda(
        "cosine",
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
        num_cycles=num_cycles,
    )
    return LambdaLR(optimizer, fn, last_epoch)
