"""Averaged stochastic gradient descent, as ``torch.optim.ASGD``."""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..backend import namespace
from ._hyper import as_python
from ._precision import state_zeros
from .optimizer import Optimizer
from .rule import Flag, Real

__all__ = ["ASGD"]


def asgd(p, g, ax, *, s, f):
    """ASGD's update of one parameter (see :class:`ASGD` for the math)."""
    if f.maximize:
        g = -g
    if f.l2:
        g = g + p * s.weight_decay  # torch: grad.add(param, alpha=weight_decay)
    p = p * s.decay  # torch: param.mul_(1 - lambd * eta)
    p = p + g * s.neg_eta  # torch: param.add_(grad, alpha=-eta)
    # torch: ax.add_(param.sub(ax).mul_(mu)), or ax.copy_(param) while mu is 1
    ax = ax + (p - ax) * s.mu if f.average else p
    return {"param": p, "ax": ax}


def _float32(x: float) -> float:
    """``x`` rounded to the nearest float32, as torch's float32 0-d tensors hold it."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:  # rounds beyond float32's range: an infinity, as in torch
        return math.copysign(math.inf, x)


def _eta(lr: float, lambd: float, alpha: float, step: int) -> float:
    """``lr / (1 + lambd * lr * step) ** alpha`` in Python floats, as torch computes it.

    Where the power overflows (torch raises OverflowError there) the quotient
    is ``lr / inf = 0``, which is what the true value rounds to in float32.
    """
    try:
        return lr / ((1 + lambd * lr * float(step)) ** alpha)
    except OverflowError:
        return lr / math.inf


def _mu(t0: float, step: int) -> float:
    """``1 / max(1, step - t0)`` in Python floats, as torch computes it."""
    return 1 / max(1, float(step) - t0)


@dataclass(frozen=True)
class _Finite:
    """A finite real number of either sign (ASGD's ``t0``)."""

    def check(self, name: str, value: Any) -> Any:
        if (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            return as_python(value)
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number)")


class ASGD(Optimizer):
    r"""Averaged stochastic gradient descent (Polyak & Juditsky, 1992), as ``torch.optim.ASGD``.

    With ``g`` the gradient (negated when ``maximize``), ``t`` the
    parameter's step count after this step, and the per-parameter numbers
    ``eta`` (the current step size, ``lr`` at the start) and ``mu`` (the
    averaging weight, 1 at the start)::

        g = g + weight_decay * p                   if weight_decay (L2, coupled)
        p = p * (1 - lambd * eta)                  (decay term)
        p = p - eta * g
        ax = ax + mu * (p - ax)    if mu != 1      (the running average of p)
        ax = p                     otherwise
        eta = lr / (1 + lambd * lr * t) ** alpha   (for the next step)
        mu = 1 / max(1, t - t0)

    This is PyTorch's algorithm, operation for operation (its single-tensor
    loop; torch's ``foreach`` loop orders the update differently).  The
    average ``ax`` is kept, not used: read it from ``opt.state[p]["ax"]``
    (``ax`` is ``p`` itself for the steps ``t <= t0 + 2``, while ``mu`` is 1,
    and an average of the later iterates after them).
    The paper is Polyak & Juditsky, "Acceleration of stochastic approximation
    by averaging" (SIAM J. Control Optim., 1992); the ``eta`` schedule and
    the decay term ``1 - lambd * eta`` are Bottou's ("Stochastic gradient
    descent tricks", 2012), as in torch.  Like PyTorch, ``eta`` and ``mu``
    are rounded to float32 after every step (torch keeps them as float32 0-d
    tensors under its default dtype; when torch's default dtype is float64
    torch keeps them in float64, which we do not follow), and ``eta`` uses
    the group's ``lr`` at that step.  Optax and Keras have no ASGD; Optax's
    ``polyak_sgd`` is a different method (Polyak's step size).

    State per parameter (torch's keys, so torch state dicts load): ``step``,
    ``eta`` and ``mu`` (Python floats; 0-d tensors in torch) and ``ax``.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 1e-2).
        lambd: decay term (default 1e-4); ``lambd >= 0``.
        alpha: power of the ``eta`` schedule (default 0.75); ``alpha >= 0``.
        t0: the step after which averaging starts (default 1e6); any finite
            number.
        weight_decay: L2 penalty (default 0).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.

    Where torch's schedule raises OverflowError (``(1 + lambd * lr * t) **
    alpha`` beyond the float range), ``eta`` becomes 0, the float32 value the
    quotient rounds to.  torch checks only ``lr`` and ``weight_decay``; a
    negative ``lambd`` or ``alpha`` is refused here because it can make torch's
    schedule complex or divide by zero.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        maximize: bool = False,
        *,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "lambd": lambd,
            "alpha": alpha,
            "t0": t0,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "lambd": Real(),
        "alpha": Real(),
        "t0": _Finite(),
        "weight_decay": Real(),
        "maximize": Flag(),
    }
    _rule = staticmethod(asgd)
    _scalar_state: ClassVar[tuple[str, ...]] = ("eta", "mu")

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("step", "eta", "mu", "ax"))

    def _init_state(self, p: Any, group: dict[str, Any], record: dict[str, Any]) -> None:
        record.setdefault("step", 0)  # torch's order: step, eta, mu, ax
        record.setdefault("eta", _float32(group["lr"]))
        record.setdefault("mu", 1.0)
        if record.get("ax") is None:
            record["ax"] = state_zeros(namespace(p.data), p.data)

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        return {
            "maximize": group["maximize"],
            "l2": group["weight_decay"] != 0,
            "average": state["mu"] != 1,
        }

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        lr, lambd = group["lr"], group["lambd"]
        eta, mu = state["eta"], state["mu"]
        state["eta"] = _float32(_eta(lr, lambd, group["alpha"], step))
        state["mu"] = _float32(_mu(group["t0"], step))
        return {
            "weight_decay": group["weight_decay"],
            "decay": 1 - lambd * eta,
            "neg_eta": -eta,
            "mu": mu,
        }
