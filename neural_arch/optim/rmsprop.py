"""RMSprop, as ``torch.optim.RMSprop``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .optimizer import Optimizer
from .rule import Flag, Real, lerp, sqrt

__all__ = ["RMSprop"]


def rmsprop(p, g, square_avg, momentum_buffer=None, grad_avg=None, *, s, f):
    """RMSprop's update of one parameter (see :class:`RMSprop` for the math)."""
    if f.maximize:
        g = -g
    if f.l2:
        g = g + p * s.weight_decay
    v = square_avg * s.alpha + g * s.one_minus_alpha * g  # torch: mul_, then addcmul_
    new = {"square_avg": v}
    if f.centered:
        m = new["grad_avg"] = lerp(grad_avg, g, s.w, s.one_minus_w, f.small_w)
        avg = sqrt(v - m * m) + s.eps  # torch: addcmul(m, m, value=-1).sqrt_().add_(eps)
    else:
        avg = sqrt(v) + s.eps
    if f.momentum:
        b = new["momentum_buffer"] = momentum_buffer * s.momentum + g / avg
        new["param"] = p + b * s.neg_lr
    else:
        new["param"] = p + g * s.neg_lr / avg  # torch: addcdiv_(g, avg, value=-lr)
    return new


class RMSprop(Optimizer):
    r"""RMSprop (Hinton, 2012), optionally centered (Graves, 2013) and with momentum.

    With ``g`` the gradient (negated when ``maximize``), for every parameter::

        g = g + weight_decay * p                      if weight_decay (L2, coupled)
        v = alpha * v + (1 - alpha) * g**2
        m = alpha * m + (1 - alpha) * g               if centered (a lerp, as PyTorch)
        d = sqrt(v - m**2) + eps   if centered  else  sqrt(v) + eps
        b = momentum * b + g / d;  p = p - lr * b     if momentum > 0
        p = p - lr * g / d                            otherwise

    This is ``torch.optim.RMSprop`` (its single-tensor loop, operation for
    operation; torch's CPU kernels fuse some multiply-adds, so float64
    results agree to a few ulp rather than bit for bit).  Defaults as torch:
    lr 1e-2, alpha 0.99, eps 1e-8, no weight decay, no momentum, not
    centered.  The paper is G. Hinton's lecture 6e of "Neural Networks for
    Machine Learning" (2012); the centered form is from A. Graves,
    "Generating Sequences With Recurrent Neural Networks" (2013).

    Where others differ: torch (and this class) add ``eps`` *after* the
    square root and keep the learning rate outside the momentum buffer.
    Keras (``rho=0.9``, ``epsilon=1e-7``) and Optax (``decay=0.9``, and
    ``eps_in_sqrt`` by default) add ``eps`` inside the square root and
    accumulate ``lr * g / d`` in the momentum buffer; their defaults also
    differ, so hyperparameters do not carry over one to one.

    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (with
    momentum > 0) and ``grad_avg`` (when centered), zeros at the start, as
    torch (the step is counted, not used).

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 1e-2).
        alpha: smoothing constant of the averages, ≥ 0 (default 0.99).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        momentum: momentum factor ≥ 0 (default 0).
        centered: divide by an estimate of the gradient's variance
            (``v - m**2``) instead of its second moment.
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
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        maximize: bool = False,
        *,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }  # torch's order of the group keys
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "momentum": Real(),
        "alpha": Real(),
        "eps": Real(),
        "centered": Flag(),
        "weight_decay": Real(),
        "maximize": Flag(),
    }
    _rule = staticmethod(rmsprop)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("square_avg",))

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        keys = {"step", "square_avg"}
        if group["momentum"] > 0:
            keys.add("momentum_buffer")
        if group["centered"]:
            keys.add("grad_avg")
        return frozenset(keys)

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        w = 1.0 - group["alpha"]
        return {
            "maximize": group["maximize"],
            "l2": group["weight_decay"] != 0,
            "centered": group["centered"],
            "momentum": group["momentum"] > 0,
            "small_w": group["centered"] and abs(w) < 0.5,  # the branch torch.lerp takes
        }

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        alpha = group["alpha"]
        w = 1.0 - alpha
        return {
            "weight_decay": group["weight_decay"],
            "alpha": alpha,
            "one_minus_alpha": 1.0 - alpha,
            "w": w,
            "one_minus_w": 1.0 - w,
            "eps": group["eps"],
            "momentum": group["momentum"],
            "neg_lr": -group["lr"],
        }
