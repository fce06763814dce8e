"""Adagrad, as ``torch.optim.Adagrad``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ..backend import namespace
from ._precision import state_full
from .optimizer import Optimizer
from .rule import Flag, Real, sqrt

__all__ = ["Adagrad"]


def adagrad(p, g, sum, *, s, f):
    """Adagrad's update of one parameter (see :class:`Adagrad` for the math).

    ``sum`` (torch's state key) is the running sum of squared gradients.
    """
    if f.maximize:
        g = -g
    if f.l2:
        g = g + p * s.weight_decay
    total = sum + g * g  # torch: addcmul_(g, g, value=1)
    # torch: addcdiv_(g, sqrt(total).add_(eps), value=-clr)
    return {"sum": total, "param": p + g * s.neg_clr / (sqrt(total) + s.eps)}


class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer, 2011), with PyTorch's learning-rate decay.

    With ``g`` the gradient (negated when ``maximize``) and ``t`` the
    parameter's step count after this step::

        clr = lr / (1 + (t - 1) * lr_decay)
        g = g + weight_decay * p                      if weight_decay (L2, coupled)
        sum = sum + g**2
        p = p - clr * g / (sqrt(sum) + eps)

    ``sum`` starts at ``initial_accumulator_value``.  This is
    ``torch.optim.Adagrad`` (its single-tensor loop, operation for
    operation; torch's CPU kernels fuse some multiply-adds, so float64
    results agree to a few ulp rather than bit for bit).  Defaults as torch:
    lr 1e-2, lr_decay 0, no weight decay, initial_accumulator_value 0,
    eps 1e-10.  Paper: J. Duchi, E. Hazan, Y. Singer, "Adaptive Subgradient
    Methods for Online Learning and Stochastic Optimization", JMLR 12 (2011).

    As in torch, the state (``step`` 0 and ``sum``) exists from the moment a
    parameter joins the optimizer (in the constructor, in
    :meth:`add_param_group`, and for any parameter a loaded state dict
    leaves out), not from its first step.  One difference: torch 2.13 fills
    ``sum`` with the *constructor's* ``initial_accumulator_value`` even for
    a group that gives its own; here a group's own value is used (the two
    agree whenever no group overrides it).

    Where others differ: torch (and this class) add ``eps`` after the
    square root.  Keras (lr 1e-3, ``initial_accumulator_value=0.1``,
    ``epsilon=1e-7``) and Optax's ``adagrad`` (``initial_accumulator_value=0.1``,
    ``eps=1e-7``) divide by ``sqrt(sum + eps)`` and have no ``lr_decay``.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 1e-2).
        lr_decay: learning-rate decay per step (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        initial_accumulator_value: the starting value of ``sum`` (default 0).
        eps: added to the denominator (default 1e-10).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "maximize": maximize,
        }  # torch's order of the group keys
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "lr_decay": Real(),
        "eps": Real(),
        "weight_decay": Real(),
        "initial_accumulator_value": Real(),
        "maximize": Flag(),
    }
    _rule = staticmethod(adagrad)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("sum",))

    def add_param_group(self, param_group: Any) -> None:
        """As :meth:`Optimizer.add_param_group`; the new parameters' state is made at once."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            self._init_state(p, group, self.state[p])

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """As :meth:`Optimizer.load_state_dict`; a parameter it leaves out gets a fresh state."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group, self.state[p])

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("step", "sum"))

    def _init_state(self, p: Any, group: dict[str, Any], record: dict[str, Any]) -> None:
        record.setdefault("step", 0)
        if record.get("sum") is None:
            value = float(group["initial_accumulator_value"])
            record["sum"] = state_full(namespace(p.data), p.data, value)

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        return {"maximize": group["maximize"], "l2": group["weight_decay"] != 0}

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        return {"weight_decay": group["weight_decay"], "neg_clr": -clr, "eps": group["eps"]}
