"""Weight averaging with ``torch.optim.swa_utils``' semantics: AveragedModel and SWALR.

Stochastic Weight Averaging (Izmailov et al., "Averaging Weights Leads to Wider
Optima and Better Generalization", UAI 2018) averages the weights a model
visits late in training, at a constant or cyclic learning rate;
``AveragedModel`` keeps the running average in a copy of the model and
``SWALR`` anneals the learning rate to the constant SWA value. With
``multi_avg_fn=get_ema_multi_avg_fn(decay)`` the copy holds an exponential
moving average instead (Polyak averaging with exponential weights).

Where this differs from PyTorch:

- The averaging functions work on arrays of any backend (the ``.data`` of
  the parameters), and ``num_averaged`` is a Python ``int`` (PyTorch passes a
  0-d long tensor). A ``multi_avg_fn`` returns the new arrays, one per
  averaged array (on JAX it must: arrays are immutable), or ``None`` when it
  updated them in place (PyTorch's convention, for mutable backends).
- ``get_swa_multi_avg_fn`` lerps with the weight ``1 / (n + 1)`` as a Python
  float; PyTorch computes it as a float32 tensor and rounds it (an error of
  ~1e-8 in float64 models). The default average (no ``avg_fn``, no
  ``multi_avg_fn``) is ``a + (c - a) / (n + 1)``, PyTorch's on the CPU.
- neural_arch modules have no buffers: ``use_buffers`` is accepted (and
  checked) but changes nothing, and there is no ``update_bn`` (there is no
  BatchNorm whose statistics would need recomputing).
- ``update_parameters`` checks that the model has the averaged model's
  parameters (number and shapes; PyTorch zips silently), and changes nothing
  when a check or an averaging function fails.

This module imports :mod:`neural_arch.nn` (an ``AveragedModel`` is a
``Module``), the one place where ``optim`` knows ``nn``.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import array_api_compat

from ..backend import backend_name, device, dtype_name, namespace
from ..nn.module import IncompatibleKeys, Module, StateDictKeyError
from .ema import assign, bump_version, lerp, like, writable
from .lr_scheduler import (
    LRScheduler,
    Spec,
    _check_optimizer,
    _choice,
    _flag,
    _group_value,
    _integer,
    _per_group,
    _real,
    _s_choice,
    _s_int,
    _show,
    _Undo,
)

__all__ = [
    "SWALR",
    "AveragedModel",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
]

AvgFn = Callable[[Any, Any, int], Any]
MultiAvgFn = Callable[[list, list, int], "list | None"]


def _decay(decay: Any) -> float:
    return float(_real("decay", decay, low=0.0, high=1.0))


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    """The EMA for :class:`AveragedModel`'s ``multi_avg_fn``: ``W = lerp(W, W_model, 1 - decay)``.

    ``W_0 = W_0^model``; then ``W_{t+1} = decay * W_t + (1 - decay) * W_{t+1}^model``,
    in PyTorch's lerp form (see :func:`neural_arch.optim.ema.lerp`). ``decay``
    in ``[0, 1]``. Mutable arrays are updated in place.
    """
    weight = 1.0 - _decay(decay)

    def ema_update(averaged: list, current: list, num_averaged: int) -> list:
        return [
            lerp(a, c, weight, inplace=writable(a)) for a, c in zip(averaged, current, strict=True)
        ]

    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    """The equal-weight average (SWA) for ``multi_avg_fn``: ``W = lerp(W, W_model, 1/(n+1))``.

    ``n`` is the number of models averaged so far; the weight is a Python
    float (PyTorch rounds it to float32).
    """

    def swa_update(averaged: list, current: list, num_averaged: int) -> list:
        weight = 1.0 / (num_averaged + 1)
        return [
            lerp(a, c, weight, inplace=writable(a)) for a, c in zip(averaged, current, strict=True)
        ]

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    """The EMA for ``avg_fn``, one array at a time: ``decay * W + (1 - decay) * W_model``."""
    decay = _decay(decay)

    def ema_update(averaged: Any, current: Any, num_averaged: int) -> Any:
        return decay * averaged + (1 - decay) * current

    return ema_update


def get_swa_avg_fn() -> AvgFn:
    """The equal-weight average for ``avg_fn``: ``W + (W_model - W) / (n + 1)``."""

    def swa_update(averaged: Any, current: Any, num_averaged: int) -> Any:
        return averaged + (current - averaged) / (num_averaged + 1)

    return swa_update


def _default_avg(averaged: Any, current: Any, num_averaged: int) -> Any:
    """``get_swa_avg_fn``'s formula, in place on mutable arrays (one temporary)."""
    if not writable(averaged):
        return averaged + (current - averaged) / (num_averaged + 1)
    diff = current - averaged
    diff /= num_averaged + 1
    averaged += diff
    return averaged


