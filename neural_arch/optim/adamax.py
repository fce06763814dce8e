"""Adamax, as ``torch.optim.Adamax``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .optimizer import Optimizer
from .rule import Flag, Pair, Real, abs, lerp, maximum

__all__ = ["Adamax"]


def adamax(p, g, exp_avg, exp_inf, *, s, f):
    """Adamax's update of one parameter (see :class:`Adamax` for the math)."""
    if f.maximize:
        g = -g
    if f.l2:
        g = g + p * s.weight_decay
    m = lerp(exp_avg, g, s.w1, s.one_minus_w1, f.small_w1)  # beta1 * m + (1 - beta1) * g
    # torch: torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps)): NaN in either wins
    u = maximum(exp_inf * s.beta2, abs(g) + s.eps)
    # torch: addcdiv_(exp_avg, exp_inf, value=-clr)
    return {"exp_avg": m, "exp_inf": u, "param": p + m * s.neg_clr / u}


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2015, section 7.1): Adam with an infinity norm.

    With ``g`` the gradient (negated when ``maximize``) and ``t`` the
    parameter's step count after this step::

        g = g + weight_decay * p                      if weight_decay (L2, coupled)
        m = beta1 * m + (1 - beta1) * g               (computed as a lerp, as PyTorch)
        u = max(beta2 * u, |g| + eps)                 (NaN in either operand gives NaN)
        p = p - lr / (1 - beta1**t) * m / u

    This is ``torch.optim.Adamax`` (its single-tensor loop, operation for
    operation; torch's CPU kernels fuse some multiply-adds, so float64
    results agree to a few ulp rather than bit for bit).  Defaults as torch:
    lr 2e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.  Paper:
    D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization",
    ICLR 2015, arXiv:1412.6980.

    Where others differ: the paper has no ``eps``; torch (and this class)
    and Optax's ``adamax`` add it to ``|g|`` inside the maximum, so ``u`` is
    never below ``eps``.  Keras keeps ``u = max(beta2 * u, |g|)`` and adds
    ``epsilon`` (1e-7) to ``u`` in the denominator; its lr is 1e-3.

    State per parameter: ``step``, ``exp_avg`` (``m``) and ``exp_inf``
    (``u``), zeros at the start, as torch.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 2e-3).
        betas: decay rates of ``m`` and ``u``, each in [0, 1) (default (0.9, 0.999)).
        eps: added to ``|g|`` (default 1e-8).
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
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "betas": Pair(Real(high=1.0), "beta1", "beta2"),
        "eps": Real(),
        "weight_decay": Real(),
        "maximize": Flag(),
    }
    _rule = staticmethod(adamax)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("exp_inf",))

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("step", "exp_avg", "exp_inf"))

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        w1 = 1.0 - group["betas"][0]
        return {
            "maximize": group["maximize"],
            "l2": group["weight_decay"] != 0,
            "small_w1": -0.5 < w1 < 0.5,  # the branch torch.lerp takes (|w1| < 0.5)
        }

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        lr, (beta1, beta2) = group["lr"], group["betas"]
        w1 = 1.0 - beta1
        return {
            "weight_decay": group["weight_decay"],
            "w1": w1,
            "one_minus_w1": 1.0 - w1,
            "beta2": beta2,
            "eps": group["eps"],
            "neg_clr": -(lr / (1 - beta1**step)),  # torch: clr = lr / bias_correction
        }
