"""RAdam (rectified Adam), as ``torch.optim.RAdam``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .adam import Adam
from .optimizer import Optimizer
from .rule import Flag, Real, lerp, sqrt

__all__ = ["RAdam"]


def radam(p, g, exp_avg, exp_avg_sq, *, s, f):
    """RAdam's update of one parameter (see :class:`RAdam` for the math)."""
    if f.maximize:
        g = -g
    if f.decoupled:
        p = p * s.decay  # p * (1 - lr * weight_decay) first
    elif f.l2:
        g = g + p * s.weight_decay
    m = lerp(exp_avg, g, s.w1, s.one_minus_w1, f.small_w1)  # beta1 * m + (1 - beta1) * g
    v = exp_avg_sq * s.beta2 + g * s.one_minus_beta2 * g
    update = m / s.bias_correction1 * s.lr
    if f.rectify:  # torch: bias_corrected_exp_avg * lr * adaptive_lr * rect
        update = update * (s.bias_correction2_sqrt / (sqrt(v) + s.eps)) * s.rect
    return {"exp_avg": m, "exp_avg_sq": v, "param": p - update}


def rho(beta2: float, t: float) -> tuple[float, float]:
    """``(rho_inf, rho_t)``: the maximum and the step's length of the approximated SMA."""
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf, rho_inf - 2 * t * (beta2**t) / (1 - beta2**t)


class RAdam(Optimizer):
    r"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2020).

    With ``g`` the gradient (negated when ``maximize``) and ``t`` the
    parameter's step count after this step::

        p = p * (1 - lr * weight_decay)           if weight_decay and decoupled_weight_decay
        g = g + weight_decay * p                   if weight_decay, otherwise (L2, coupled)
        m = beta1 * m + (1 - beta1) * g           (computed as a lerp, as PyTorch)
        v = beta2 * v + (1 - beta2) * g**2
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
        if rho_t > 5:
            r = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            p = p - m / (1 - beta1**t) * lr * (sqrt(1 - beta2**t) / (sqrt(v) + eps)) * r
        else:
            p = p - m / (1 - beta1**t) * lr                (SGD with momentum, no v)

    This is PyTorch's algorithm, operation for operation (Liu et al., 2020,
    "On the Variance of the Adaptive Learning Rate and Beyond"); whether a
    step is rectified depends on ``t`` and ``beta2`` only (with the default
    ``beta2 = 0.999`` the first five steps are not), and a ``beta2`` with
    ``rho_inf <= 5`` (``beta2 <= 2/3``) never rectifies, so ``v`` is kept
    but never used.  ``eps`` is added to ``sqrt(v)`` before the bias
    correction, as in torch.  Elsewhere: the paper's reference code and
    Optax's ``radam`` switch at ``rho_t >= 5`` (Optax: ``threshold=5.0``) and
    Optax puts ``eps`` after the bias-corrected square root,
    ``m_hat / (sqrt(v_hat) + eps)``; Keras ships no RAdam.
    ``decoupled_weight_decay`` gives RAdamW (torch 2.13's keyword).

    State per parameter (torch's keys, so torch state dicts load): ``step``,
    ``exp_avg`` and ``exp_avg_sq``.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 1e-3).
        betas: the moments' decay rates (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or with
            ``decoupled_weight_decay`` the rate the parameter decays by.
        decoupled_weight_decay: decay the parameter instead of adding
            ``weight_decay * p`` to the gradient.
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
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
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "betas": Adam.hyper["betas"],
        "eps": Real(),
        "weight_decay": Real(),
        "decoupled_weight_decay": Flag(),
        "maximize": Flag(),
    }
    _rule = staticmethod(radam)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("exp_avg_sq",))

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("step", "exp_avg", "exp_avg_sq"))

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        decoupled = group["decoupled_weight_decay"]
        return {
            "maximize": group["maximize"],
            "decoupled": decoupled and group["weight_decay"] != 0,
            "l2": not decoupled and group["weight_decay"] != 0,
            "small_w1": abs(1.0 - group["betas"][0]) < 0.5,  # the branch torch.lerp takes
            "rectify": rho(group["betas"][1], float(step))[1] > 5.0,
        }

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        t = float(step)  # torch's step is a float tensor, read with .item()
        bias_correction2 = 1 - beta2**t
        out = {
            "decay": 1 - lr * wd,
            "weight_decay": wd,
            "w1": 1 - beta1,
            "one_minus_w1": 1.0 - (1 - beta1),
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "bias_correction1": 1 - beta1**t,
            "lr": lr,
        }
        rho_inf, rho_t = rho(beta2, t)
        if rho_t > 5.0:  # the rectified branch (the rule's f.rectify)
            out["bias_correction2_sqrt"] = bias_correction2**0.5
            out["eps"] = group["eps"]
            out["rect"] = (
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            ) ** 0.5
        return out
