"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .optimizer import Optimizer
from .rule import Flag, Real

__all__ = ["SGD"]


def sgd(p, g, momentum_buffer=None, *, s, f):
    """SGD's update of one parameter (see :class:`SGD` for the math)."""
    if f.maximize:
        g = -g
    if f.l2:
        g = g + p * s.weight_decay
    new = {}
    if f.momentum:
        if momentum_buffer is None:  # the first step: the buffer is the gradient, undamped
            b = g
        elif f.dampening:
            b = momentum_buffer * s.momentum + g * s.one_minus_dampening
        else:
            b = momentum_buffer * s.momentum + g
        new["momentum_buffer"] = b
        g = g + b * s.momentum if f.nesterov else b
    new["param"] = p + g * s.neg_lr
    return new


def flags(group: dict[str, Any]) -> dict[str, bool]:
    """The branches of :func:`sgd` for ``group``."""
    return {
        "maximize": group["maximize"],
        "l2": group["weight_decay"] != 0,
        "momentum": group["momentum"] != 0,
        "dampening": group["dampening"] != 0,
        "nesterov": group["nesterov"],
    }


def scalars(group: dict[str, Any]) -> dict[str, float]:
    """The scalars of :func:`sgd` for ``group``."""
    return {
        "weight_decay": group["weight_decay"],
        "momentum": group["momentum"],
        "one_minus_dampening": 1.0 - group["dampening"],
        "neg_lr": -group["lr"],
    }


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

    With ``g`` the gradient (negated when ``maximize``), for every parameter::

        g = g + weight_decay * p                     if weight_decay  (L2, coupled)
        b = g                                        on the first step
        b = momentum * b + (1 - dampening) * g       afterwards
        g = g + momentum * b  if nesterov  else  b   if momentum
        p = p - lr * g

    This is PyTorch's formulation (Sutskever et al., 2013, with the learning
    rate outside the buffer): the first momentum buffer is the gradient
    itself, undamped.  State per parameter: ``momentum_buffer``.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 0.01).
        momentum: momentum factor μ ≥ 0 (default 0).
        dampening: dampening of the gradient in the buffer (default 0).
        weight_decay: L2 penalty (default 0).
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        *,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "momentum": Real(),
        "dampening": Real(),
        "weight_decay": Real(),
        "nesterov": Flag(),
        "maximize": Flag(),
    }
    _rule = staticmethod(sgd)
    _nullable_state: ClassVar[frozenset[str]] = frozenset(("momentum_buffer",))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        # without momentum SGD keeps no state, as PyTorch
        return frozenset(("momentum_buffer",)) if group["momentum"] != 0 else frozenset()

    def _init_state(self, p: Any, group: dict[str, Any], record: dict[str, Any]) -> None:
        record.setdefault("momentum_buffer", None)  # the rule makes it on the first step

    def _flags(self, group: dict[str, Any], step: None, state: dict) -> dict[str, bool]:
        return flags(group)

    def _scalars(self, group: dict[str, Any], step: None, state: dict) -> dict[str, float]:
        return scalars(group)
