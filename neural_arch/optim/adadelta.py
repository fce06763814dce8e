"""Adadelta, as ``torch.optim.Adadelta``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .optimizer import Optimizer
from .rule import Flag, Real, sqrt

__all__ = ["Adadelta"]


def adadelta(p, g, square_avg, acc_delta, *, s, f):
    """Adadelta's update of one parameter (see :class:`Adadelta` for the math)."""
    if f.maximize:
        g = -g
    if f.l2:
        g = g + p * s.weight_decay
    v = square_avg * s.rho + g * s.one_minus_rho * g  # torch: mul_, then addcmul_
    # torch: acc_delta.add(eps).sqrt_().div_(square_avg.add(eps).sqrt_()).mul_(g)
    delta = sqrt(acc_delta + s.eps) / sqrt(v + s.eps) * g
    u = acc_delta * s.rho + delta * s.one_minus_rho * delta
    return {"square_avg": v, "acc_delta": u, "param": p + delta * s.neg_lr}


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012): steps scaled by the ratio of two running RMS averages.

    With ``g`` the gradient (negated when ``maximize``), for every parameter::

        g = g + weight_decay * p                      if weight_decay (L2, coupled)
        v = rho * v + (1 - rho) * g**2
        delta = sqrt(u + eps) / sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta**2
        p = p - lr * delta

    This is ``torch.optim.Adadelta`` (its single-tensor loop, operation for
    operation; torch's CPU kernels fuse some multiply-adds, so float64
    results agree to a few ulp rather than bit for bit).  Defaults as torch:
    lr 1.0 (the paper's method has no learning rate; 1.0 is the paper's),
    rho 0.9, eps 1e-6, no weight decay.  Paper: M. D. Zeiler, "ADADELTA: An
    Adaptive Learning Rate Method" (2012), arXiv:1212.5701.

    Where others differ: ``eps`` sits inside both square roots, as in the
    paper, in torch, Keras and Optax alike; but Keras's defaults are
    lr 1e-3, ``rho=0.95``, ``epsilon=1e-7``, so a Keras setup does not carry
    over without them.

    State per parameter: ``step`` (counted, not used), ``square_avg`` (``v``)
    and ``acc_delta`` (``u``), zeros at the start, as torch.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: scales the step ``delta`` (default 1.0).
        rho: decay rate of both running averages, in [0, 1] (default 0.9).
        eps: added inside both square roots (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "rho": Real(high=1.0, closed=True),
        "eps": Real(),
        "weight_decay": Real(),
        "maximize": Flag(),
    }
    _rule = staticmethod(adadelta)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("square_avg", "acc_delta"))

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("step", "square_avg", "acc_delta"))

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        return {"maximize": group["maximize"], "l2": group["weight_decay"] != 0}

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        rho = group["rho"]
        return {
            "weight_decay": group["weight_decay"],
            "rho": rho,
            "one_minus_rho": 1.0 - rho,
            "eps": group["eps"],
            "neg_lr": -group["lr"],
        }