class AveragedModel(Module):
    """A copy of ``model`` whose parameters are a running average of ``model``'s.

    Args:
        model: the :class:`~neural_arch.nn.Module` to average; it is deep-copied
            (parameters, gradients and all), and the copy is ``self.module``.
        device: where the copy lives (a device of the model's array library,
            as for ``Module.to``); None keeps the model's.
        avg_fn: ``avg_fn(averaged, current, num_averaged) -> new array``, one
            parameter at a time (arrays of the copy's backend, ``num_averaged``
            an int); None (and no ``multi_avg_fn``): the equal-weight average.
        multi_avg_fn: ``multi_avg_fn(averaged_list, current_list, num_averaged)``
            over the parameters of one backend, device and dtype; returns the
            new arrays, or None after updating them in place. At most one of
            ``avg_fn`` and ``multi_avg_fn``.
        use_buffers: PyTorch's flag for averaging buffers too; neural_arch
            modules have no buffers, so it changes nothing (a bool is required).

    :meth:`update_parameters` copies ``model``'s values on its first call
    (``n_averaged == 0``) and averages them in on the later ones; ``n_averaged``
    (an int) counts the calls. Calling the averaged model calls the copy.
    ``state_dict()`` holds ``"n_averaged"`` (a 0-d integer array, as
    PyTorch's buffer) and the copy's parameters as ``"module.<name>"``, so
    PyTorch's AveragedModel state dicts load here and the other way round; the
    averaging functions are not saved.

    Example (SWA from epoch 160 of 300; EMA: ``multi_avg_fn=get_ema_multi_avg_fn(0.999)``)::

        swa_model = AveragedModel(model)
        swa_scheduler = SWALR(optimizer, swa_lr=0.05)
        for epoch in range(300):
            train_one_epoch(model, optimizer)
            if epoch > 160:
                swa_model.update_parameters(model)
                swa_scheduler.step()
            else:
                scheduler.step()
    """

    def __init__(
        self,
        model: Module,
        device: Any = None,
        avg_fn: AvgFn | None = None,
        multi_avg_fn: MultiAvgFn | None = None,
        use_buffers: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model, Module):
            raise TypeError(f"model must be a neural_arch Module, got {_show(model)}")
        for name, fn in (("avg_fn", avg_fn), ("multi_avg_fn", multi_avg_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be None or callable, got {_show(fn)}")
        if avg_fn is not None and multi_avg_fn is not None:
            raise ValueError("give at most one of avg_fn and multi_avg_fn, not both")
        use_buffers = _flag("use_buffers", use_buffers)
        module = copy.deepcopy(model)
        if device is not None:
            module.to(device=device)
        self.module = module
        self.n_averaged = 0
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The averaged copy's forward pass."""
        return self.module(*args, **kwargs)

    def _pairs(self, model: Any) -> list[tuple[str, Any, Any]]:
        """(name, averaged parameter, model array on the averaged one's backend/device/dtype)."""
        params = getattr(model, "parameters", None)
        if not callable(params):
            raise TypeError(f"model must be a Module (with parameters()), got {_show(model)}")
        ours = list(self.module.named_parameters())
        theirs = list(params())
        if len(theirs) != len(ours):
            raise ValueError(
                f"model has {len(theirs)} parameters, the averaged model {len(ours)}: "
                "update_parameters needs the model the AveragedModel was built from"
            )
        out = []
        for (name, p), q in zip(ours, theirs, strict=True):
            data = getattr(q, "data", None)
            if not array_api_compat.is_array_api_obj(data):
                raise TypeError(f"model parameter {name!r} has no .data array")
            if tuple(data.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"model parameter {name!r} has shape {tuple(data.shape)}, the averaged "
                    f"one {tuple(p.data.shape)}"
                )
            out.append((f"module.{name}", p, like(data, p.data)))
        return out

    def update_parameters(self, model: Module) -> None:
        """Average ``model``'s current parameters in (the first call copies them).

        ``model``'s arrays are converted to the copy's backend, device and
        dtype. All or nothing: the model is checked (number and shapes of its
        parameters) before anything is written, and an ``avg_fn`` or
        ``multi_avg_fn`` that raises, or returns values of the wrong shape,
        leaves the averages as they were (unless it wrote them in place itself).
        """
        pairs = self._pairs(model)
        n = self.n_averaged
        if n == 0:
            new = [value for _, _, value in pairs]
        elif self.avg_fn is not None:
            new = [self.avg_fn(p.data, value, n) for _, p, value in pairs]
        elif self.multi_avg_fn is not None:
            new = self._multi(pairs, n)
        else:
            new = [_default_avg(p.data, value, n) for _, p, value in pairs]
        checked = [_result(name, p.data, v) for (name, p, _), v in zip(pairs, new, strict=True)]
        for (_, p, _), value in zip(pairs, checked, strict=True):
            if value is p.data:
                bump_version(p)  # written in place by the averaging function
            else:
                assign(p, value)
        self.n_averaged = n + 1

    def _multi(self, pairs: list, n: int) -> list:
        """``multi_avg_fn`` once per (backend, device, dtype) group, as PyTorch groups them."""
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, (_, p, _) in enumerate(pairs):
            key = (backend_name(p.data), str(device(p.data)), dtype_name(p.data.dtype))
            groups.setdefault(key, []).append(i)
        new: list[Any] = [None] * len(pairs)
        for indices in groups.values():
            averaged = [pairs[i][1].data for i in indices]
            out = self.multi_avg_fn([*averaged], [pairs[i][2] for i in indices], n)
            if out is None:
                out = averaged
            elif not isinstance(out, Sequence) or len(out) != len(indices):
                raise TypeError(
                    f"multi_avg_fn must return None or a list of {len(indices)} arrays, "
                    f"got {_show(out)}"
                )
            for i, value in zip(indices, out, strict=True):
                new[i] = value
        return new

    # ----------------------------------------------------------------- state dict

    def state_dict(self) -> OrderedDict[str, Any]:
        """``{"n_averaged": 0-d int array, "module.<name>": array, ...}`` (PyTorch's keys)."""
        params = self.module.parameters()
        if params:
            xp, where = namespace(params[0].data), device(params[0].data)
        else:
            import numpy as xp  # no parameter to take a backend from

            where = None
        count = xp.asarray(self.n_averaged, **({} if where is None else {"device": where}))
        out: OrderedDict[str, Any] = OrderedDict(n_averaged=count)
        out.update(super().state_dict())
        return out

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> IncompatibleKeys:
        """Load a :meth:`state_dict` (ours or PyTorch's AveragedModel's): all or nothing.

        ``"n_averaged"`` must be an integer >= 0 (a Python int or a 0-d integer
        array); the parameters load as in :meth:`Module.load_state_dict`.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping of name to array, got {_show(state_dict)}"
            )
        strict = _flag("strict", strict)
        count = None
        if "n_averaged" in state_dict:
            count = _count(state_dict["n_averaged"])
        elif strict:
            raise StateDictKeyError(
                "error loading state_dict into AveragedModel: missing keys ['n_averaged']"
            )
        rest = {k: v for k, v in state_dict.items() if k != "n_averaged"}
        result = super().load_state_dict(rest, strict=strict)
        if count is not None:
            self.n_averaged = count
            return result
        return IncompatibleKeys(["n_averaged", *result.missing_keys], result.unexpected_keys)

    def extra_repr(self) -> str:
        return f"n_averaged={self.n_averaged}"


def _count(value: Any) -> int:
    name = "state_dict['n_averaged']"
    if array_api_compat.is_array_api_obj(value):
        if tuple(value.shape) != () or not dtype_name(value.dtype).startswith(("int", "uint")):
            raise TypeError(
                f"{name} must be an integer >= 0 (or a 0-d integer array), got {value!r}"
            )
        value = int(value)
    return _integer(name, value, low=0)


def _result(name: str, target: Any, value: Any) -> Any:
    """An averaging function's ``value`` for parameter ``name``: an array of its shape,
    on its backend, device and dtype."""
    if not array_api_compat.is_array_api_obj(value):
        value = getattr(value, "data", value)  # a Tensor
    if not array_api_compat.is_array_api_obj(value):
        raise TypeError(f"the average of parameter {name!r} must be an array, got {_show(value)}")
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(
            f"the average of parameter {name!r} has shape {tuple(value.shape)}, the "
            f"parameter {tuple(target.shape)}"
        )
    return value if value is target else like(value, target)


# --------------------------------------------------------------------------- SWALR


class SWALR(LRScheduler):
    """Anneal each group's lr to ``swa_lr`` over ``anneal_epochs`` steps, then hold it.

    PyTorch's formula: at step ``s`` (``_step_count - 1``: 0 at construction,
    ``max(1, s)`` when ``anneal_epochs == 0``), with
    ``alpha(s) = f(clip(s / max(1, anneal_epochs), 0, 1))``,
    ``f(t) = (1 - cos(pi t)) / 2`` (``"cos"``) or ``t`` (``"linear"``)::

        lr_start = (lr - alpha(s-1) * swa_lr) / (1 - alpha(s-1))   (swa_lr if alpha(s-1) = 1)
        lr       = swa_lr * alpha(s) + lr_start * (1 - alpha(s))

    so the lr moves from the group's current lr (whatever an earlier
    scheduler left there) to ``swa_lr``; step 0 leaves it unchanged unless
    ``anneal_epochs == 0``, which jumps to ``swa_lr`` at once.

    Args:
        optimizer: the optimizer; ``group["swa_lr"]`` is stored in each group
            (so the optimizer's state dict carries it).
        swa_lr: a finite number >= 0, or a list of one per param group.
        anneal_epochs: an integer >= 0 (default 10).
        anneal_strategy: ``"cos"`` (default) or ``"linear"``.
        last_epoch: -1 for a fresh run (the groups need ``initial_lr`` otherwise).
    """

    _STATE: ClassVar[Spec] = {
        "anneal_epochs": _s_int(0),
        "_anneal_strategy": _s_choice("cos", "linear"),
    }

    def __init__(
        self,
        optimizer: Any,
        swa_lr: float | Sequence[float],
        anneal_epochs: int = 10,
        anneal_strategy: str = "cos",
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        swa_lrs = _per_group("swa_lr", optimizer, swa_lr, low=0)
        anneal_strategy = _choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        anneal_epochs = _integer("anneal_epochs", anneal_epochs, low=0)
        _integer("last_epoch", last_epoch, low=-1)
        self._anneal_strategy = anneal_strategy
        self.anneal_epochs = anneal_epochs
        with _Undo(optimizer):
            for group, value in zip(optimizer.param_groups, swa_lrs, strict=True):
                group["swa_lr"] = float(value)
            super().__init__(optimizer, last_epoch)

    def _anneal(self, t: float) -> float:
        if self._anneal_strategy == "cos":
            return (1 - math.cos(math.pi * t)) / 2
        return t

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        span = max(1, self.anneal_epochs)
        prev_alpha = self._anneal(max(0, min(1, (step - 1) / span)))
        alpha = self._anneal(max(0, min(1, step / span)))
        out = []
        for i, group in enumerate(self.optimizer.param_groups):
            lr = _group_value(i, "lr", group)
            swa_lr = _group_value(i, "swa_lr", group)
            start = swa_lr if prev_alpha == 1 else (lr - prev_alpha * swa_lr) / (1 - prev_alpha)
            out.append(swa_lr * alpha + start * (1 - alpha))
        return out
