"""What the optimizer wrappers share: the pass-through surface and loading per-parameter arrays.

:class:`~neural_arch.optim.MultiSteps` and :class:`~neural_arch.optim.Lookahead`
hold one inner optimizer and look like it to schedulers, checkpoints and the
gradient scaler: ``param_groups`` is the inner's own list (a scheduler
attached to the wrapper writes the inner's learning rates), ``state``,
``defaults``, ``lr``, ``step_count`` and ``skipped_steps`` are the inner's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat

from ..backend import device, namespace, to_backend
from ._precision import state_dtype
from .lr_scheduler import _show
from .optimizer import Optimizer, _index

__all__ = ["Wrapper", "check_inner", "check_keys", "load_arrays", "misfit", "param_list"]


def check_inner(optimizer: Any, where: str = "optimizer") -> Optimizer:
    """``optimizer`` if it is a neural_arch optimizer, else a TypeError naming ``where``."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{where} must be a neural_arch optimizer (an instance of "
            f"neural_arch.optim.Optimizer, e.g. na.SGD(...)), got {_show(optimizer)}"
        )
    return optimizer


def param_list(optimizer: Optimizer) -> list[Any]:
    """The optimizer's parameters in state-dict order (its groups, in order)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def load_arrays(saved: Any, params: list[Any], where: str) -> dict[int, tuple[Any, Any]]:
    """``{index: array}`` from a state dict as ``{id(param): (param, array)}``, checked.

    Indices are positions in :func:`param_list` (ints, or their decimal
    strings); each array must be real floating, of its parameter's shape and
    finite, and is copied onto the parameter's backend and device in its
    state dtype (float32 for float16/bfloat16 parameters).
    """
    if not isinstance(saved, Mapping):
        raise TypeError(f"{where} must be a dict parameter index -> array, got {_show(saved)}")
    out: dict[int, tuple[Any, Any]] = {}
    for key, value in saved.items():
        i = _index(key, where)
        if i >= len(params):
            raise ValueError(
                f"{where} refers to parameter index {i}, but the optimizer has "
                f"{len(params)} parameters"
            )
        p = params[i]
        if id(p) in out:
            raise ValueError(f"{where} lists parameter index {i} more than once")
        item = f"{where}[{i}]"
        if not array_api_compat.is_array_api_obj(value):
            raise TypeError(f"{item} must be an array, got {_show(value)}")
        if tuple(value.shape) != tuple(p.data.shape):
            raise ValueError(
                f"{item} has shape {tuple(value.shape)}, but parameter {i} has shape "
                f"{tuple(p.data.shape)}"
            )
        if not namespace(value).isdtype(value.dtype, "real floating"):
            raise TypeError(f"{item} has dtype {value.dtype}, not a real floating dtype")
        xp = namespace(p.data)
        array = to_backend(
            value, xp, device=device(p.data), dtype=state_dtype(xp, p.data.dtype), copy=True
        )
        if not bool(xp.all(xp.isfinite(array))):
            raise ValueError(f"{item} holds NaN or infinity")
        out[id(p)] = (p, array)
    return out


def misfit(pairs: Any) -> tuple[Any, Any] | None:
    """The first ``(parameter, array)`` whose array no longer fits its parameter (library,
    device, shape: ``.data`` was rebound), or None."""
    for p, a in pairs:
        x = p.data
        if (
            namespace(x) is not namespace(a)
            or device(x) != device(a)
            or tuple(x.shape) != tuple(a.shape)
        ):
            return p, a
    return None


def check_keys(state_dict: Any, keys: tuple[str, ...], owner: str) -> None:
    """``state_dict`` is a dict with exactly ``keys`` (a wrapper's state dict)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {_show(state_dict)}")
    if set(state_dict) != set(keys):
        hint = ""
        if {"state", "param_groups"} <= set(state_dict):
            hint = (
                "; this is a plain optimizer's state dict: load it into the inner "
                f"optimizer ({owner}.optimizer.load_state_dict)"
            )
        raise ValueError(
            f"state_dict of {owner} must have exactly the keys {list(keys)}, got "
            f"{list(state_dict)}{hint}"
        )


class Wrapper:
    """An optimizer around an inner one: everything but ``step`` is the inner's."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = check_inner(optimizer)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's groups (the same list: schedulers write into it)."""
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        """The inner optimizer's per-parameter state."""
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @property
    def nonfinite(self) -> str:
        """The inner optimizer's policy for non-finite gradients."""
        return self.optimizer.nonfinite

    @property
    def lr(self) -> float:
        """The inner optimizer's learning rate (assigning sets every group's)."""
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    @property
    def step_count(self) -> int:
        """Steps the inner optimizer applied."""
        return self.optimizer.step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self.optimizer.step_count = value

    @property
    def skipped_steps(self) -> int:
        """Steps the inner optimizer skipped (``nonfinite="skip"``, or a GradScaler's)."""
        return self.optimizer.skipped_steps

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self.optimizer.skipped_steps = value

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group to the inner optimizer."""
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients (the inner optimizer's ``zero_grad``)."""
        self.optimizer.zero_grad(set_to_none)

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"{type(self).__name__}({self._options()},\n{inner}\n)"

    def _options(self) -> str:
        return ""
